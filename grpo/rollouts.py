"""The small typed interfaces where the GRPO loop meets generation and scoring.

A step is: ``Generator.generate`` -> ``Rollouts`` -> ``Scorer.score`` -> ``Scores`` -> advantages -> loss.
Nothing here knows what the tokens mean; per-completion data rows travel in ``Rollouts.meta``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Rollouts:
    """N = prompts × group_size completions, ordered group by group (all of prompt 0 first).

    Padding: prompts on the left (so every completion starts at the same column), completions on the
    right. ``completion_mask`` is 1 on every generated token, the stop token included, 0 on padding.
    """

    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] long/bool
    completion_ids: Tensor  # [N, C] long, right-padded
    completion_mask: Tensor  # [N, C] long/bool
    group_size: int
    finished: Tensor  # [N] bool: ended with a stop token rather than at the length budget
    sampler_logps: Tensor | None = None  # [N, C] float32 log-probs of the sampling engine (vLLM); None for hf
    meta: tuple[Mapping[str, Any], ...] = ()  # per completion: the data row it answers (opaque to grpo)

    def __post_init__(self) -> None:
        n = self.completion_ids.shape[0]
        if self.group_size < 1 or n % self.group_size:
            raise ValueError(f"[grpo] {n} completions is not a multiple of group_size={self.group_size}")
        for name in ("prompt_ids", "prompt_mask", "finished"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"[grpo] Rollouts.{name} has {getattr(self, name).shape[0]} rows, expected {n}")
        if self.completion_mask.shape != self.completion_ids.shape:
            raise ValueError("[grpo] Rollouts.completion_mask must have the shape of completion_ids")
        if self.meta and len(self.meta) != n:
            raise ValueError(f"[grpo] Rollouts.meta has {len(self.meta)} entries, expected {n}")

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def completion_lists(self) -> list[list[int]]:
        """Unpadded completion token ids, one list per completion (stop token included if generated)."""
        lengths = self.completion_mask.sum(dim=1).tolist()
        return [row[: int(n)].tolist() for row, n in zip(self.completion_ids, lengths, strict=True)]


@dataclass(frozen=True)
class Scores:
    rewards: Tensor  # [N] float32
    metrics: dict[str, float] = field(default_factory=dict)  # step means, e.g. "reward/wer"
    details: tuple[Mapping[str, Any], ...] = ()  # per completion (transcript, per-term values) for samples


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        """Sample ``group_size`` completions for each prompt; the result is ordered group by group."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (a no-op when it *is* the model)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    def score(self, rollouts: Rollouts) -> Scores: ...


@dataclass(frozen=True)
class Sample:
    """One written sample as the trackers show it: a table row and, for speech, its audio."""

    fields: Mapping[str, str | int | float | bool | None]  # e.g. text, transcript, reward, term/<name>
    audio: np.ndarray | None = None  # [T] float32 in [-1, 1]
    sample_rate: int = 0


@runtime_checkable
class SampleWriter(Protocol):
    """Optional: a scorer that can write human-checkable samples (audio, text) of the last scored step; what it
    returns also goes to the trackers of ``run.report_to`` (a table per step and the audio)."""

    def write_samples(self, rollouts: Rollouts, scores: Scores, directory: Path, limit: int) -> Sequence[Sample]: ...
