"""Turn per-term values into one reward: a weighted mean over applicable terms, with gates.

    total = Σ_k w_k r_k / Σ_k w_k     (k over weighted terms with r_k not None)
    total ← gate_floor · total        if any gated term g has r_g < threshold_g

Scaling (rather than clamping to the floor) keeps failed completions ordered among themselves, so a group of
all-failing samples still has a gradient, while every failure stays below every non-failure with total > floor.
"""

from __future__ import annotations

from collections.abc import Mapping

from reward.config import RewardConfig


def active_terms(config: RewardConfig) -> list[str]:
    """Terms to evaluate: weighted ones, then gate-only ones, in config order."""
    names = [n for n, w in config.weights.items() if w > 0]
    return names + [n for n in config.gates if n not in names]


def combine(values: Mapping[str, float | None], config: RewardConfig) -> tuple[float, bool]:
    """(total in [0, 1], whether a gate failed)."""
    num = den = 0.0
    for name, weight in config.weights.items():
        value = values.get(name)
        if value is not None and weight > 0:
            num += weight * value
            den += weight
    total = num / den if den else 0.0
    gated = any(values.get(n) is not None and values[n] < thr for n, thr in config.gates.items())  # type: ignore[operator]
    return (config.gate_floor * total if gated else total), gated
