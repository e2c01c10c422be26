"""The one audio reader and writer: soundfile for I/O, soxr to resample, float32 mono in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atomicfs import atomic_path
from tts.constants import SAMPLE_RATE


def load_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate`` (channels averaged, resampled with soxr "HQ")."""
    import soundfile as sf
    import soxr

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/OSError depending on the cause
        raise ValueError(f"[tts] cannot read audio file {path}: {e}") from e
    if not np.isfinite(data).all():  # would score as "silent" (with NumPy warnings), or poison a reference
        bad = int(data.size - np.isfinite(data).sum())
        raise ValueError(f"[tts] audio file {path}: {bad} of {data.size} samples are NaN or inf: refusing it")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate and wav.size:
        wav = soxr.resample(wav, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(wav, dtype=np.float32)


def save_audio(path: str | os.PathLike[str], wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write a mono waveform as 16-bit PCM WAV (or the format the suffix names), atomically."""
    import soundfile as sf

    out = Path(path)
    a = np.asarray(wav, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"[tts] save_audio {out}: expected a mono waveform [n], got shape {a.shape}")
    wav_format = out.suffix.lower() in ("", ".wav")
    with atomic_path(out) as tmp:
        sf.write(
            str(tmp),
            np.clip(a, -1.0, 1.0),
            sample_rate,
            subtype="PCM_16" if wav_format else None,
            format="WAV" if wav_format else None,
        )
    return out
