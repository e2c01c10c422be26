"""Speaker embeddings for ``speaker_similarity`` and the evaluation's SIM: two encoders behind one name.

- ``"resemblyzer"`` (the default): resemblyzer's GE2E encoder, whose weights ship in its PyPI wheel, so it runs
  offline.
- any other name: a ``transformers`` ``WavLMForXVector`` speaker-verification model, a hub id (e.g.
  ``"microsoft/wavlm-base-plus-sv"``) or a folder written by ``save_pretrained``: the kind of model papers compute
  SIM with (Seed-TTS-eval: WavLM-large + an ECAPA-TDNN head, see ``evaluation.protocol``).

Both take 16 kHz float32 mono audio and give one embedding per clip; similarity is their cosine.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Protocol

import numpy as np

from tts.constants import SAMPLE_RATE

RESEMBLYZER = "resemblyzer"
WAVLM_SV = "microsoft/wavlm-base-plus-sv"  # the WavLM speaker-verification model transformers loads by id


class SpeakerEncoder(Protocol):
    def embed(self, wav: np.ndarray) -> np.ndarray:
        """[samples] float32 at 16 kHz → [D] embedding."""
        ...


class ResemblyzerEncoder:
    def __init__(self) -> None:
        try:
            from resemblyzer import VoiceEncoder
        except ImportError as e:
            raise ImportError(
                "[reward] speaker_model='resemblyzer' needs resemblyzer: `pip install --no-deps resemblyzer==0.1.4 "
                "&& pip install librosa webrtcvad-wheels`, or drop speaker_similarity from reward.weights"
            ) from e
        self.encoder = VoiceEncoder(device="cpu", verbose=False)

    def embed(self, wav: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav

        return self.encoder.embed_utterance(preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=SAMPLE_RATE))


class WavLMEncoder:
    """``WavLMForXVector.from_pretrained(model_id)`` with its feature extractor; the x-vector ``embeddings``."""

    def __init__(self, model_id: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoFeatureExtractor, WavLMForXVector

        where = f"[reward] speaker_model={model_id!r}"
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(model_id)
            model = WavLMForXVector.from_pretrained(model_id)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{where}: cannot load a WavLMForXVector and its feature extractor (a hub id such as {WAVLM_SV!r} or a "
                f"save_pretrained folder), or use 'resemblyzer' (offline): {e}"
            ) from None
        rate = getattr(self.extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{where}: its feature extractor expects {rate} Hz audio; the clips are {SAMPLE_RATE} Hz")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def embed(self, wav: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.extractor(
            np.asarray(wav, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.embeddings[0].float().cpu().numpy()


def encoder(model: str = RESEMBLYZER, device: str = "cpu") -> SpeakerEncoder:
    """The encoder ``model`` names, loaded once per process."""
    return _load(model, device)  # one cache key however the caller passes the arguments


@lru_cache(maxsize=2)
def _load(model: str, device: str) -> SpeakerEncoder:
    return ResemblyzerEncoder() if model == RESEMBLYZER else WavLMEncoder(model, device)


def embed_wav(wav: np.ndarray, model: str = RESEMBLYZER, device: str = "cpu") -> np.ndarray:
    return encoder(model, device).embed(wav)


def embed_file(path: str, model: str = RESEMBLYZER, device: str = "cpu") -> np.ndarray:
    """A reference voice's embedding: each reference is read and embedded once per process."""
    return _embed_file(path, model, device)


@lru_cache(maxsize=256)
def _embed_file(path: str, model: str, device: str) -> np.ndarray:
    from tts.audio import load_audio

    return embed_wav(load_audio(path), model, device)


def cosine(a: np.ndarray, b: np.ndarray, where: str = "speaker similarity") -> float:
    """cos(a, b); 0 if either is all zeros. No additive epsilon: an x-vector's norm is arbitrary (a random
    WavLM head gives ~1e-4), and eps would shrink its cosine."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    cos = float(np.dot(a64, b64) / norms) if norms > 0 else 0.0
    if not math.isfinite(cos):
        raise ValueError(f"[reward] {where}: an embedding is not finite")
    return min(1.0, max(-1.0, cos))


def similarity(ref_audio: str, wav: np.ndarray, model: str = RESEMBLYZER, device: str = "cpu") -> float:
    """cos(e_ref, e_gen) in [-1, 1] between the reference voice file and a clip (SIM as papers report it)."""
    return cosine(embed_file(ref_audio, model, device), embed_wav(wav, model, device), f"{model} on {ref_audio}")
