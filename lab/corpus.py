"""Corpus for the speaking lab: template sentences spoken by espeak-ng voices, deterministic from a seed.

Each sentence is drawn from templates and word lists (statements, questions, numbers, times), spoken by one
or more *speakers* — espeak-ng voice variants with their own pitch and speed — and stored as 16 kHz mono WAV
with leading / trailing silence trimmed to ``KEEP_SILENCE_S``. ``manifest.jsonl`` lists every utterance::

    {"id": "u00012", "text": "...", "speaker": "f1", "split": "train", "lm": true, "audio": "wav/u00012.wav"}

``split`` is ``train`` or ``heldout`` (held-out sentences are never used to train the codec or the LM);
``lm`` marks the sentences the LM is fine-tuned on, each spoken by two speakers: ``PLAIN_SPEAKER``, the voice of
plain (reference-free) prompts, and one other, so that cloning has the same text in two voices.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tts.constants import SAMPLE_RATE

KEEP_SILENCE_S = 0.06
SILENCE_DBFS = -45.0


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str  # espeak-ng voice with variant
    pitch: int  # espeak-ng -p (0-99)
    speed: int  # espeak-ng -s (words per minute)


SPEAKERS = (
    Speaker("m1", "en-us+m3", 40, 160),
    Speaker("f1", "en-us+f3", 60, 165),
    Speaker("m2", "en-us+m7", 25, 150),
    Speaker("f2", "en-us+f4", 75, 175),
)
SPEAKER_BY_NAME = {s.name: s for s in SPEAKERS}
# Plain prompts name no voice, so their target must not depend on one: with a sentence's two voices drawn at
# random, the LM had to guess from the text which voice's onset code to start with, and a wrong guess led into
# another memorised sentence of that voice (bench/lab_speak.py). Every LM sentence has this voice.
PLAIN_SPEAKER = "m1"

NAMES = (
    "Anna Ben Clara David Emma Frank Grace Henry Iris Jack Kate Leo Mia Noah Olivia Paul Rosa Sam Tina Victor"
).split()
NOUNS = (
    "book car dog cat house garden letter window table river bridge train phone coat lamp chair song picture "
    "bottle basket ticket flower bicycle kitchen blanket candle door key map boat cup box bag hat"
).split()
ADJECTIVES = "red old small big green quiet new warm cold bright dark heavy empty clean yellow blue".split()
PLACES = (
    "the station|the market|the library|the park|the office|the beach|the school|the museum|the hospital|"
    "the airport|the old town|the village|the harbour|the forest|the city centre"
).split("|")
VERBS = "found bought painted lost carried opened cleaned sold fixed moved borrowed wrapped".split()
TIMES = "in the morning|at noon|in the evening|at night|on Monday|on Friday|last week|yesterday|today".split("|")
WEATHER = "sunny|rainy|windy|cold|warm|cloudy|foggy".split("|")

TEMPLATES = (
    "{name} {verb} the {adj} {noun}.",
    "{name} {verb} a {adj} {noun} {time}.",
    "The {noun} is next to the {adj} {noun2}.",
    "Where did {name} put the {noun}?",
    "Can you bring the {adj} {noun} to {place}?",
    "We met {name} at {place} {time}.",
    "The train to {place} leaves at {hour} o'clock.",
    "{name} has {num} {noun}s and {num2} {noun2}s.",
    "It was {weather} {time}, so {name} stayed at home.",
    "Please tell {name} that the {noun} is in the kitchen.",
    "Is the {adj} {noun} still at {place}?",
    "My room number is {big}.",
    "{name} and {name2} walked to {place} {time}.",
    "The {adj} {noun} costs {num} dollars.",
    "Why is the {noun} so {adj} {time}?",
    "After lunch, {name} {verb} the {noun} and went to {place}.",
    "There are {num} {adj} {noun}s on the table.",
    "{name} said that the weather would be {weather} {time}.",
)


def _fill(template: str, rng: random.Random) -> str:
    n1, n2 = rng.sample(NAMES, 2)
    o1, o2 = rng.sample(NOUNS, 2)
    slots = {
        "name": n1,
        "name2": n2,
        "noun": o1,
        "noun2": o2,
        "adj": rng.choice(ADJECTIVES),
        "place": rng.choice(PLACES),
        "verb": rng.choice(VERBS),
        "time": rng.choice(TIMES),
        "weather": rng.choice(WEATHER),
        "hour": str(rng.randint(1, 12)),
        "num": str(rng.randint(2, 12)),
        "num2": str(rng.randint(2, 20)),
        "big": str(rng.randint(100, 999)),
    }
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def sentences(count: int, seed: int) -> list[str]:
    """``count`` distinct sentences, deterministic given ``seed``."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count:
        attempts += 1
        if attempts > 50 * count:
            raise ValueError(f"[lab] cannot draw {count} distinct sentences from the templates (got {len(seen)})")
        seen.setdefault(_fill(rng.choice(TEMPLATES), rng), None)
    return list(seen)


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    speaker: str
    split: str  # "train" | "heldout"
    lm: bool  # in the LM's fine-tuning set
    audio: str  # relative to the corpus folder


def plan(num_sentences: int, num_heldout: int, num_lm: int, seed: int) -> list[Utterance]:
    """Which sentence is spoken by whom: LM sentences by ``PLAIN_SPEAKER`` and one other, the others by one."""
    if num_heldout + num_lm > num_sentences:
        raise ValueError(f"[lab] num_heldout={num_heldout} + num_lm={num_lm} exceed num_sentences={num_sentences}")
    rng = random.Random(seed + 1)
    texts = sentences(num_sentences, seed)
    names = [s.name for s in SPEAKERS]
    others = [n for n in names if n != PLAIN_SPEAKER]
    out: list[Utterance] = []
    for i, text in enumerate(texts):
        split = "heldout" if i < num_heldout else "train"
        lm = num_heldout <= i < num_heldout + num_lm
        speakers = [PLAIN_SPEAKER, rng.choice(others)] if lm else [rng.choice(names)]
        for spk in speakers:
            uid = f"u{len(out):05d}"
            out.append(Utterance(uid, text, spk, split, lm, f"wav/{uid}.wav"))
    return out


def speak(text: str, speaker: Speaker) -> np.ndarray:
    """espeak-ng -> float32 mono at 16 kHz, silence at both ends trimmed to ``KEEP_SILENCE_S``."""
    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("[lab] espeak-ng is not installed (apt-get install espeak-ng)")
    cmd = ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.speed), "--stdout", text]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    data, sr = sf.read(io.BytesIO(raw), dtype="float32")
    wav = soxr.resample(data, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return trim_silence(wav)


def trim_silence(wav: np.ndarray, frame: int = 160) -> np.ndarray:
    n = wav.size // frame
    if n == 0:
        return wav
    rms = np.sqrt(np.mean(wav[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > SILENCE_DBFS)
    if loud.size == 0:
        return wav
    keep = int(KEEP_SILENCE_S * SAMPLE_RATE)
    start = max(0, loud[0] * frame - keep)
    end = min(wav.size, (loud[-1] + 1) * frame + keep)
    return wav[start:end]


def build_corpus(
    out_dir: Path, *, num_sentences: int, num_heldout: int, num_lm: int, seed: int, workers: int = 2
) -> list[Utterance]:
    """Synthesize every planned utterance into ``out_dir`` and write ``manifest.jsonl`` last (it marks done)."""
    from tqdm import tqdm

    from atomicfs import write_text
    from tts.audio import save_audio

    utts = plan(num_sentences, num_heldout, num_lm, seed)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)

    def one(u: Utterance) -> None:
        save_audio(out_dir / u.audio, speak(u.text, SPEAKER_BY_NAME[u.speaker]))

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(one, utts), total=len(utts), desc="[lab] corpus", unit="utt"):
            pass
    write_text(out_dir / "manifest.jsonl", "".join(json.dumps(asdict(u)) + "\n" for u in utts))
    return utts


def read_manifest(corpus_dir: Path) -> list[Utterance]:
    path = corpus_dir / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"[lab] {path}: no corpus manifest (run the corpus stage first)")
    return [Utterance(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
