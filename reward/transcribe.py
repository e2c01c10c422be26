"""Audio → text, once per step for the whole batch.

``WhisperTranscriber`` runs faster-whisper / CTranslate2 in process. Short clips are batched *across clips*:
their log-mel features are stacked into one [B, 80, 3000] array and CTranslate2's ``Whisper.generate`` decodes
all of them in one call (faster-whisper's ``BatchedInferencePipeline`` only batches chunks of one long audio).
Clips longer than Whisper's 30 s window, or ``batched=False``, go through ``WhisperModel.transcribe``.

Silence gate: the raw batched generate invents text for silence and noise (" you", " Ich bin hier.") with a
high no-speech probability. A clip is *silent* when its RMS level is below ``silence_dbfs`` or its no-speech
probability exceeds ``no_speech_threshold`` (and, if ``logprob_threshold`` is set, its average log-prob is
below it, Whisper's own rule); a silent clip's transcript is "" so no term ever scores a hallucination.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from reward.config import TranscriberConfig
from reward.whisper_assets import resolve_model

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

SAMPLE_RATE = 16000
_WINDOW_SAMPLES = 30 * SAMPLE_RATE


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
        """16 kHz float32 mono clips → one transcript each; ``language`` for all clips or one per clip."""
        ...


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (−inf for empty or all-zero audio)."""
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def per_clip_languages(language: str | Sequence[str], n: int) -> list[str]:
    languages = [language] * n if isinstance(language, str) else list(language)
    if len(languages) != n:
        raise ValueError(f"[transcriber] {len(languages)} languages for {n} clips")
    if not all(languages):
        raise ValueError("[transcriber] every clip needs a language (auto-detection mislabels short clips)")
    return languages


class WhisperTranscriber:
    """faster-whisper / CTranslate2 backend; temperature 0 (deterministic), language always given."""

    def __init__(self, config: TranscriberConfig, model: WhisperModel | None = None) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        if model is None:
            device, _, index = config.device.partition(":")
            model = WhisperModel(
                resolve_model(config.model),
                device=device,
                device_index=int(index or 0),
                compute_type=config.compute_type,
                cpu_threads=config.cpu_threads,
            )
        self.model = model

    # -- public ---------------------------------------------------------------------------------------------
    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str]) -> list[Transcript]:
        languages = per_clip_languages(self.config.language or language, len(audios))
        audios = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in audios]
        raw: list[tuple[str, float | None, float | None] | None] = [None] * len(audios)
        quiet = [rms_dbfs(a) < self.config.silence_dbfs for a in audios]
        todo = [i for i, q in enumerate(quiet) if not q]
        if self.config.batched:
            short = [i for i in todo if len(audios[i]) <= _WINDOW_SAMPLES]
            for lang in sorted({languages[i] for i in short}):
                same = [i for i in short if languages[i] == lang]
                for start in range(0, len(same), self.config.batch_size):
                    chunk = same[start : start + self.config.batch_size]
                    for i, out in zip(chunk, self.generate_batched([audios[i] for i in chunk], lang), strict=True):
                        raw[i] = out
        for i in todo:
            if raw[i] is None:
                raw[i] = self.transcribe_sequential(audios[i], languages[i])
        return [self._gate(r, q) for r, q in zip(raw, quiet, strict=True)]

    # -- backends -------------------------------------------------------------------------------------------
    def generate_batched(self, audios: Sequence[np.ndarray], language: str) -> list[tuple[str, float, float]]:
        """One encoder pass and one beam-search decode for all clips (each ≤ 30 s): (text, avg_logprob, p_ns)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        m = self.model
        features = np.stack([pad_or_trim(m.feature_extractor(a)[..., :-1]) for a in audios])  # [B, 80, 3000]
        tokenizer = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=language)
        prompt = m.get_prompt(tokenizer, [], without_timestamps=True)
        results = m.model.generate(
            m.encode(features),
            [list(prompt) for _ in audios],
            beam_size=self.config.beam_size,
            max_length=m.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
        )
        out = []
        for r in results:
            tokens = r.sequences_ids[0]
            # scores are length-normalised cumulative log-probs (length_penalty 1): same recovery as faster-whisper
            avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1)
            out.append((tokenizer.decode(tokens).strip(), float(avg_logprob), float(r.no_speech_prob)))
        return out

    def transcribe_sequential(self, audio: np.ndarray, language: str) -> tuple[str, float | None, float | None]:
        segments, _ = self.model.transcribe(
            audio,
            language=language,
            beam_size=self.config.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        segments = list(segments)
        if not segments:  # faster-whisper dropped every segment as no-speech
            return "", None, 1.0
        text = " ".join(s.text.strip() for s in segments).strip()
        avg = float(np.mean([s.avg_logprob for s in segments]))
        return text, avg, float(max(s.no_speech_prob for s in segments))

    def _gate(self, raw: tuple[str, float | None, float | None] | None, quiet: bool) -> Transcript:
        if raw is None or quiet:
            return Transcript(text="", silent=True)
        text, avg, p_ns = raw
        silent = p_ns is not None and p_ns > self.config.no_speech_threshold
        if silent and self.config.logprob_threshold is not None and avg is not None:
            silent = avg < self.config.logprob_threshold
        silent = silent or not text
        return Transcript(
            text="" if silent else text, avg_logprob=avg, no_speech_prob=p_ns, silent=silent, raw_text=text
        )


def make_transcriber(config: TranscriberConfig) -> Transcriber:
    if config.backend == "http":
        from reward.client import HTTPTranscriber

        return HTTPTranscriber(config)
    return WhisperTranscriber(config)
