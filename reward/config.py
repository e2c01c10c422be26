"""Plain frozen config dataclasses for the reward side; the shared TOML loader fills them.

``RewardConfig`` mirrors the ``[reward]`` table and ``TranscriberConfig`` the ``[transcriber]`` table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tomlconfig import FieldError


def _default_weights() -> dict[str, float]:
    return {
        "wer": 1.0,
        "hangup": 0.5,
        "token_loop": 0.5,
        "audio_repeat": 0.5,
        "speaking_rate": 1.0,
        "pauses": 1.0,
        "complete": 0.5,
    }


def _default_gates() -> dict[str, float]:
    # A gate is a hard failure: below the threshold the total is scaled into [0, gate_floor].
    return {"complete": 0.5, "token_loop": 0.5, "audio_repeat": 0.5}


# `preset = "original"`: the seed experiment's reward, (exp(−WER) + hangup) / 2, as a weighted mean of two terms.
ORIGINAL_WEIGHTS = {"wer_original": 1.0, "hangup_original": 1.0}


def check_rate_band(band: tuple[float, float], where: str) -> tuple[float, float]:
    """``band`` as floats if 0 < low < high (letters per second), else a ValueError naming ``where``."""
    try:
        lo, hi = (float(v) for v in band)
    except (TypeError, ValueError):
        raise ValueError(f"[reward] {where}={band!r}: expected two numbers (low, high) in letters per second") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"[reward] {where}={band!r}: need 0 < low < high letters per second")
    return lo, hi


@dataclass(frozen=True)
class RewardConfig:
    """Which terms, how they combine, and each term's parameters.

    total = Σ_k w_k r_k / Σ_k w_k over the terms that apply (r_k is not None); if any gated term is below its
    threshold, total ← gate_floor · total. Term names are checked where they are resolved
    (``reward.terms.resolve_terms``: by the recipe's root config at load time, and by ``SpeechScorer``).
    """

    # "default": the terms below; "original": the seed experiment's (exp(−WER) + hangup)/2 (weights and gates
    # are then fixed: wer_original + hangup_original, no gates), for comparing the two by one switch.
    preset: Literal["default", "original"] = "default"
    weights: dict[str, float] = field(default_factory=_default_weights)
    gates: dict[str, float] = field(default_factory=_default_gates)
    gate_floor: float = 0.2
    # wer: exp(-WER) on number-normalised, case- and punctuation-free text; "cer" for compounds (German).
    wer_variant: Literal["wer", "cer"] = "wer"
    # hangup: a run of one letter this long in the normalised transcript, or the same word (or phrase of up to
    # 4 words) repeated this many times in a row; either only if the text itself has no such run.
    hangup_char_run: int = 6
    hangup_word_repeats: int = 3
    # token_loop: a cycle of period 1..max_period speech codes repeated at least min_repeats times.
    loop_max_period: int = 8
    loop_min_repeats: int = 6
    loop_min_s: float = 0.4  # and at least this long (50 codes/s): a short constant pause is not a loop
    # speaking_rate: letters (no spaces/punctuation, numbers spelled out) per second of speech (the clip less its
    # leading, trailing and internal pauses, see pauses below, so padding cannot fake a slow rate). The band is the
    # 5th-95th percentile of the data's reference clips when there are at least rate_min_references of them,
    # else rate_band.
    # (9, 17) letters per second of the whole clip before; speech is ~12 % shorter than the clip (edges, pauses)
    rate_band: tuple[float, float] = (10.0, 20.0)
    rate_min_references: int = 5
    # exp(-(log(r/edge)/tol)^2) outside the band; 0.15 before, when the whole clip (with its silent edges) set the
    # rate: speech-only rates bring clean and 1.5x-fast speech closer (x1.27 instead of x1.45 apart at the top)
    rate_tolerance: float = 0.1
    # audio_repeat: spectral shapes repeating at a lag of min..max seconds, at any loudness above the clip's noise
    # floor: one run spanning repeat_min_s at one lag (a loop), or repeat_chain_copies copies of one sound of at
    # least repeat_chain_min_s each, at lags of their own (a word stuttered with gaps of up to ~1 s).
    repeat_min_lag_s: float = 0.03
    repeat_max_lag_s: float = 1.5
    repeat_similarity: float = 0.95
    repeat_min_s: float = 0.3
    repeat_chain_min_s: float = 0.15
    repeat_chain_copies: int = 3
    repeat_scale_s: float = 0.5  # score = exp(-s / scale), s = seconds inside repeating runs and their repeats
    # pauses: non-speech is every 10 ms frame more than pause_below_peak_db under the speech level (the 95th
    # percentile of frame power); inside the speech only stretches of >= pause_min_s count (not stop closures).
    # Allowed: leading / trailing non-speech, the longest internal pause, and the internal pauses' share of the
    # speech span; with >= rate_min_references reference clips, the 95th percentile of theirs instead.
    # score = exp(-excess / pause_scale_s), excess = seconds beyond the allowances, summed.
    pause_below_peak_db: float = 40.0
    pause_min_s: float = 0.15
    pause_leading_s: float = 0.5
    pause_trailing_s: float = 0.5
    pause_longest_s: float = 0.8
    pause_share: float = 0.3
    pause_scale_s: float = 0.5
    # audio_repeat, pauses and speaking_rate: a 10 ms frame quieter than this (dBFS) is never speech nor part of a
    # loop, however quiet the clip (16-bit quantisation noise is ~ -100 dBFS; a soft loop at -70 still counts).
    # Frames, not clips: transcriber.silence_dbfs is the clip-level (RMS) gate before Whisper.
    floor_dbfs: float = -80.0
    # speaker_similarity (and evaluate.py's SIM): "resemblyzer" (weights ship on PyPI: offline) or a transformers
    # WavLMForXVector speaker-verification model, a hub id ("microsoft/wavlm-base-plus-sv") or a folder
    speaker_model: str = "resemblyzer"
    speaker_device: str = "cpu"  # where a WavLM speaker model runs ("cuda:1"); resemblyzer runs on the CPU

    def __post_init__(self) -> None:
        if self.preset == "original":
            if self.weights != _default_weights() or self.gates != _default_gates():
                raise FieldError(
                    "preset",
                    self.preset,
                    "the original preset fixes weights and gates: remove [reward.weights] / "
                    "[reward.gates], or keep preset = 'default' and set them",
                )
            object.__setattr__(self, "weights", dict(ORIGINAL_WEIGHTS))
            object.__setattr__(self, "gates", {})
        for name, w in self.weights.items():
            if not (w >= 0 and math.isfinite(w)):
                raise FieldError(f"weights.{name}", w, "weights must be finite and >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise FieldError("weights", self.weights, "every weight is 0: give at least one term a weight > 0")
        for name, threshold in self.gates.items():
            if not 0 <= threshold <= 1:
                raise FieldError(f"gates.{name}", threshold, "a gate threshold must lie in [0, 1]")
        if not 0 <= self.gate_floor <= 1:
            raise FieldError("gate_floor", self.gate_floor, "must lie in [0, 1]")
        if self.hangup_char_run < 2:
            raise FieldError("hangup_char_run", self.hangup_char_run, "a run needs at least 2 letters")
        if self.hangup_word_repeats < 2:
            raise FieldError("hangup_word_repeats", self.hangup_word_repeats, "a repeat needs at least 2 words")
        try:
            check_rate_band(self.rate_band, "rate_band")
        except ValueError as e:
            raise FieldError("rate_band", self.rate_band, str(e).split(": ", 1)[1]) from None
        if self.rate_min_references < 2:
            raise FieldError("rate_min_references", self.rate_min_references, "percentiles need at least 2 clips")
        positive = {
            "rate_tolerance": self.rate_tolerance,
            "repeat_scale_s": self.repeat_scale_s,
            "repeat_min_s": self.repeat_min_s,
            "repeat_min_lag_s": self.repeat_min_lag_s,
            "repeat_chain_min_s": self.repeat_chain_min_s,
            "loop_min_s": self.loop_min_s,
            "pause_below_peak_db": self.pause_below_peak_db,
            "pause_min_s": self.pause_min_s,
            "pause_scale_s": self.pause_scale_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise FieldError(key, value, "must be > 0")
        if self.repeat_max_lag_s < self.repeat_min_lag_s:
            raise FieldError("repeat_max_lag_s", self.repeat_max_lag_s, "must be >= repeat_min_lag_s")
        if self.repeat_chain_copies < 3:
            raise FieldError("repeat_chain_copies", self.repeat_chain_copies, "a chain needs at least 3 copies")
        if not (self.floor_dbfs < 0 and math.isfinite(self.floor_dbfs)):
            raise FieldError("floor_dbfs", self.floor_dbfs, "must be a level below 0 dBFS (full scale), e.g. -80")
        for key in ("pause_leading_s", "pause_trailing_s", "pause_longest_s"):
            if not getattr(self, key) >= 0:
                raise FieldError(key, getattr(self, key), "must be >= 0 seconds")
        if not 0 <= self.pause_share < 1:
            raise FieldError("pause_share", self.pause_share, "must lie in [0, 1)")
        if not self.speaker_model.strip():
            raise FieldError("speaker_model", self.speaker_model, "use 'resemblyzer' or a WavLMForXVector id/folder")
        if self.loop_max_period < 1:
            raise FieldError("loop_max_period", self.loop_max_period, "must be >= 1")
        if self.loop_min_repeats < 2:
            raise FieldError("loop_min_repeats", self.loop_min_repeats, "a loop needs at least 2 periods")


@dataclass(frozen=True)
class TranscriberConfig:
    """How audio becomes text. ``model="whisper-base-pypi"`` is the offline Whisper base from PyPI."""

    backend: Literal["whisper", "http"] = "whisper"  # in process, or reward.service on another GPU
    model: str = "whisper-base-pypi"  # path to a CTranslate2 Whisper folder, a faster-whisper name, or the above
    device: str = "cpu"  # "cpu", "cuda" or "cuda:1"
    compute_type: str = "int8"
    cpu_threads: int = 0  # 0: CTranslate2's default
    # The language of data rows that name none (a row's own 'language' wins); never auto-detected.
    language: str | None = None
    beam_size: int = 5
    batch_size: int = 16  # clips per batched encoder/decoder call
    batched: bool = True  # cross-clip batched generate; False: sequential WhisperModel.transcribe
    # Encoder window of the batched path, seconds. Whisper was trained on 30 s windows; a shorter one pads short
    # clips less and transcribes them several times faster, at a small cost in agreement with the 30 s
    # transcripts (bench/whisper_window.py measures both: 10 s gave 4.31x and WER-term r 0.982 on the lab's
    # clips). Clips longer than the window keep the 30 s path.
    window_s: float = 30.0
    no_speech_threshold: float = 0.6
    logprob_threshold: float | None = None  # if set, silent needs no_speech > threshold AND avg_logprob below this
    # A clip quieter than this (RMS, dBFS) is silent without asking the model (the reward's `complete` term reads
    # the transcript's `silent` flag). Whole clips: the audio terms' per-frame floor is reward.floor_dbfs.
    silence_dbfs: float = -50.0
    url: str = "http://127.0.0.1:8765"
    timeout_s: float = 60.0
    retries: int = 2
    # Bounds of one reward.service /transcribe request (413 above them; the http client splits its batches to
    # fit): clips, seconds of audio, and body size (1800 s of base64 float32 is 154 MB).
    max_clips: int = 1024
    max_audio_s: float = 1800.0
    max_request_mb: float = 160.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FieldError("batch_size", self.batch_size, "must be >= 1")
        if self.beam_size < 1:
            raise FieldError("beam_size", self.beam_size, "must be >= 1")
        if not 1.0 <= self.window_s <= 30.0:
            raise FieldError("window_s", self.window_s, "must be within 1 and 30 seconds (Whisper's window)")
        if self.retries < 0:
            raise FieldError("retries", self.retries, "must be >= 0")
        if not self.timeout_s > 0:
            raise FieldError("timeout_s", self.timeout_s, "must be > 0 seconds")
        for key in ("max_clips", "max_audio_s", "max_request_mb"):
            if not getattr(self, key) > 0:
                raise FieldError(key, getattr(self, key), "must be > 0")
