"""The GRPO policy loss: clipped importance ratio, optional k3 KL to a reference policy, three aggregations.

DeepSeekMath (Shao et al., 2024, eq. 3) maximises, for a prompt q with G sampled completions o_1..o_G,

    J(θ) = 1/G Σ_i 1/|o_i| Σ_t { min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1−ε, 1+ε) Â_i) − β D_KL[π_θ ‖ π_ref] }

    ρ_{i,t} = π_θ(o_{i,t} | q, o_{i,<t}) / π_θold(o_{i,t} | q, o_{i,<t})   importance ratio to the sampling policy
    D_KL    = π_ref/π_θ − log(π_ref/π_θ) − 1                           k3 estimator (eq. 4): unbiased and ≥ 0

and ``grpo_loss`` returns −J. Â_i comes from ``grpo.advantages``. Variants, chosen by the arguments:

- DAPO (Yu et al., 2025): clip(ρ, 1−ε_low, 1+ε_high) with ε_high > ε_low ("clip-higher", keeps exploration
  alive), and token-level aggregation 1/Σ_i|o_i| Σ_i Σ_t so that tokens of long completions are not
  down-weighted: ``aggregation="token"``.
- Dr. GRPO (Liu et al., 2025): the constant 1/(G·L_max) instead of 1/|o_i| removes the length bias:
  ``aggregation="constant"``, paired with ``group_advantages(scale="none")``.
- The paper's own 1/G Σ_i 1/|o_i| Σ_t: ``aggregation="sequence"``.

Gradient accumulation: the denominators above belong to the whole optimizer step. Compute it once with
``loss_normalizer`` over the step's completion masks and pass it as ``normalizer`` to every micro-batch;
the micro-batch losses then sum to the full-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

MAX_LOG_RATIO = 20.0  # |log ρ| bound before exp

Aggregation = Literal["token", "sequence", "constant"]
_AGGREGATIONS = ("token", "sequence", "constant")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _check_aggregation(aggregation: str, max_completion_length: int | None, needs_length: bool) -> None:
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"[grpo] aggregation={aggregation!r}: use one of {_AGGREGATIONS}")
    if aggregation == "constant" and needs_length and not max_completion_length:
        raise ValueError("[grpo] aggregation='constant' (Dr. GRPO) needs max_completion_length, the length budget L")


def loss_normalizer(
    masks_or_mask: Tensor | Sequence[Tensor],  # one [B, C] mask, or the masks of all micro-batches of a step
    aggregation: Aggregation,
    max_completion_length: int | None = None,
) -> float:
    """The denominator of a whole optimizer step, to pass to every micro-batch's ``grpo_loss(normalizer=...)``.

    token: Σ_i |o_i| (all completion tokens of the step); sequence: G (completions of the step);
    constant: G·L_max. With data parallelism, sum it over ranks as well.
    """
    _check_aggregation(aggregation, max_completion_length, needs_length=True)
    masks = [masks_or_mask] if isinstance(masks_or_mask, Tensor) else list(masks_or_mask)
    sequences = sum(m.shape[0] for m in masks)
    if aggregation == "token":
        return max(float(sum(int(m.sum()) for m in masks)), 1.0)  # an all-padding step contributes 0, not NaN
    if aggregation == "sequence":
        return float(sequences)
    return float(sequences * max_completion_length)


def _aggregate(
    per_token: Tensor, mask: Tensor, aggregation: str, max_completion_length: int | None, normalizer: float | None
) -> Tensor:
    """Reduce the per-token loss [B, C] to a scalar with the chosen weights (module docstring)."""
    if aggregation == "sequence":  # GRPO: 1/G Σ_i (1/|o_i| Σ_t l_{i,t})
        per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_sequence.sum() / (per_token.shape[0] if normalizer is None else normalizer)
    total = (per_token * mask).sum()
    if aggregation == "token":  # DAPO: 1/Σ_i|o_i| Σ_i Σ_t l_{i,t}
        return total / (mask.sum().clamp(min=1) if normalizer is None else normalizer)
    # Dr. GRPO: 1/(G·L_max) Σ_i Σ_t l_{i,t}
    return total / (per_token.shape[0] * max_completion_length if normalizer is None else normalizer)


def _check_shapes(logps: Tensor, advantages: Tensor, **same_shape: Tensor | None) -> None:
    if logps.dim() != 2:
        raise ValueError(f"[grpo] logps must be [B, C], got shape {tuple(logps.shape)}")
    for name, t in same_shape.items():
        if t is not None and t.shape != logps.shape:
            raise ValueError(f"[grpo] {name} has shape {tuple(t.shape)}, logps has {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"[grpo] advantages must be [B]={tuple(logps.shape[:1])}, got {tuple(advantages.shape)}")


def grpo_loss(
    logps: Tensor,  # [B, C] log π_θ, with gradient
    old_logps: Tensor,  # [B, C] log π_θold of the sampling policy
    advantages: Tensor,  # [B] Â_i
    mask: Tensor,  # [B, C] 1 on completion tokens, 0 on padding
    *,
    ref_logps: Tensor | None = None,  # [B, C] log π_ref, required when beta > 0
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "token",
    max_completion_length: int | None = None,
    normalizer: float | None = None,
    token_weights: Tensor | None = None,  # [B, C] constants, e.g. grpo.importance weights π_old/π_s
) -> tuple[Tensor, dict[str, Tensor]]:
    """−J(θ) of the module docstring, and detached statistics (means over the masked tokens).

    ``token_weights`` w_{i,t} (no gradient) scale each token's whole loss, l_{i,t} ← w_{i,t} l_{i,t}, before
    aggregation: the importance-sampling correction for a sampler that is not π_old (``grpo.importance``).

    Statistics: clip_low_frac (Â<0 and ρ<1−ε_low), clip_high_frac (Â>0 and ρ>1+ε_high), clip_frac (either:
    tokens whose gradient the clip stops), ratio_mean, and kl_mean when beta > 0.
    """
    _check_shapes(logps, advantages, old_logps=old_logps, mask=mask, ref_logps=ref_logps, token_weights=token_weights)
    _check_aggregation(aggregation, max_completion_length, needs_length=normalizer is None)
    if beta > 0 and ref_logps is None:
        raise ValueError(f"[grpo] beta={beta} needs ref_logps, the reference policy's log-probs (or set beta=0)")
    if normalizer is not None and normalizer <= 0:
        raise ValueError(f"[grpo] normalizer={normalizer}: must be > 0 (use loss_normalizer)")
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)[:, None]  # Â_i, shared by every token of o_i

    # ρ_{i,t}, its log clamped as verl does: a token whose log-ratio passes ±20 gives a finite ratio (and no
    # gradient through the clamp) instead of inf, which would make the loss and every parameter NaN.
    ratio = torch.exp((logps - old_logps.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)  # clip(ρ, 1−ε_low, 1+ε_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # −min(ρÂ, clip(ρ)Â)
    if beta > 0:
        log_ref_ratio = ref_logps.detach() - logps  # log(π_ref / π_θ)
        kl = torch.exp(log_ref_ratio.clamp(max=MAX_LOG_RATIO)) - log_ref_ratio - 1  # k3, finite
        per_token = per_token + beta * kl  # + β D_KL
    if token_weights is not None:
        per_token = per_token * token_weights.detach()  # w_{i,t} l_{i,t}
    loss = _aggregate(per_token, mask, aggregation, max_completion_length, normalizer)

    with torch.no_grad():
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "clip_low_frac": _masked_mean(low, mask),
            "clip_high_frac": _masked_mean(high, mask),
            "clip_frac": _masked_mean(low | high, mask),
            "ratio_mean": _masked_mean(ratio, mask),
        }
        if beta > 0:
            stats["kl_mean"] = _masked_mean(kl, mask)
    return loss, stats
