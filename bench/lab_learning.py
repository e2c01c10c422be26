"""Does a short lab GRPO run learn, and by more than the noise of measuring it? (The evidence behind
``tests/test_lab_learning.py``.)

    python bench/lab_learning.py --seeds 0 1 2 3 4 5 --lrs 1e-4 1e-12 --steps 12 --window 2 \
        --set 'reward.preset="original"' --out runs/ll12        # the test's configuration, six seeds
    python bench/lab_learning.py --seeds 1 2 --texts 7 --group-size 16 --out runs/lab-learning-1text

Each run is the real program (``llasa_grpo.train.main`` on ``lab.toml``: the lab's Llasa and X-Codec2, the real
Whisper base in the reward) on a few training texts that every step samples again, so the mean of the first
and of the last ``--window`` steps compare the same prompts. For each seed the run is made twice: with
``--lr`` and with lr = 1e-12 (the config refuses 0), at which the policy does not move, so that run's start →
end change is pure sampling noise. Each run's result is kept in ``OUT/seed{S}-lr{LR}/result.json`` (a finished
run is not repeated); prints one row per run and a summary, writes ``OUT/learning.json``.

Measured on this project's 2-core CPU (other jobs sharing it; 6 steps each; change of the mean reward of steps
1-2 → 5-6):
- texts 6, 7 × 8 completions, lr 2e-4: seed 0 +0.139 (0.82 → 0.96, KL 0.02), seed 1 -0.160 (up to 0.92 by
  step 4, then 0.69 with KL 0.16); lr 1e-12: seed 0 +0.003, seed 1 -0.024.
- text 7 × 16 completions, lr 2e-4: seed 1 +0.26, seed 2 +0.04 (0.96 at step 3, 0.75 at step 6, KL 0.16);
  lr 1e-12, seed 1: +0.185 (the first step was an unlucky draw: the noise of one text is large).
- texts 6, 7, lr 1e-4 with num_iterations 2, seed 1: 0.77 → 0.92 (step 3) → 0.76 (step 5), tracking the
  frozen run's draws.
- texts 6, 7 × 8 completions, lr 1e-4, 10 steps, window 3 (steps 1-3 → 8-10): seed 0 reward +0.013 but
  exp(-WER) +0.127 (0.66 → 0.79, KL 0.06 at the end); seed 1 reward +0.065, exp(-WER) +0.112 (0.62 → 0.73):
  the WER term rises in both, the total (diluted by six other terms near 1) less clearly; frozen controls of
  the same 10 steps: exp(-WER) +0.028 (seed 0) and -0.007 (seed 1), reward -0.017 and +0.026. This is the
  most promising configuration for a learning test (a bound of ~0.07 on the exp(-WER) gain sits between the
  two), once more seeds confirm it; it takes ~5 min on 2 quiet cores.
With Whisper's 10 s encoder window (``transcriber.window_s``, a step of 16 completions takes ~21 s instead of
~35 s) and the seed's reward (``--set 'reward.preset="original"'``: on this model, which does not hang up,
its advantages are WER alone), texts 6, 7 × 8, lr 1e-4, 12 steps, six seeds each trained and frozen; the level
is the mean of steps 7-12 (96 completions):
- reward: trained .896 .891 .900 .893 .890 .874 (mean .891), frozen .822 .801 .813 .797 .816 .814 (.811);
- capped WER (mean of min(WER, 1)): trained .254 .270 .240 .263 .269 .311 (.268), frozen .470 .546 .507
  .545 .505 .497 (.512); KL at step 12: 0.004-0.056.
- the change from steps 1-2 is noisier: trained +0.036 ... +0.087 in reward, frozen -0.049 ... +0.013.
- shorter runs: at 8 steps (level of steps 5-8) trained .856-.883 vs frozen .777-.831; at 10 steps .874-.894 vs
  .780-.828. One lr 2e-4 run of 8 steps (seed 0) gave no larger gain (+0.047 for steps 1-2 → 5-8) with KL
  0.17.
So the 12-step level separates trained from untrained on every seed, by 0.052 in reward and 0.16 in capped WER
between the closest pair; that is the test. Before these two changes (30 s window, default reward, the runs
listed first) the reward often rose within 3-4 steps and then some seeds fell back, and 16-32 completions a
step measured a change of ~0.1 only roughly.

On the plain-voice build (``runs/lab-build-v3`` with its second decoder phase; not committed; README), which
says each training sentence the same way at T 0.9 and derails now and then only when sampled hotter: texts 5
and 18 (the shortest rows with spread at T 1.4), T 1.5, the seed's reward, lr 1e-4, 12 steps, seed 0
(``--texts 5 18 --set 'generation.temperature=1.5' --set 'model.path="runs/lab-build-v3/llasa"'`` and the codec
paths): trained level reward 0.843, capped WER 0.384 (KL 0.064 at step 12); frozen 0.859, 0.336. It did not
learn: the derailments are rare, and a fixed error (the same wrong word in every sample of a group) gives no
advantage at all. (This run also found that a transcript of "564" and hundreds of
zeros crashed the WER's number spelling; ``reward.normalize`` now reads such numbers digit by digit.)

Snapshots of that recipe's LM stages on the committed codec (``runs/lab-build-v4``; README), ``--set
'model.path="runs/lab-build-v4/snapshots/sft2/step-K"'``, the seed's reward, lr 1e-4, 12 steps:
- step 900 at T 0.9 (1-2 of 8 samples garbled on about half the rows), texts 6 and 7: trained level capped
  WER 0.197 (seed 0) and 0.191 (seed 1), reward 0.915 / 0.919; a frozen run, stopped after 8 steps (level of
  steps 5-8): 0.236, 0.904. The floor (every sample right) is 0.146 / 0.932: too little room to tell apart.
- step 600 (the committed lab-llasa since) at T 0.8, texts 1 and 6, seeds 0-2 (``--seeds 0 1 2 --lrs 1e-4
  1e-12 --texts 1 6 --set 'generation.temperature=0.8'``, two runs at a time on the 2 cores, 575-853 s each):
  level of steps 7-12, trained reward .924 .919 .927, capped WER .172 .184 .161 (KL at step 12 0.001-0.018);
  frozen .863 .862 .892, .348 .365 .266. The trained runs reach the floor on most of their last six steps.
  That is ``tests/test_lab_learning.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FROZEN = 1e-12  # a learning rate at which nothing moves: the control
KEYS = ("reward/total", "reward/wer", "asr/wer", "asr/wer_capped", "completion/finished", "speech/loop_rate")


def short_run(
    out: Path,
    seed: int,
    lr: float,
    steps: int,
    texts: tuple[int, ...],
    group_size: int,
    window: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One GRPO run of ``lab.toml`` on the given rows of data/lab_train.jsonl; start and end means of KEYS."""
    from grpo.metrics import read_metrics
    from llasa_grpo import train

    rows = (REPO / "data" / "lab_train.jsonl").read_text().splitlines()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "texts.jsonl"
    data.write_text("".join(rows[i] + "\n" for i in texts))
    n = group_size * len(texts)  # every text every step
    settings = {
        "data.path": str(data),
        "generation.max_new_tokens": 150,
        "grpo.group_size": group_size,
        "grpo.batch_size": n,
        "grpo.micro_batch_size": min(n, 16),
        "optim.lr": lr,
        "run.max_steps": steps,
        "run.seed": seed,
        "run.save_every": 0,
        "run.sample_every": 0,
        "run.output_dir": str(out / "run"),
        **(extra or {}),
    }
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    if train.main(["--config", str(REPO / "lab.toml"), "--overwrite", *sets]) != 0:
        raise SystemExit(f"train.py failed for {out}")
    metrics = read_metrics(out / "run")

    def mean(part: list[dict[str, Any]], key: str) -> float | None:
        vals = [m[key] for m in part if key in m]
        return sum(vals) / len(vals) if vals else None

    got: dict[str, Any] = {k: (mean(metrics[:window], k), mean(metrics[-window:], k)) for k in KEYS}
    # the level the test reads: the mean of the last half of the steps
    got.update({f"{k}_level": mean(metrics[-(len(metrics) // 2) :], k) for k in KEYS})
    got["per_step_reward"] = [round(m["reward/total"], 4) for m in metrics]
    got["kl_last"] = metrics[-1]["loss/kl_mean"]
    return got


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-4, FROZEN])
    p.add_argument("--texts", type=int, nargs="+", default=[6, 7], help="rows of data/lab_train.jsonl")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--window", type=int, default=2, help="steps averaged at each end")
    p.add_argument("--out", type=Path, default=Path("runs/lab-learning"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="more config settings")
    args = p.parse_args(argv)
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows = []
    for seed in args.seeds:
        for lr in args.lrs:
            folder = args.out / f"seed{seed}-lr{lr:g}"
            done = folder / "result.json"
            if done.is_file():
                row = json.loads(done.read_text())
            else:
                t0 = time.time()
                got = short_run(folder, seed, lr, args.steps, tuple(args.texts), args.group_size, args.window, extra)
                row = {"seed": seed, "lr": lr, "wall_s": round(time.time() - t0, 1), **got}
                for k in KEYS:
                    a, b = got[k]
                    row[f"{k}_change"] = None if a is None or b is None else round(b - a, 4)
                done.write_text(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in KEYS}), flush=True)

    for key in ("reward/total_change", "reward/wer_change", "reward/total_level", "asr/wer_capped_level"):
        for lr in args.lrs:
            vals = [round(r[key], 4) for r in rows if r["lr"] == lr and r.get(key) is not None]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
                print(f"{key:<22} lr={lr:<8g} mean {statistics.mean(vals):+.3f}  sd {sd:.3f}  values {vals}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
