"""Truncated importance sampling: correcting for a sampler (vLLM) whose numbers differ from the trainer's.

The completions are sampled by an inference engine π_s (vLLM: other kernels, other precision, maybe one step
stale weights), but the GRPO ratio ρ = π_θ / π_old assumes they were sampled by π_old, the trainer's own
numerics of the same weights. The mismatch is corrected by reweighting every token's loss with

    w_{i,t} = π_old(o_{i,t}) / π_s(o_{i,t}) = exp(old_logp − sampler_logp)          (token level)
    w_i     = Π_t π_old / π_s = exp(Σ_t (old_logp − sampler_logp))                   (sequence level)

and, since a few tokens with a tiny π_s would make w explode, capping it at C ("truncated importance sampling",
Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"):

    truncate:  w ← min(w, C)           (bias traded for bounded variance)
    mask:      w ← w · 1[w ≤ C]        (tokens beyond the cap drop out of the loss)

The cap is compared in log space and the log-weights are clamped to ±``MAX_LOG_RATIO`` before ``exp``, so a
token (or a sequence, whose log-weight is a sum over its tokens) with a huge mismatch gives a finite weight,
never inf; the mask is applied with ``where``, never as inf · 0 = NaN.

The weights are constants (no gradient): the loss becomes Σ w_{i,t} · l_{i,t}, see ``grpo_loss(token_weights=)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Level = Literal["token", "sequence"]
Mode = Literal["truncate", "mask"]

MAX_LOG_RATIO = 20.0  # |log w| bound before exp (e^20 ≈ 4.9e8 is finite in float32), as verl clamps


def importance_weights(
    old_logps: Tensor,  # [B, C] trainer's log-probs of the sampled tokens under the sampling weights
    sampler_logps: Tensor,  # [B, C] the engine's log-probs of the same tokens
    mask: Tensor,  # [B, C] 1 on completion tokens
    *,
    level: Level = "token",
    cap: float = 3.0,
    mode: Mode = "truncate",
    stats: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Return the per-token weights w [B, C] (0 on padding) and mismatch statistics for logging (``stats=False``:
    none, an empty dict; each statistic is a host sync on a GPU, so the trainer's micro-batches skip them)."""
    if cap <= 0:
        raise ValueError(f"[grpo] importance cap={cap}: must be > 0 (3 is the usual choice)")
    if level not in ("token", "sequence") or mode not in ("truncate", "mask"):
        raise ValueError(f"[grpo] importance level={level!r}, mode={mode!r}: use token|sequence and truncate|mask")
    if old_logps.shape != sampler_logps.shape or old_logps.shape != mask.shape:
        raise ValueError(
            f"[grpo] importance_weights: shapes differ: old {tuple(old_logps.shape)}, "
            f"sampler {tuple(sampler_logps.shape)}, mask {tuple(mask.shape)}"
        )
    m = mask.to(torch.float32)
    delta = (old_logps.detach().float() - sampler_logps.float()) * m  # log w per token, 0 on padding
    log_w = delta if level == "token" else delta.sum(dim=1, keepdim=True).expand_as(delta)
    capped = log_w > math.log(cap)
    ratio = log_w.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()  # finite for any finite (or ±inf) log w
    kept = ratio.clamp(max=cap) if mode == "truncate" else torch.where(capped, torch.zeros_like(ratio), ratio)
    weights = torch.where(m.bool(), kept, torch.zeros_like(kept))
    if not stats:
        return weights, {}

    on = m.bool()
    abs_delta = delta.abs()[on]
    r = ratio[on]
    return weights, {
        "is/abs_logp_diff_mean": float(abs_delta.mean()) if r.numel() else 0.0,
        "is/abs_logp_diff_max": float(abs_delta.max()) if r.numel() else 0.0,
        "is/ratio_min": float(r.min()) if r.numel() else 1.0,
        "is/ratio_mean": float(r.mean()) if r.numel() else 1.0,
        "is/ratio_max": float(r.max()) if r.numel() else 1.0,
        "is/capped_frac": float(capped[on].float().mean()) if r.numel() else 0.0,
    }
