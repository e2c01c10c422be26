"""What a transcription backend returns and the protocol every backend implements (imports no backend)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when silent
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    silent: bool = False
    raw_text: str = ""  # what the model said before the silence gate


@runtime_checkable
class Transcriber(Protocol):
    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str]) -> list[Transcript]:
        """16 kHz float32 mono clips → one transcript each; ``language`` for all clips or one per clip.

        The caller resolves each clip's language (the data row's, else ``transcriber.language``); a
        transcriber uses what it is given.
        """
        ...


def per_clip_languages(language: str | Sequence[str], n: int) -> list[str]:
    languages = [language] * n if isinstance(language, str) else list(language)
    if len(languages) != n:
        raise ValueError(f"[transcriber] {len(languages)} languages for {n} clips")
    if not all(languages):
        raise ValueError("[transcriber] every clip needs a language (auto-detection mislabels short clips)")
    return languages
