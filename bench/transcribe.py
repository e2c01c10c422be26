"""Transcription throughput and reward-term cost on real espeak-ng speech with the real Whisper base.

    .venv/bin/python bench/transcribe.py [--clips 16] [--device cpu] [--compute-type int8] [--threads 0]

Prints clips/s for sequential ``WhisperModel.transcribe`` vs the cross-clip batched generate on the same clips
in one run, and the time of all default reward terms per 64 rollouts (no transcription inside: they share it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.asr.whisper import WhisperTranscriber
from reward.config import RewardConfig, TranscriberConfig
from reward.hook import HookTimings, Recordings, SpeechHook
from reward.scorer import SpeechScorer
from tests import speech_fixtures as sf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--beam-size", type=int, default=5)
    args = p.parse_args()

    corpus = sf.build_corpus(Path(tempfile.mkdtemp(prefix="bench-speech-")), variants=("clean",))
    clips = [corpus[i % len(corpus)] for i in range(args.clips)]
    cfg = TranscriberConfig(
        device=args.device, compute_type=args.compute_type, cpu_threads=args.threads, beam_size=args.beam_size
    )
    batched = WhisperTranscriber(replace(cfg, batch_size=args.clips))
    sequential = WhisperTranscriber(replace(cfg, batched=False), model=batched.model)
    audios, langs = [c.audio for c in clips], [c.language for c in clips]
    seconds = sum(len(a) for a in audios) / 16000
    batched.transcribe(audios[:1], langs[:1])  # warm-up
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, beam {cfg.beam_size}, {cfg.device} {cfg.compute_type}")
    results = {}
    for name, tr in (("sequential", sequential), ("batched", batched)):
        start = time.perf_counter()
        results[name] = tr.transcribe(audios, langs)
        dt = time.perf_counter() - start
        print(f"  {name:10s} {dt:6.2f} s  {len(clips) / dt:5.2f} clips/s")
    same = sum(a.text == b.text for a, b in zip(results["sequential"], results["batched"], strict=True))
    print(f"  identical transcripts: {same}/{len(clips)}")

    rows = [{"text": c.text, "language": c.language, "finished": True} for c in clips]
    reps = -(-64 // len(clips))
    recordings = Recordings((rows * reps)[:64], (audios * reps)[:64])
    scorer = SpeechScorer(SpeechHook(None, None, _Replay((results["batched"] * reps)[:64])), RewardConfig())
    scorer.judge(Recordings(recordings.rows[:2], recordings.audios[:2]))  # warm-up (feature extractor)
    timings = HookTimings()
    scorer.judge(recordings, timings)
    print(f"all default reward terms, 64 rollouts: {timings.reward_s * 1000:.0f} ms")


class _Replay:
    """Hands back transcripts already made, so the term timing excludes transcription."""

    def __init__(self, transcripts: list) -> None:
        self.transcripts = transcripts

    def transcribe(self, audios: list, language: object) -> list:
        return self.transcripts[: len(audios)]


if __name__ == "__main__":
    main()
