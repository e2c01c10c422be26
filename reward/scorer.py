"""``SpeechScorer``: grpo's Scorer for speech — hook (decode once, transcribe once) → terms → combination."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from reward.combine import active_terms, combine
from reward.config import RewardConfig
from reward.hook import HookTimings, SpeechHook, speech_rollouts_from_audio
from reward.rollout import PauseLimits, SpeechRollout, StepContext
from reward.terms import get_term, rollout_error_rate
from reward.transcribe import Transcriber
from tts.codec import SAMPLE_RATE

if TYPE_CHECKING:
    from grpo.rollouts import Rollouts, Scores


@dataclass(frozen=True)
class ScoredBatch:
    rewards: np.ndarray  # [N] float32
    terms: list[dict[str, float | None]]  # per rollout, per active term
    gated: list[bool]
    wers: list[float]  # plain WER (for the asr/wer metric), whatever the wer term's variant
    reward_s: float


def score_speech(rollouts: Sequence[SpeechRollout], context: StepContext) -> ScoredBatch:
    """Evaluate every active term on every rollout and combine them."""
    start = time.perf_counter()
    names = active_terms(context.config)
    fns = {n: get_term(n) for n in names}
    terms, rewards, gated, wers = [], [], [], []
    for r in rollouts:
        values = {n: fn(r, context) for n, fn in fns.items()}
        for n, v in values.items():
            if v is not None and not (0.0 <= v <= 1.0 and math.isfinite(v)):
                raise ValueError(f"[reward] term {n!r} returned {v} for {r.text!r}: terms must lie in [0, 1]")
        total, failed = combine(values, context.config)
        terms.append(values)
        rewards.append(total)
        gated.append(failed)
        wers.append(rollout_error_rate(r, "wer"))  # the wer term's own computation when its variant is "wer"
    return ScoredBatch(np.asarray(rewards, dtype=np.float32), terms, gated, wers, time.perf_counter() - start)


def details(r: SpeechRollout, values: Mapping[str, float | None], total: float, gated: bool, wer: float) -> dict:
    return {
        "text": r.text,
        "language": r.language,
        "transcript": r.transcript.text,
        "silent": r.transcript.silent,
        "no_speech_prob": r.transcript.no_speech_prob,
        "duration_s": round(r.duration_s, 3),
        "finished": r.finished,
        "wer": round(wer, 4),
        "terms": {k: (None if v is None else round(v, 4)) for k, v in values.items()},
        "gated": gated,
        "reward": round(float(total), 4),
    }


def step_metrics(batch: ScoredBatch, timings: HookTimings) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name in batch.terms[0] if batch.terms else ():
        vals = [t[name] for t in batch.terms if t[name] is not None]
        if vals:
            metrics[f"reward/{name}"] = float(np.mean(vals))
    if len(batch.rewards):
        metrics["reward/total"] = float(batch.rewards.mean())
        metrics["reward/gated_frac"] = float(np.mean(batch.gated))
        metrics["asr/wer"] = float(np.mean(batch.wers))
    metrics["time/decode"] = timings.decode_s
    metrics["time/transcribe"] = timings.transcribe_s
    metrics["time/reward"] = batch.reward_s
    return metrics


class SpeechScorer:
    """Implements grpo's ``Scorer`` and ``SampleWriter`` for Llasa speech completions."""

    def __init__(
        self,
        hook: SpeechHook,
        config: RewardConfig | None = None,
        rate_band: tuple[float, float] | None = None,
        pause_limits: PauseLimits | None = None,
    ) -> None:
        self.hook = hook
        self.config = config or RewardConfig()
        self.rate_band = StepContext(self.config, 0, rate_band).rate_band  # checked now, not at the first step
        self.pause_limits = pause_limits
        self.step = 0
        self.last: list[SpeechRollout] = []

    def score(self, rollouts: Rollouts) -> Scores:
        from grpo.rollouts import Scores

        timings = HookTimings()
        speech = self.hook(rollouts, timings)
        batch = score_speech(speech, StepContext(self.config, self.step, self.rate_band, self.pause_limits))
        self.step += 1
        self.last = speech
        return Scores(
            rewards=torch.from_numpy(batch.rewards),
            metrics=step_metrics(batch, timings),
            details=tuple(
                details(r, v, t, g, w)
                for r, v, t, g, w in zip(speech, batch.terms, batch.rewards, batch.gated, batch.wers, strict=True)
            ),
        )

    def write_samples(self, rollouts: Rollouts, scores: Scores, directory: Path, limit: int) -> None:
        """WAV + JSON (text, transcript, terms, reward) of the first ``limit`` completions of the last step."""
        from tts.audio import save_audio
        from tts.io import write_text

        directory = Path(directory)
        for i, (r, d) in enumerate(zip(self.last[:limit], scores.details[:limit], strict=False)):
            save_audio(directory / f"{i:03d}.wav", r.audio, SAMPLE_RATE)
            write_text(directory / f"{i:03d}.json", json.dumps(d, ensure_ascii=False, indent=1) + "\n")


def score_audio(
    rows: Sequence[Mapping[str, Any]],
    audios: Sequence[np.ndarray],
    transcriber: Transcriber,
    config: RewardConfig | None = None,
    rate_band: tuple[float, float] | None = None,
) -> list[dict]:
    """Score recordings (rows: text, language, optional codes/finished/ref_audio) through the training path."""
    timings = HookTimings()
    speech = speech_rollouts_from_audio(rows, audios, transcriber, timings)
    batch = score_speech(speech, StepContext(config or RewardConfig(), 0, rate_band))
    return [
        details(r, v, t, g, w)
        for r, v, t, g, w in zip(speech, batch.terms, batch.rewards, batch.gated, batch.wers, strict=True)
    ]
