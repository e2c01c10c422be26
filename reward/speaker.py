"""Speaker embeddings for ``speaker_similarity`` (resemblyzer ships its encoder weights on PyPI)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tts.constants import SAMPLE_RATE


@lru_cache(maxsize=1)
def _encoder():
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as e:
        raise ImportError(
            "[reward] term 'speaker_similarity' needs resemblyzer: `pip install --no-deps resemblyzer==0.1.4 && "
            "pip install librosa webrtcvad-wheels`, or drop it from reward.weights"
        ) from e
    return VoiceEncoder(device="cpu", verbose=False)


def embed_wav(wav: np.ndarray) -> np.ndarray:
    from resemblyzer import preprocess_wav

    return _encoder().embed_utterance(preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=SAMPLE_RATE))


@lru_cache(maxsize=256)
def embed_file(path: str) -> np.ndarray:
    from tts.audio import load_audio

    return embed_wav(load_audio(path))
