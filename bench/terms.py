"""Cost of all default reward terms per 64 rollouts, on real espeak-ng speech (no transcription: terms share it).

    .venv/bin/python bench/terms.py [--rollouts 64] [--repeats 5] [--variants clean,hangup]

The transcripts are the texts themselves, so the ``wer`` term costs what it costs on a perfect transcript; the
audio terms (repetition, pauses, speaking rate) read the audio and do not care. Prints the median over repeats
and the mean clip length; compare with one transcriber call on the same clips (``bench/transcribe.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.asr.transcript import Transcript
from reward.config import RewardConfig
from reward.hook import CodedCompletion, HookTimings, build_speech_rollouts
from reward.scorer import SpeechScorer
from tests import speech_fixtures as sf


class _Texts:
    """A transcriber that hears exactly the text: the terms are timed without any ASR."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def transcribe(self, audios: list, language: object) -> list[Transcript]:
        return [Transcript(text=t) for t in self.texts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="clean,hangup", help="speech_fixtures variants to cycle through")
    args = p.parse_args()

    variants = tuple(args.variants.split(","))
    corpus = sf.build_corpus(Path(tempfile.mkdtemp(prefix="bench-terms-")), variants=variants)
    clips = [corpus[i % len(corpus)] for i in range(args.rollouts)]
    rows = [{"text": c.text, "language": c.language} for c in clips]
    seconds = sum(len(c.audio) for c in clips) / 16000
    config = RewardConfig()
    times = []
    for _ in range(args.repeats + 1):  # the first pass warms up (mel filters, imports)
        # fresh rollouts each pass: measurements are computed once per rollout and kept with it
        speech = build_speech_rollouts(
            rows,
            [c.audio for c in clips],
            [CodedCompletion(None, None, True)] * len(clips),
            _Texts([c.text for c in clips]),
        )
        timings = HookTimings()
        SpeechScorer(lambda _batch, _t, speech=speech: speech, config).judge(None, timings)  # the terms alone
        times.append(timings.reward_s)
    median = statistics.median(times[1:])
    print(
        f"{len(clips)} rollouts ({', '.join(variants)}; {seconds / len(clips):.2f} s mean): all default reward terms"
        f" {median * 1000:.0f} ms (median of {args.repeats}; {median / seconds * 1000:.1f} ms per second of audio)"
    )


if __name__ == "__main__":
    main()
