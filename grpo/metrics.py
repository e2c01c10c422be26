"""A step's numbers and where they go: one JSON line per logged step, the trackers of ``run.report_to``, a tqdm bar.

``UpdateStats`` and ``step_metrics`` turn what one step measured into the logged metrics (identical on every
rank). Only the main process writes. ``metrics.jsonl`` is the source of truth (the end-of-run summary and
``evaluate.py`` read it back); the trackers (``grpo.tracking``: TensorBoard, W&B, trackio) follow it.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from atomicfs import write_text
from grpo import distributed as dist
from grpo.advantages import zero_spread_fraction
from grpo.rollouts import Rollouts, Sample
from grpo.tracking import Tracker

METRICS_FILE = "metrics.jsonl"


@dataclass
class UpdateStats:
    """One optimizer update's statistics: the loss summed over micro-batches, the loss statistics and the entropy
    as token-weighted sums (means come out in ``means``), and the clipped gradient norm and lr."""

    sums: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: float = 0.0
    grad_norm: float = 0.0
    lr: float = 0.0

    def add(self, loss: Tensor, stats: Mapping[str, Tensor], cmask: Tensor, entropy: Tensor | None) -> None:
        """One micro-batch: its loss (a share of the step's), its per-token mean statistics, its mask [B, C]."""
        k = float(cmask.sum())
        self.tokens += k
        self.sums["loss"] += loss.item()
        for name, v in stats.items():
            self.sums[name] += v.item() * k
        if entropy is not None:
            self.sums["entropy"] += float((entropy * cmask).sum())

    def means(self) -> dict[str, float]:
        """This rank's share of the loss, per-token means of the rest, the gradient norm and lr."""
        out = {k: (v if k == "loss" else v / max(self.tokens, 1.0)) for k, v in self.sums.items()}
        return {**out, "grad_norm": self.grad_norm, "lr": self.lr}


def step_metrics(
    rollouts: Rollouts,
    scorer_metrics: Mapping[str, float],
    rewards_all: Tensor,
    updates: list[UpdateStats],
    times: Mapping[str, float],
    *,
    group_size: int,
    world_size: int,
) -> dict[str, float]:
    """The step's metrics, averaged over ranks (a collective: every rank calls it). Loss statistics are those of
    the first update (the sampling policy); with μ > 1 the last update's follow as ``loss/last_*``."""
    lengths = rollouts.completion_mask.sum(dim=1).float()
    stats = [u.means() for u in updates]
    first = stats[0]
    local: dict[str, float] = {
        **{k if "/" in k else f"reward/{k}": float(v) for k, v in scorer_metrics.items()},
        "completion/tokens": lengths.mean().item(),
        "completion/tokens_max": lengths.max().item(),
        "completion/finished": rollouts.finished.float().mean().item(),
        "loss": first["loss"],
        **{f"loss/{k}": v for k, v in first.items() if k not in ("loss", "grad_norm", "lr", "entropy")},
        **times,
    }
    if "entropy" in first:
        local["policy/entropy"] = first["entropy"]
    if len(stats) > 1:  # the last update shows how far the policy moved from the sampler
        local.update({f"loss/last_{k}": v for k, v in stats[-1].items() if k not in ("grad_norm", "lr")})
    metrics = dist.all_reduce_mean(local)
    for key in ("loss", "loss/last_loss"):  # each rank's loss is its share of the global normaliser: sum them
        if key in metrics:
            metrics[key] *= world_size
    metrics.update(
        {
            "reward/mean": rewards_all.mean().item(),
            "reward/std": rewards_all.std().item() if rewards_all.numel() > 1 else 0.0,
            "reward/zero_spread": zero_spread_fraction(rewards_all, group_size),
            "lr": first["lr"],
            "grad_norm": sum(u["grad_norm"] for u in stats) / len(stats),
        }
    )
    return metrics


class MetricsLogger:
    """``metrics.jsonl`` (the source of truth) and the trackers of ``run.report_to`` (``grpo.tracking``)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, trackers: Sequence[Tracker] = ()) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.trackers = list(trackers)

    def truncate_after(self, step: int) -> int | None:
        """On resume: drop lines of steps after the checkpoint (they will be run again); returns the last step
        the file held before (None if it held none)."""
        if not self.enabled or not self.path.is_file():
            return None
        rows = [r for r in self.path.read_text(encoding="utf-8").splitlines() if r.strip()]
        steps = [int(json.loads(r).get("step", 0)) for r in rows]
        kept = [r for r, s in zip(rows, steps, strict=True) if s <= step]
        write_text(self.path, "".join(r + "\n" for r in kept))  # atomic: a crash here keeps the old lines
        return max(steps, default=None)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _finite(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for t in self.trackers:
            t.log_metrics(step, metrics)

    def log_samples(self, step: int, samples: Sequence[Sample]) -> None:
        """The written samples' table and audio to every tracker (the JSONL sink's are the samples/ files)."""
        if self.enabled and samples:
            for t in self.trackers:
                t.log_samples(step, samples)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(r) for r in path.read_text(encoding="utf-8").splitlines() if r.strip()]


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON has no NaN


class Progress:
    """tqdm bar over steps with the numbers one glances at: reward, WER (when the scorer reports it), s/step."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)

    def update(self, metrics: Mapping[str, float]) -> None:
        shown = {"reward": metrics.get("reward/mean")}
        # The scorer's plain WER ("asr/wer") rather than a reward term derived from it ("reward/wer").
        wer = metrics.get("asr/wer", metrics.get("wer"))
        if wer is not None:
            shown["wer"] = wer
        shown["s/step"] = metrics.get("time/step")
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def summarize(rows: list[dict[str, Any]], window: int = 3) -> list[str]:
    """Start vs end of each reward term and a few health numbers: means over the first and last ``window``
    logged steps (one step is noisy with a handful of completions)."""
    if not rows:
        return ["  (no metrics logged)"]
    k = max(1, min(window, len(rows) // 2))
    head, tail = rows[:k], rows[-k:]

    def mean(part: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    keys = sorted({key for r in rows for key in r if key.startswith(("reward/", "asr/", "speech/"))})
    keys += ["completion/tokens", "completion/finished", "time/step"]
    steps = f"steps {head[0]['step']}–{head[-1]['step']} → {tail[0]['step']}–{tail[-1]['step']}"
    lines = [f"  {'metric':<24} {'start':>9} {'end':>9}   ({steps})"]
    for key in keys:
        a, b = mean(head, key), mean(tail, key)
        if a is not None and b is not None:
            lines.append(f"  {key:<24} {a:>9.4g} {b:>9.4g}")
    return lines
