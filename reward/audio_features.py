"""Audio-level measurements that need no codes and no ASR: loudness and self-repetition of the spectrogram."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from reward.config import SILENCE_DBFS
from tts.constants import SAMPLE_RATE

HOP_S = 0.01  # log-mel hop (160 samples)


@lru_cache(maxsize=1)
def _extractor():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's 80-band log-mel spectrogram (its mel filters and scaling), [80, frames] at 100 frames/s.

    A direct rfft over centred 25 ms Hann frames: several times faster than the extractor's generic STFT.
    """
    n_fft, hop = 400, 160
    wav = np.pad(
        np.asarray(audio, dtype=np.float32).reshape(-1), n_fft // 2, mode="reflect" if len(audio) > 200 else "constant"
    )
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1].astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [T, 201]
    log_spec = np.log10(np.clip(_extractor().mel_filters @ power.T, 1e-10, None))  # [80, T]
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def repeated_seconds(
    audio: np.ndarray,
    min_lag_s: float,
    max_lag_s: float,
    similarity: float,
    min_run_s: float,
    silence_dbfs: float = SILENCE_DBFS,
) -> float:
    """Seconds of voiced audio that repeat themselves at a fixed lag for at least ``min_run_s``.

    For each lag L (frames) the spectral shapes x_t (log-mel frame minus its mean) are compared by cosine,
    s_L(t) = <x_t, x_{t+L}> / (|x_t| |x_{t+L}|). A hang-up (a segment played again and again) gives s_L ≈ 1 over a
    run much longer than any steady vowel; silent frames (below ``silence_dbfs`` or 30 dB under the loudest)
    never count. The result is
    the number of frames inside such runs (over all lags), in seconds.
    """
    mel = log_mel(audio)  # [80, T]
    n = mel.shape[1]
    lo, hi = max(1, round(min_lag_s / HOP_S)), round(max_lag_s / HOP_S)
    min_run = max(1, round(min_run_s / HOP_S))
    if n < lo + min_run:
        return 0.0
    level = mel.mean(axis=0)
    hop = 160
    frames = np.asarray(audio, dtype=np.float64)[: (len(audio) // hop) * hop].reshape(-1, hop)
    frame_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    frame_db = np.pad(frame_db, (0, max(0, n - len(frame_db))), constant_values=-120.0)[:n]
    # voiced: within 30 dB of the loudest frame (log10 power / 4 units: 0.75 = 30 dB) and above silence_dbfs
    voiced = (level > level.max() - 0.75) & (frame_db > silence_dbfs)
    x = mel - level  # spectral shape
    x = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-8)
    gram = x.T @ x  # [T, T] cosine similarities; diagonal `lag` holds s_lag(t)
    covered = np.zeros(n, dtype=bool)
    for lag in range(lo, min(hi, n - min_run) + 1):
        sim = np.diagonal(gram, lag)
        hit = (sim > similarity) & voiced[:-lag] & voiced[lag:]
        # runs of consecutive hits of length >= min_run
        padded = np.concatenate([[0], hit.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            if end - start >= min_run:
                covered[start : end + lag] = True
    return float(covered.sum() * HOP_S)
