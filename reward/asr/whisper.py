"""Audio → text in process with faster-whisper, once per step for the whole batch.

``WhisperTranscriber`` runs faster-whisper / CTranslate2 in process. Short clips are batched *across clips*:
their log-mel features are padded to the encoder window (``window_s``, 30 s as Whisper was trained: [B, 80, 3000])
and stacked, and CTranslate2's ``Whisper.generate`` decodes all of them in one call (faster-whisper's
``BatchedInferencePipeline`` only batches chunks of one long audio). CTranslate2 accepts a shorter window, whose
encoder cost falls with it; every clip is padded to the same window, so its transcript does not depend on the
other clips in the batch. Clips longer than the window, or ``batched=False``, go through
``WhisperModel.transcribe``, whose 30 s segments are gated one by one (a quiet segment is dropped; it does not
blank the clip).

Silence gate: the raw batched generate invents text for silence and noise (" you", " Ich bin hier.") with a
high no-speech probability. A clip is *silent* when its RMS level is below ``silence_dbfs`` or its no-speech
probability exceeds ``no_speech_threshold`` (and, if ``logprob_threshold`` is set, its average log-prob is
below it, Whisper's own rule; for long clips, when every 30 s window is); a silent clip's transcript is "" so
no term ever scores a hallucination.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from reward.asr.transcript import Transcript, per_clip_languages
from reward.asr.whisper_assets import resolve_model
from reward.config import TranscriberConfig
from tts.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (−inf for empty or all-zero audio)."""
    if audio.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


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

    @property
    def window_samples(self) -> int:
        """The batched path's encoder window (``window_s``) in samples; longer clips take the 30 s path."""
        return int(self.config.window_s * SAMPLE_RATE)

    # -- public ---------------------------------------------------------------------------------------------
    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str]) -> list[Transcript]:
        languages = per_clip_languages(language, len(audios))
        audios = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1) for a in audios]
        out: list[Transcript | None] = [None] * len(audios)
        for i, a in enumerate(audios):
            if rms_dbfs(a) < self.config.silence_dbfs:
                out[i] = Transcript(text="", silent=True)  # too quiet to ask the model
        todo = [i for i, t in enumerate(out) if t is None]
        if self.config.batched:
            short = [i for i in todo if len(audios[i]) <= self.window_samples]
            for lang in sorted({languages[i] for i in short}):
                same = [i for i in short if languages[i] == lang]
                for start in range(0, len(same), self.config.batch_size):
                    chunk = same[start : start + self.config.batch_size]
                    for i, raw in zip(chunk, self.generate_batched([audios[i] for i in chunk], lang), strict=True):
                        out[i] = self._gate(*raw)
        for i in todo:
            if out[i] is None:
                out[i] = self.transcribe_sequential(audios[i], languages[i])
        return [t for t in out if t is not None]

    # -- backends -------------------------------------------------------------------------------------------
    def generate_batched(self, audios: Sequence[np.ndarray], language: str) -> list[tuple[str, float, float]]:
        """One encoder pass and one beam-search decode for all clips (each ≤ window_s): (text, avg_logprob, p_ns)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        m = self.model
        frames = self.window_samples // m.feature_extractor.hop_length
        features = np.stack([pad_or_trim(m.feature_extractor(a)[..., :-1], frames) for a in audios])  # [B, 80, T]
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

    def transcribe_sequential(self, audio: np.ndarray, language: str) -> Transcript:
        """``WhisperModel.transcribe`` (30 s windows), each window gated on its own (``speech_segments``)."""
        segments, _ = self.model.transcribe(
            audio,
            language=language,
            beam_size=self.config.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            no_speech_threshold=None,  # speech_segments decides, with this project's thresholds
        )
        return speech_segments(list(segments), self.config.no_speech_threshold, self.config.logprob_threshold)

    def _gate(self, text: str, avg: float | None, p_ns: float | None) -> Transcript:
        silent = not text or is_no_speech(p_ns, avg, self.config.no_speech_threshold, self.config.logprob_threshold)
        return Transcript(
            text="" if silent else text, avg_logprob=avg, no_speech_prob=p_ns, silent=silent, raw_text=text
        )


def is_no_speech(
    no_speech_prob: float | None, avg_logprob: float | None, threshold: float, logprob_threshold: float | None
) -> bool:
    """Whisper's rule: p_no_speech > threshold and (if ``logprob_threshold`` is set) avg_logprob below it."""
    if no_speech_prob is None or no_speech_prob <= threshold:
        return False
    return logprob_threshold is None or avg_logprob is None or avg_logprob < logprob_threshold


def speech_segments(segments: Sequence[Any], threshold: float, logprob_threshold: float | None) -> Transcript:
    """The transcript of a clip from its Whisper segments (``text``, ``avg_logprob``, ``no_speech_prob``,
    ``start``, ``end``).

    Segments judged no-speech (``is_no_speech``) are dropped one by one, so one quiet window does not blank a
    long transcript; log-prob and no-speech probability are duration-weighted means over the kept segments.
    If none is kept, the clip is silent (with the mean log-prob and the largest no-speech probability).
    """
    raw_text = " ".join(s.text.strip() for s in segments).strip()
    if not segments:  # nothing decoded at all
        return Transcript(text="", no_speech_prob=1.0, silent=True)
    kept = [s for s in segments if not is_no_speech(s.no_speech_prob, s.avg_logprob, threshold, logprob_threshold)]
    text = " ".join(s.text.strip() for s in kept).strip()
    if not text:
        avg = float(np.mean([s.avg_logprob for s in segments]))
        p_ns = float(max(s.no_speech_prob for s in segments))
        return Transcript(text="", avg_logprob=avg, no_speech_prob=p_ns, silent=True, raw_text=raw_text)
    weights = np.asarray([max(s.end - s.start, 1e-3) for s in kept])
    avg = float(np.average([s.avg_logprob for s in kept], weights=weights))
    p_ns = float(np.average([s.no_speech_prob for s in kept], weights=weights))
    return Transcript(text=text, avg_logprob=avg, no_speech_prob=p_ns, silent=False, raw_text=raw_text)
