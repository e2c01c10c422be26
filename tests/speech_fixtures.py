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
    # -R: sox dithers down to 16 bits with a fixed seed, so every build of the corpus is the same samples
    subprocess.run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    audio, sr = sf.read(out, dtype="float32")
    assert sr == SAMPLE_RATE
    return audio


def tempo(audio: np.ndarray, factor: float, directory: Path, name: str) -> np.ndarray:
    """sox ``tempo``: faster speech at the same pitch."""
    src, out = directory / f"{name}.in.wav", directory / f"{name}.tempo.wav"
    sf.write(src, audio, SAMPLE_RATE, subtype="PCM_16")
    subprocess.run(["sox", "-R", str(src), str(out), "tempo", str(factor)], check=True)
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


# A second corpus for the second round of reward integrity (issue 14): other sentences, and the corruptions a
# listener hears but Whisper often does not. Commas, "Hmm", fricatives and long compounds are there on purpose:
# natural pauses, a sustained nasal, noise-like sounds and long steady stretches that no detector may flag.
SENTENCES_2: dict[str, tuple[str, ...]] = {
    "de": (
        "Hmm, das muss ich mir noch einmal überlegen.",
        "Am Wochenende fahren wir mit dem Fahrrad an den See.",
        "Die Donaudampfschifffahrtsgesellschaft hat neue Schiffe gekauft.",
        "Sieben Schwäne schwimmen still über das Wasser.",
        "Wenn es regnet, bleiben wir lieber zu Hause.",
        "Der Bäcker öffnet seinen Laden schon um 6 Uhr.",
        "Kannst du mir bitte das Salz und den Pfeffer geben?",
        "Unser Lehrer erzählt spannende Geschichten aus Afrika.",
        "Frische Fische schmecken am besten mit Zitrone.",
        "Nach dem langen Spaziergang waren alle sehr müde.",
    ),
    "en": (
        "Hmm, I need to think about that for a moment.",
        "If the weather is nice, we will walk to the beach.",
        "She sells fresh fish at the market every Saturday.",
        "The quick brown fox jumps over the lazy dog.",
        "Our neighbours painted their house a bright yellow.",
        "Seven swans were swimming slowly across the lake.",
        "Could you please pass me the salt and the pepper?",
        "The museum opens at 10 and closes at 6.",
        "Unfortunately, the last bus had already left.",
        "Whispering softly, the children crept up the stairs.",
    ),
}
LOOP_SEGMENTS_S = (0.04, 0.1, 0.2)
LOOP_POSITIONS = ("start", "middle", "end", "soft")
LOOP_REPEATS = (10, 25, 50)
PADDINGS_S = (1.0, 3.0)
PAD_POSITIONS = ("leading", "trailing", "internal")
HOP = 160  # 10 ms analysis frames of the fixtures (their own, not the detector's)


def frame_db(audio: np.ndarray) -> np.ndarray:
    """Power of each 10 ms frame in dBFS."""
    frames = audio[: len(audio) // HOP * HOP].reshape(-1, HOP).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) sample of the frames within 40 dB of the loudest frame."""
    db = frame_db(audio)
    on = np.flatnonzero(db > db.max() - 40)
    return int(on[0]) * HOP, int(on[-1] + 1) * HOP


def loop(audio: np.ndarray, segment_s: float, position: str, repeats: int) -> np.ndarray:
    """``repeats`` copies of one segment (a stuck decoder) at the speech onset, its middle, its last segment, or
    at the quietest non-silent stretch of the middle 80 % ("soft": a fricative, a word's tail, a breath)."""
    n = round(segment_s * SAMPLE_RATE)
    first, last = speech_span(audio)
    if position == "start":
        start = first
    elif position == "end":
        start = last - n
    elif position == "middle":
        start = (first + last - n) // 2
    elif position == "soft":
        lo, hi = first + (last - first) // 10, last - (last - first) // 10 - n
        power = np.convolve(audio.astype(np.float64) ** 2, np.ones(n) / n, mode="valid")[lo:hi:HOP]
        floor = 10 ** (-70 / 10)  # not digital silence: looping that would be silence padding
        candidates = np.flatnonzero(power > floor)
        start = lo + HOP * int(candidates[np.argmin(power[candidates])])
    else:
        raise ValueError(f"unknown loop position {position!r}")
    seg = audio[start : start + n]
    return np.concatenate([audio[:start], np.tile(seg, repeats), audio[start + n :]])


def pad(audio: np.ndarray, seconds: float, position: str, noise_dbfs: float | None) -> np.ndarray:
    """Silence padding: digital zeros, or a faint white noise floor at ``noise_dbfs`` (seeded), before the speech,
    after it, or inside it at the quietest 10 ms frame of its middle half (a word boundary)."""
    n = int(seconds * SAMPLE_RATE)
    if noise_dbfs is None:
        gap = np.zeros(n, np.float32)
    else:
        gap = (10 ** (noise_dbfs / 20) * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    if position == "leading":
        return np.concatenate([gap, audio])
    if position == "trailing":
        return np.concatenate([audio, gap])
    if position == "internal":
        first, last = speech_span(audio)
        lo, hi = (3 * first + last) // 4 // HOP, (first + 3 * last) // 4 // HOP
        cut = HOP * (lo + int(np.argmin(frame_db(audio)[lo:hi])))
        return np.concatenate([audio[:cut], gap, audio[cut:]])
    raise ValueError(f"unknown padding position {position!r}")


def stutter(word_audio: np.ndarray, audio: np.ndarray, gaps_s: tuple[float, ...]) -> np.ndarray:
    """The first word said once per gap, each time followed by that gap, then the whole sentence:
    "If — if — if — if the weather …"."""
    first, last = speech_span(word_audio)
    word = word_audio[first:last]
    parts = [np.concatenate([word, np.zeros(int(g * SAMPLE_RATE), np.float32)]) for g in gaps_s]
    start = speech_span(audio)[0]
    return np.concatenate([audio[:start], *parts, audio[start:]])


@dataclass(frozen=True)
class Clip2:
    language: str
    index: int
    text: str
    variant: str  # "clean", "loop", "pad" or "stutter"
    detail: str  # e.g. "loop 100 ms x25 soft"
    audio: np.ndarray  # [samples] float32 at 16 kHz


def build_corpus_2(directory: Path | None = None) -> list[Clip2]:
    """Per sentence: the clean clip, two loops, one padding and one stutter. Loop length, position and repeat
    count, padding length, place and floor, and the stutter's gaps rotate over the sentences, so each language
    has every loop length at every position, and every padding at every place."""
    directory = directory or Path(tempfile.mkdtemp(prefix="llasa-speech2-"))
    clips: list[Clip2] = []
    for language, sentences in SENTENCES_2.items():
        for i, text in enumerate(sentences):
            clean = synthesize(text, language, directory, f"{language}{i}")
            clips.append(Clip2(language, i, text, "clean", "clean", clean))
            for k in (2 * i, 2 * i + 1):
                seg, where = LOOP_SEGMENTS_S[k % 3], LOOP_POSITIONS[(k // 3) % 4]
                reps = LOOP_REPEATS[(k // 2) % 3]
                detail = f"loop {seg * 1000:.0f} ms x{reps} {where}"
                clips.append(Clip2(language, i, text, "loop", detail, loop(clean, seg, where, reps)))
            seconds, where = PADDINGS_S[i % 2], PAD_POSITIONS[i % 3]
            floor = None if i % 4 < 2 else -60.0
            detail = f"pad {seconds:.0f} s {where} {'zeros' if floor is None else 'noise -60 dBFS'}"
            clips.append(Clip2(language, i, text, "pad", detail, pad(clean, seconds, where, floor)))
            word = text.split()[0].strip(",.?!")
            gaps = ((0.1, 0.1, 0.1), (0.15, 0.3, 0.2), (0.4, 0.25, 0.5))[i % 3]
            spoken = synthesize(word, language, directory, f"{language}{i}-word")
            detail = f"stutter {word!r} x{len(gaps) + 1} gaps {gaps}"
            clips.append(Clip2(language, i, text, "stutter", detail, stutter(spoken, clean, gaps)))
    return clips
