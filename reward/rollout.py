"""What every reward term sees: one completion, decoded and transcribed once (``SpeechRollout``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reward.asr.transcript import Transcript
from reward.config import RewardConfig, check_rate_band


@dataclass(frozen=True, eq=False)
class SpeechRollout:
    text: str  # the text the speech should say
    language: str
    audio: np.ndarray  # [samples] float32, 16 kHz
    duration_s: float
    transcript: Transcript
    ref_text: str | None = None
    ref_audio: str | None = None  # path of the reference voice, if cloning
    completion_ids: tuple[int, ...] | None = None  # None when scoring audio files
    codes: np.ndarray | None = None  # [T] int64 speech codes; None when scoring audio files
    finished: bool | None = None  # ended with end-of-speech; None when unknown
    stray_tokens: int = 0  # non-speech tokens inside the completion


@dataclass(frozen=True)
class PauseLimits:
    """Non-speech a clip may have before the ``pauses`` term counts the rest as excess (seconds; share of the
    span from the first to the last speech frame)."""

    leading_s: float
    trailing_s: float
    longest_s: float
    share: float

    @classmethod
    def from_config(cls, config: RewardConfig) -> PauseLimits:
        return cls(config.pause_leading_s, config.pause_trailing_s, config.pause_longest_s, config.pause_share)


@dataclass(frozen=True)
class StepContext:
    """Per-step information shared by all terms."""

    config: RewardConfig = field(default_factory=RewardConfig)
    rate_band: tuple[float, float] | None = None  # from the data (reward.rate.reference_rate_band); else config
    pause_limits: PauseLimits | None = None  # from the data (reward.rate.reference_pause_limits); else config

    def __post_init__(self) -> None:
        if self.rate_band is not None:
            object.__setattr__(self, "rate_band", check_rate_band(self.rate_band, "speaking-rate band"))
