"""Real speech for the reward tests: espeak-ng sentences (German, English) at 16 kHz and their corruptions.

Every clip is deterministic: espeak-ng is deterministic, corruptions use fixed positions and a seeded noise.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tts.constants import SAMPLE_RATE

SENTENCES: dict[str, tuple[str, ...]] = {
    "de": (
        "Der Zug nach München fährt um 8 Uhr ab.",
        "Heute scheint die Sonne über dem alten Hafen.",
        "Meine Schwester wohnt seit zwei Jahren in Berlin.",
        "Bitte schließen Sie das Fenster, es wird kalt.",
        "Der kleine Hund spielt gern im großen Garten.",
        "Wir treffen uns morgen früh vor dem Rathaus.",
        "Das Konzert beginnt erst nach der Pause.",
        "Im Winter fällt hier oft sehr viel Schnee.",
        "Er hat 3 Bücher in der Bibliothek ausgeliehen.",
        "Die Kinder lachen und singen auf der Straße.",
    ),
    "en": (
        "The train to London leaves at 8 in the morning.",
        "The sun is shining over the old harbour today.",
        "My sister has lived in Boston for two years.",
        "Please close the window, it is getting cold.",
        "The little dog likes to play in the big garden.",
        "We will meet tomorrow in front of the town hall.",
        "The concert starts only after the break.",
        "In winter there is often a lot of snow here.",
        "He borrowed 3 books from the public library.",
        "The children are laughing and singing in the street.",
    ),
}
VOICES = {"de": "de", "en": "en-us"}
VARIANTS = ("clean", "hangup", "cut", "fast", "silence", "noise")


@dataclass(frozen=True)
class Clip:
    language: str
    index: int
    text: str
    variant: str
    audio: np.ndarray  # [samples] float32 at 16 kHz


def require_speech_tools() -> None:
    import pytest

    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run `make system-deps`")


def synthesize(text: str, language: str, directory: Path, name: str) -> np.ndarray:
    """espeak-ng → sox → 16 kHz mono int16 WAV; returns float32 samples in [-1, 1]."""
    raw, out = directory / f"{name}.raw.wav", directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", VOICES[language], "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    audio, sr = sf.read(out, dtype="float32")
    assert sr == SAMPLE_RATE
    return audio


def tempo(audio: np.ndarray, factor: float, directory: Path, name: str) -> np.ndarray:
    """sox ``tempo``: faster speech at the same pitch."""
    src, out = directory / f"{name}.in.wav", directory / f"{name}.tempo.wav"
    sf.write(src, audio, SAMPLE_RATE, subtype="PCM_16")
    subprocess.run(["sox", str(src), str(out), "tempo", str(factor)], check=True)
    return sf.read(out, dtype="float32")[0]


def hangup(audio: np.ndarray, segment_s: float = 0.1, repeats: int = 20) -> np.ndarray:
    """A stuck decoder: the 100 ms at the loudest point of the middle third, played ``repeats`` times."""
    n = int(segment_s * SAMPLE_RATE)
    third = len(audio) // 3
    energy = np.convolve(audio[third : 2 * third] ** 2, np.ones(n), mode="valid")
    start = third + int(np.argmax(energy))
    return np.concatenate([audio[:start], np.tile(audio[start : start + n], repeats), audio[start + n :]])


def corrupt(audio: np.ndarray, variant: str, directory: Path, name: str) -> np.ndarray:
    if variant == "clean":
        return audio
    if variant == "hangup":
        return hangup(audio)
    if variant == "cut":
        return audio[: int(len(audio) * 0.6)]
    if variant == "fast":
        return tempo(audio, 1.5, directory, name)
    if variant == "silence":
        return np.zeros_like(audio)
    if variant == "noise":
        rng = np.random.default_rng(len(audio))
        return (0.1 * rng.standard_normal(len(audio))).astype(np.float32)
    raise ValueError(f"unknown variant {variant!r}")


def build_corpus(directory: Path | None = None, variants: tuple[str, ...] = VARIANTS) -> list[Clip]:
    """All sentences × variants, ordered by language, sentence, variant."""
    directory = directory or Path(tempfile.mkdtemp(prefix="llasa-speech-"))
    clips: list[Clip] = []
    for language, sentences in SENTENCES.items():
        for i, text in enumerate(sentences):
            clean = synthesize(text, language, directory, f"{language}{i}")
            for variant in variants:
                audio = corrupt(clean, variant, directory, f"{language}{i}-{variant}").astype(np.float32)
                clips.append(Clip(language, i, text, variant, audio))
    return clips
