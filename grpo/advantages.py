"""Group-relative advantages: every completion is judged against the others sampled for the same prompt.

For prompt q with G completions o_1..o_G and scalar rewards r_1..r_G (DeepSeekMath's outcome supervision):

    Â_i = (r_i − mean_G(r)) / (std_G(r) + eps)     scale="group"   GRPO; std_G: sample std (n − 1) of the group
    Â_i = (r_i − mean_G(r)) / (std_N(r) + eps)     scale="batch"   std_N: sample std of all N rewards
    Â_i =  r_i − mean_G(r)                         scale="none"    Dr. GRPO

Dr. GRPO (Liu et al., 2025) points out that dividing by the group std up-weights prompts that are too easy or
too hard (small spread), a difficulty bias; "batch" keeps a common scale without that per-prompt bias, "none"
drops it. Every token of o_i shares Â_i. A group whose rewards are all equal carries no learning signal: its
advantages are exactly zero.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Scale = Literal["group", "batch", "none"]


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """[N] rewards -> [N / group_size, group_size] float32, checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"[grpo] rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"[grpo] group_size={group_size}: GRPO needs at least 2 completions per prompt")
    if rewards.numel() % group_size:
        raise ValueError(f"[grpo] {rewards.numel()} rewards is not a multiple of group_size={group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("[grpo] rewards contain NaN or inf: check the scorer's output")
    return rewards.float().view(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-4) -> Tensor:
    """Â [N] float32 for rewards [N] ordered group by group (see the module docstring for the equations)."""
    r = _grouped(rewards, group_size)  # [groups, G]
    centered = r - r.mean(dim=1, keepdim=True)  # r_i − mean(group)
    # Rounding in the mean can leave ±1e-8 in a constant group; force its advantages to exactly zero.
    centered = centered.masked_fill((r == r[:, :1]).all(dim=1, keepdim=True), 0.0)
    if scale == "group":
        std = r.std(dim=1, keepdim=True)  # sample std (n − 1) of each group
    elif scale == "batch":
        std = r.std()  # sample std of the whole batch
    elif scale == "none":
        return centered.flatten()
    else:
        raise ValueError(f"[grpo] scale={scale!r}: use 'group', 'batch' or 'none'")
    return (centered / (std + eps)).flatten()


def zero_spread_fraction(rewards: Tensor, group_size: int, atol: float = 1e-6) -> float:
    """Fraction of groups whose rewards all lie within ``atol``: those groups teach the policy nothing.

    A value near 1 means the reward has no signal for these prompts (all right or all wrong).
    """
    r = _grouped(rewards, group_size)
    spread = r.max(dim=1).values - r.min(dim=1).values
    return (spread <= atol).float().mean().item()
