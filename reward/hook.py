"""The post-generation hook: decode every completion once, transcribe all of them once, build SpeechRollouts.

Training (token ids → codes → audio) and audio scoring (``Recordings``: files → audio) meet in
``build_speech_rollouts``, so the CLI and evaluate.py run exactly the transcription and terms that training runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from reward.asr.transcript import Transcriber
from reward.rollout import SpeechRollout
from tts.constants import SAMPLE_RATE, SAMPLES_PER_CODE

if TYPE_CHECKING:
    from grpo.rollouts import Rollouts


@dataclass(frozen=True)
class CodedCompletion:
    """What the hook knows of a completion before audio exists."""

    completion_ids: tuple[int, ...] | None
    codes: np.ndarray | None  # [T] int64
    finished: bool | None
    stray_tokens: int = 0


@dataclass(frozen=True)
class Recordings:
    """Audio to score instead of token ids (``python -m reward score``): rows carry text, language and
    optionally ``codes`` and ``finished`` (else the terms that need them are not applicable)."""

    rows: Sequence[Mapping[str, Any]]
    audios: Sequence[np.ndarray]


@dataclass
class HookTimings:
    decode_s: float = 0.0
    transcribe_s: float = 0.0
    reward_s: float = 0.0  # the terms (SpeechScorer)


def _row_text(row: Mapping[str, Any], i: int, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"[reward] rollout {i}: meta[{key!r}] is missing or empty; the data row must carry it")
    return value


def build_speech_rollouts(
    rows: Sequence[Mapping[str, Any]],
    audios: Sequence[np.ndarray],
    completions: Sequence[CodedCompletion],
    transcriber: Transcriber,
    timings: HookTimings | None = None,
) -> list[SpeechRollout]:
    """One transcriber call for the whole batch, then one frozen SpeechRollout per completion."""
    if not len(rows) == len(audios) == len(completions):
        raise ValueError(f"[reward] {len(rows)} rows, {len(audios)} audios, {len(completions)} completions")
    texts = [_row_text(row, i, "text") for i, row in enumerate(rows)]
    languages = [_row_text(row, i, "language") for i, row in enumerate(rows)]
    start = time.perf_counter()
    transcripts = transcriber.transcribe(list(audios), languages) if audios else []
    if timings is not None:
        timings.transcribe_s += time.perf_counter() - start
    if len(transcripts) != len(audios):
        raise RuntimeError(f"[reward] transcriber returned {len(transcripts)} transcripts for {len(audios)} clips")
    out = []
    for row, text, lang, audio, comp, tr in zip(rows, texts, languages, audios, completions, transcripts, strict=True):
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        ref_audio = row.get("ref_audio")
        out.append(
            SpeechRollout(
                text=text,
                language=lang,
                audio=audio,
                duration_s=len(audio) / SAMPLE_RATE,
                transcript=tr,
                ref_text=row.get("ref_text"),
                ref_audio=str(ref_audio) if ref_audio else None,
                completion_ids=comp.completion_ids,
                codes=comp.codes,
                finished=comp.finished,
                stray_tokens=comp.stray_tokens,
            )
        )
    return out


class SpeechHook:
    """Rollouts (token ids) → SpeechRollouts with ONE batched decode and ONE transcriber call.

    Voice cloning (a row with ``ref_codes``) with ``decode_with_reference``: the reference codes are decoded
    together with the completion's, as the public Llasa inference does, and the reference's
    ``SAMPLES_PER_CODE · len(ref)`` samples are cut from the front. The decoder's GroupNorms and bidirectional
    attention see the whole sequence, so this is the audio the model's training data implies; the rewarded
    completion (ids, codes, audio) never includes the reference.
    """

    def __init__(self, vocab: Any, decoder: Any, transcriber: Transcriber, decode_with_reference: bool = True) -> None:
        self.vocab = vocab  # tts.llasa.SpeechVocab; None scores Recordings only
        self.decoder = decoder  # tts.codec.XCodec2Decoder (anything with decode_batch(codes) -> waveforms)
        self.transcriber = transcriber
        self.decode_with_reference = decode_with_reference

    def __call__(self, rollouts: Rollouts | Recordings, timings: HookTimings | None = None) -> list[SpeechRollout]:
        if isinstance(rollouts, Recordings):
            return speech_rollouts_from_audio(rollouts.rows, rollouts.audios, self.transcriber, timings)
        if self.vocab is None or self.decoder is None:
            raise ValueError("[reward] this SpeechHook has no vocab and decoder: it scores Recordings only")
        if not rollouts.meta:
            raise ValueError("[reward] Rollouts.meta is empty: the generator must attach each prompt's data row")
        completions = []
        for ids, finished in zip(rollouts.completion_lists(), rollouts.finished.tolist(), strict=True):
            split = self.vocab.split_completion(ids)
            completions.append(
                CodedCompletion(
                    completion_ids=tuple(ids),
                    codes=np.asarray(split.codes, dtype=np.int64),
                    # the vocab knows whether the end-of-speech token was generated; the budget flag agrees
                    finished=bool(split.finished and finished),
                    stray_tokens=int(split.stray_tokens),
                )
            )
        start = time.perf_counter()
        audios = self.decode([c.codes for c in completions], rollouts.meta)
        if timings is not None:
            timings.decode_s += time.perf_counter() - start
        return build_speech_rollouts(rollouts.meta, audios, completions, self.transcriber, timings)

    def decode(self, codes: Sequence[np.ndarray], rows: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        """One batched decode; each waveform has ``SAMPLES_PER_CODE · len(codes[i])`` samples."""
        if len(rows) != len(codes):
            raise ValueError(f"[reward] {len(rows)} meta rows for {len(codes)} completions")
        refs = [self._ref_codes(row) for row in rows]
        joined = [c if r is None or not c.size else np.concatenate([r, c]) for c, r in zip(codes, refs, strict=True)]
        wavs = self.decoder.decode_batch(joined)
        out = []
        for c, ref, wav in zip(codes, refs, wavs, strict=True):
            cut = 0 if ref is None or not c.size else SAMPLES_PER_CODE * len(ref)
            out.append(np.asarray(wav, dtype=np.float32)[cut : cut + SAMPLES_PER_CODE * len(c)])
        return out

    def _ref_codes(self, row: Mapping[str, Any]) -> np.ndarray | None:
        ref = row.get("ref_codes")
        if not self.decode_with_reference or ref is None or len(ref) == 0:
            return None
        return np.asarray(ref, dtype=np.int64).reshape(-1)


def speech_rollouts_from_audio(
    rows: Sequence[Mapping[str, Any]],
    audios: Sequence[np.ndarray],
    transcriber: Transcriber,
    timings: HookTimings | None = None,
) -> list[SpeechRollout]:
    """Audio files → SpeechRollouts; rows may carry ``codes`` and ``finished`` (else those terms are N/A)."""
    completions = [
        CodedCompletion(
            completion_ids=None,
            codes=None if row.get("codes") is None else np.asarray(row["codes"], dtype=np.int64),
            finished=None if row.get("finished") is None else bool(row["finished"]),
        )
        for row in rows
    ]
    return build_speech_rollouts(rows, audios, completions, transcriber, timings)
