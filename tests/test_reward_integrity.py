"""Reward integrity, second round, on real audio: what a listener hears and Whisper often does not.

Ten German and ten English sentences that the first real-audio test does not use (``SENTENCES_2``), spoken by
espeak-ng and transcribed by the real Whisper base; per sentence two loops (40/100/200 ms, 10-50 times, at the
speech onset, its middle, its end, or its quietest non-silent stretch), one silence padding (1 or 3 s, leading,
trailing or inside; digital zeros or a -60 dBFS noise floor) and one stutter of the first word (four times, gaps
of equal or varying length). Every corrupted clip must rank strictly below its clean clip, the term responsible
must drop, and no term may fire on the clean clips. The corpus is transcribed once, batched, for the module.
"""

from collections import defaultdict
from itertools import product

import numpy as np
import pytest

from reward.asr.whisper import WhisperTranscriber
from reward.config import RewardConfig, TranscriberConfig
from reward.scorer import score_audio
from tests import speech_fixtures as sf

# 100 clips through Whisper base with beam 5 (the training default): minutes on 2 quiet cores, but a shared
# machine (load 15 on 2 cores) took 16 min, past the suite's default 900 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
CONFIG = RewardConfig()
# Measured from the audio alone, so they may never fire on clean speech. `hangup` reads Whisper's transcript,
# which on espeak's German now and then repeats a word of a clean clip (1 of 20 clean clips in one of two runs):
# the text rules are unchanged, their firing on clean clips is reported, not asserted.
AUDIO_TERMS = ("audio_repeat", "pauses", "speaking_rate")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    sf.require_speech_tools()
    clips = sf.build_corpus_2(tmp_path_factory.mktemp("speech2"))
    transcriber = WhisperTranscriber(TranscriberConfig(cpu_threads=2))
    rows = [{"text": c.text, "language": c.language} for c in clips]
    results = score_audio(rows, [c.audio for c in clips], transcriber, CONFIG)
    table = defaultdict(list)
    for c, r in zip(clips, results, strict=True):
        r["clip"] = c
        table[c.language, c.variant].append(r)
    names = list(results[0]["terms"])
    print("\nlang variant   WER   reward  " + "  ".join(names))
    for (lang, variant), rs in table.items():
        means = [np.mean([r["terms"][t] for r in rs if r["terms"][t] is not None] or [np.nan]) for t in names]
        print(
            f"{lang}  {variant:8s} {np.mean([r['wer'] for r in rs]):.2f}  {np.mean([r['reward'] for r in rs]):.3f}  "
            + "  ".join(f"{v:.3f}" for v in means)
        )
    return results


def clean_of(scored):
    return {(r["clip"].language, r["clip"].index): r for r in scored if r["clip"].variant == "clean"}


def corrupted(scored, variant):
    clean = clean_of(scored)
    for r in scored:
        if r["clip"].variant == variant:
            yield clean[r["clip"].language, r["clip"].index], r


def test_the_corpus_covers_every_loop_and_padding_in_both_languages(scored):
    for lang in sf.SENTENCES_2:
        details = {r["clip"].detail for r in scored if r["clip"].language == lang}
        for seg, where in product(sf.LOOP_SEGMENTS_S, sf.LOOP_POSITIONS):
            assert any(d.startswith(f"loop {seg * 1000:.0f} ms") and d.endswith(where) for d in details), (seg, where)
        for seconds, where in product(sf.PADDINGS_S, sf.PAD_POSITIONS):
            assert any(d.startswith(f"pad {seconds:.0f} s {where}") for d in details), (seconds, where)


def test_no_term_fires_on_clean_speech(scored):
    for r in clean_of(scored).values():
        assert all(r["terms"][t] == 1.0 for t in AUDIO_TERMS), (r["text"], r["terms"])
        assert not r["gated"]


@pytest.mark.parametrize("variant", ["loop", "pad", "stutter"])
def test_every_corruption_ranks_strictly_below_its_clean_clip(scored, variant):
    for clean, bad in corrupted(scored, variant):
        assert bad["reward"] < clean["reward"], (bad["clip"].detail, clean["reward"], bad)


@pytest.mark.parametrize("variant", ["loop", "stutter"])
def test_loops_and_stutters_fail_the_repetition_gate_whatever_the_transcript(scored, variant):
    for _, bad in corrupted(scored, variant):
        assert bad["terms"]["audio_repeat"] < CONFIG.gates["audio_repeat"] and bad["gated"], bad["clip"].detail


def test_padding_loses_on_pauses_and_cannot_fake_a_slow_rate(scored):
    for clean, bad in corrupted(scored, "pad"):
        limit = 0.7 if bad["clip"].detail.startswith("pad 1 s") else 0.05
        assert bad["terms"]["pauses"] < limit, bad["clip"].detail
        # the rate is measured on the speech: 1-3 s of silence leave it where it was
        assert bad["terms"]["speaking_rate"] == pytest.approx(clean["terms"]["speaking_rate"], abs=0.02)
