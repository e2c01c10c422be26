"""GRPO makes the speaking lab model better: a short seeded run of the real program on the lab model, with the
real Whisper base in the reward, raises the mean reward and lowers the mean WER on its training texts.

One run: rows 6 and 7 of data/lab_train.jsonl, 8 completions of each every step, lr 1e-4, 12 steps, seed 0,
the seed's reward (below). A policy's *level* is the mean over its last 6 steps (96 completions). The noise
that matters is how far that level wanders for a model that does not learn: the same program at lr 1e-12 (the
config refuses 0; nothing moves), over six seeds, measured on this project's 2-core CPU with
``python bench/lab_learning.py --seeds 0 1 2 3 4 5 --lrs 1e-4 1e-12 --steps 12 --window 2
--set 'reward.preset="original"' --out runs/ll12``:

    level of steps 7-12, seeds 0-5    reward (mean)                            capped WER (mean)
    trained, lr 1e-4                  .896 .891 .900 .893 .890 .874 (.891)    .254 .270 .240 .263 .269 .311 (.268)
    frozen,  lr 1e-12                 .822 .801 .813 .797 .816 .814 (.811)    .470 .546 .507 .545 .505 .497 (.512)

The bounds sit in the gaps: reward 0.85 (trained minimum 0.874, frozen maximum 0.822; frozen runs' sd 0.009)
and capped WER 0.39 (0.311 vs 0.470). The first two steps are not a usable baseline on their own (32
completions: a frozen run's level moved from them by -0.049 to +0.013 in reward); the test only asks that the
end also beats them. Capped WER = mean of min(WER, 1) per clip (``asr/wer_capped``): the plain mean is ruled by
rare hallucinated transcripts (a frozen run's moved by +0.36). Alone on this CPU it took 208 s and printed
reward 0.820 -> 0.896, capped WER 0.491 -> 0.254 (the bench's seed 0 exactly): the issue asked for 3 minutes,
but at 8 steps the trained and frozen reward ranges come within 0.025 of each other.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lab_learning import short_run  # the measurement above and this test run the same function

STEPS = 12
REWARD_BOUND = 0.85  # the level's reward: trained runs 0.874-0.900, frozen ones 0.797-0.822 (docstring)
WER_BOUND = 0.39  # the level's capped WER: trained runs 0.240-0.311, frozen ones 0.470-0.546


@pytest.mark.slow
def test_grpo_raises_the_reward_and_lowers_the_wer_of_the_lab_model(tmp_path: Path) -> None:
    """``train.py --config lab.toml`` on rows 6 and 7 of data/lab_train.jsonl (the base model speaks them right
    about half the time), every text every step, with the seed's reward, (exp(−WER) + hangup) / 2: on this
    model, which does not hang up, its group-normalised advantages are WER alone, where the default reward's
    six other terms dilute the WER signal."""
    got = short_run(tmp_path, seed=0, lr=1e-4, steps=STEPS, texts=(6, 7), group_size=8, window=2,
                    extra={"reward.preset": "original"})  # fmt: skip
    reward, wer = got["reward/total"], got["asr/wer_capped"]  # (mean of steps 1-2, mean of the last 2)
    level = got["reward/total_level"], got["asr/wer_capped_level"]  # means of steps 7-12
    print(f"reward {reward[0]:.3f} -> {level[0]:.3f}, capped WER {wer[0]:.3f} -> {level[1]:.3f}")
    assert level[0] > REWARD_BOUND and level[0] > reward[0]
    assert level[1] < WER_BOUND and level[1] < wer[0]
