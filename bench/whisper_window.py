"""Whisper's encoder window (``transcriber.window_s``): how much faster a shorter one is, and how much the
transcripts and the WER reward change, against the 30 s window Whisper was trained on, in one run.

    .venv/bin/python bench/whisper_window.py [--windows 30 10 8 6] [--samples runs/exploit/eval/samples.jsonl]

Clips: the lab model's own speech when ``--samples`` names an ``evaluate.py`` samples.jsonl (its WAVs and texts;
what the lab's reward transcribes), else the tests' espeak-ng corpus. Every window transcribes the same clips
(batched, beam 1, int8, as ``lab.toml``); prints per window the time and its ratio to 30 s, the share of
transcripts identical to the 30 s ones after the reward's normalisation, the mean WER and mean exp(-WER) (the
reward's WER term), the mean per-clip |change| of exp(-WER) against 30 s and its correlation with the 30 s term
(what GRPO's group ranking reads).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.asr.whisper import WhisperTranscriber
from reward.config import TranscriberConfig
from reward.normalize import error_rate, normalize


def load_clips(samples: Path | None, limit: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    if samples is None:
        from tests import speech_fixtures as sf

        corpus = sf.build_corpus(Path(tempfile.mkdtemp(prefix="bench-window-")), variants=("clean",))
        corpus = corpus[:limit]
        return [c.audio for c in corpus], [c.text for c in corpus], [c.language for c in corpus]
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()][:limit]
    audios = [soundfile.read(samples.parent / r["audio"], dtype="float32")[0] for r in rows]
    return audios, [r["text"] for r in rows], [r["language"] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=float, nargs="+", default=[30.0, 10.0, 8.0, 6.0])
    p.add_argument("--samples", type=Path, default=None, help="an evaluate.py samples.jsonl (default: espeak clips)")
    p.add_argument("--limit", type=int, default=160, help="at most this many clips")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    audios, texts, langs = load_clips(args.samples, args.limit)
    longest = max(len(a) for a in audios) / 16000
    print(f"{len(audios)} clips, {sum(len(a) for a in audios) / 16000:.0f} s of audio, longest {longest:.1f} s")
    base_cfg = TranscriberConfig(language="en", beam_size=1, cpu_threads=args.threads, batch_size=16)
    model = WhisperTranscriber(base_cfg).model
    windows = sorted(set(args.windows) | {30.0}, reverse=True)
    results: dict[float, tuple[list[str], float]] = {}
    for w in windows:
        tr = WhisperTranscriber(replace(base_cfg, window_s=w), model=model)
        tr.transcribe(audios[:2], langs[:2])  # warm-up
        start = time.perf_counter()
        out = tr.transcribe(audios, langs)
        results[w] = ([t.text for t in out], time.perf_counter() - start)

    ref_texts, ref_time = results[30.0]
    ref_term = [math.exp(-error_rate(t, h, g)) for t, h, g in zip(texts, ref_texts, langs, strict=True)]
    print(
        f"{'window':>7} {'time':>8} {'speed-up':>8} {'same text':>9} {'WER':>6} {'exp(-WER)':>9} {'|Δ term|':>8} "
        f"{'r(term)':>7}"
    )
    for w in windows:
        hyps, dt = results[w]
        wers = [error_rate(t, h, g) for t, h, g in zip(texts, hyps, langs, strict=True)]
        terms = [math.exp(-x) for x in wers]
        same = np.mean([normalize(a, g) == normalize(b, g) for a, b, g in zip(hyps, ref_texts, langs, strict=True)])
        delta = float(np.mean([abs(a - b) for a, b in zip(terms, ref_term, strict=True)]))
        r = float(np.corrcoef(terms, ref_term)[0, 1])
        print(
            f"{w:6.1f}s {dt:7.1f}s {ref_time / dt:7.2f}x {same:9.1%} {np.mean(wers):6.3f} {np.mean(terms):9.3f} "
            f"{delta:8.3f} {r:7.3f}"
        )


if __name__ == "__main__":
    main()
