"""``SpeechScorer``: grpo's Scorer for speech — hook (decode once, transcribe once) → terms → combination.

``SpeechScorer.judge`` is its one public call: rollouts (token ids) or ``Recordings`` (audio) in, one
``ScoredSpeech`` per completion out (the decoded and transcribed rollout, every term's value, the total).
Training (``score``), ``python -m reward score`` (``score_audio``) and ``evaluate.py`` all go through it.
"""

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

from reward.asr.transcript import Transcriber
from reward.combine import combine
from reward.config import RewardConfig
from reward.hook import HookTimings, Recordings, SpeechHook
from reward.rollout import PauseLimits, SpeechRollout, StepContext
from reward.terms import resolve_terms, rollout_error_rate
from tts.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from grpo.rollouts import Rollouts, Sample, Scores


@dataclass(frozen=True)
class ScoredSpeech:
    speech: SpeechRollout
    terms: dict[str, float | None]  # every active term; None = not applicable
    reward: float  # the combined total, at the float32 precision of the training rewards
    gated: bool  # a gate failed
    wer: float  # plain WER (the asr/wer metric), whatever the wer term's variant

    def details(self) -> dict[str, Any]:
        """JSON-ready: what a sample file and ``python -m reward score`` show."""
        r = self.speech
        return {
            "text": r.text,
            "language": r.language,
            "transcript": r.transcript.text,
            "silent": r.transcript.silent,
            "no_speech_prob": r.transcript.no_speech_prob,
            "duration_s": round(r.duration_s, 3),
            "finished": r.finished,
            "wer": round(self.wer, 4),
            "terms": {k: (None if v is None else round(v, 4)) for k, v in self.terms.items()},
            "gated": self.gated,
            "reward": round(self.reward, 4),
        }


def step_metrics(scored: Sequence[ScoredSpeech], timings: HookTimings) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name in scored[0].terms if scored else ():
        vals = [s.terms[name] for s in scored if s.terms[name] is not None]
        if vals:
            metrics[f"reward/{name}"] = float(np.mean(vals))
    if scored:
        metrics["reward/total"] = float(np.asarray([s.reward for s in scored], dtype=np.float32).mean())
        metrics["reward/gated_frac"] = float(np.mean([s.gated for s in scored]))
        metrics["asr/wer"] = float(np.mean([s.wer for s in scored]))
        # capped at 1 per clip: one hallucinated transcript (WER 3) cannot outweigh three clips that are right
        metrics["asr/wer_capped"] = float(np.mean([min(s.wer, 1.0) for s in scored]))
        loops = [s.terms["token_loop"] == 0.0 for s in scored if s.terms.get("token_loop") is not None]
        if loops:  # the share of completions whose codes cycle (token_loop is 0 or 1)
            metrics["speech/loop_rate"] = float(np.mean(loops))
    metrics["time/decode"] = timings.decode_s
    metrics["time/transcribe"] = timings.transcribe_s
    metrics["time/reward"] = timings.reward_s
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
        self.terms = resolve_terms(self.config)  # an unknown term fails now, not at the first step
        self.context = StepContext(self.config, rate_band, pause_limits)  # checks the band now
        self.rate_band, self.pause_limits = self.context.rate_band, pause_limits

    def judge(self, batch: Rollouts | Recordings, timings: HookTimings | None = None) -> list[ScoredSpeech]:
        """Decode (token ids) and transcribe once, evaluate every active term on every completion, combine."""
        timings = timings if timings is not None else HookTimings()
        speech = self.hook(batch, timings)
        start = time.perf_counter()
        out = []
        for r in speech:
            values = {n: fn(r, self.context) for n, fn in self.terms.items()}
            for n, v in values.items():
                if v is not None and not (0.0 <= v <= 1.0 and math.isfinite(v)):
                    raise ValueError(f"[reward] term {n!r} returned {v} for {r.text!r}: terms must lie in [0, 1]")
            total, gated = combine(values, self.config)
            wer = rollout_error_rate(r, "wer")  # the wer term's own computation when its variant is "wer"
            out.append(ScoredSpeech(r, values, float(np.float32(total)), gated, wer))
        timings.reward_s += time.perf_counter() - start
        return out

    def score(self, rollouts: Rollouts) -> Scores:
        from grpo.rollouts import Scores

        timings = HookTimings()
        scored = self.judge(rollouts, timings)
        return Scores(
            rewards=torch.from_numpy(np.asarray([s.reward for s in scored], dtype=np.float32)),
            metrics=step_metrics(scored, timings),
            # the waveform rides along for write_samples (it is not part of the JSON)
            details=tuple({**s.details(), "audio": s.speech.audio} for s in scored),
        )

    def write_samples(self, rollouts: Rollouts, scores: Scores, directory: Path, limit: int) -> list[Sample]:
        """WAV + JSON (text, transcript, terms, reward) of the first ``limit`` completions of ``scores``; returns
        them as the trackers' table rows (every term a ``term/<name>`` column) with their audio."""
        from atomicfs import write_text
        from grpo.rollouts import Sample
        from tts.audio import save_audio

        directory = Path(directory)
        samples = []
        for i, d in enumerate(scores.details[:limit]):
            save_audio(directory / f"{i:03d}.wav", d["audio"], SAMPLE_RATE)
            shown = {k: v for k, v in d.items() if k != "audio"}
            write_text(directory / f"{i:03d}.json", json.dumps(shown, ensure_ascii=False, indent=1) + "\n")
            keys = ("text", "transcript", "reward", "wer", "duration_s", "finished", "gated")
            row = {"sample": i, **{k: shown.get(k) for k in keys}}
            row.update({f"term/{k}": v for k, v in shown.get("terms", {}).items()})
            samples.append(Sample(row, np.asarray(d["audio"], dtype=np.float32), SAMPLE_RATE))
        return samples


def score_audio(
    rows: Sequence[Mapping[str, Any]],
    audios: Sequence[np.ndarray],
    transcriber: Transcriber,
    config: RewardConfig | None = None,
    rate_band: tuple[float, float] | None = None,
) -> list[dict]:
    """Score recordings (rows: text, language, optional codes/finished/ref_audio) through the training path."""
    scorer = SpeechScorer(SpeechHook(None, None, transcriber), config, rate_band)
    return [s.details() for s in scorer.judge(Recordings(rows, audios))]
