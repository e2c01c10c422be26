"""How far a short lab GRPO run moves the reward, against the noise of measuring it: the bounds of
tests/test_lab_grpo.py come from this.

    python bench/lab_learning.py --seeds 0 1 2 --out runs/lab-learning

For each seed, the test's run (same texts, steps and settings) twice: with the test's learning rate and with
lr = 1e-12 (the config refuses 0). At 1e-12 the policy does not change, so its start → end change (mean of the
first vs the last steps) is pure sampling noise; the spread of those changes over seeds is the noise a bound
must clear. Each run's result is kept in ``OUT/seed{S}-lr{LR}/result.json`` (a finished run is not repeated);
prints one row per run and the summary, and writes ``OUT/learning.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_lab_grpo import SETTINGS, STEPS, short_run  # the test's own run

FROZEN = 1e-12  # a learning rate at which nothing moves: the control


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--lrs", type=float, nargs="+", default=[SETTINGS["optim.lr"], FROZEN])
    p.add_argument("--out", type=Path, default=Path("runs/lab-learning"))
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for lr in args.lrs:
            folder = args.out / f"seed{seed}-lr{lr:g}"
            done = folder / "result.json"
            if done.is_file():
                row = json.loads(done.read_text())
            else:
                t0 = time.time()
                got = short_run(folder, seed, lr=lr, steps=args.steps)
                row = {"seed": seed, "lr": lr, "wall_s": round(time.time() - t0, 1)}
                row |= {f"{k}_change": round(v[1] - v[0], 4) for k, v in got.items() if isinstance(v, tuple)}
                row |= got
                done.write_text(json.dumps(row) + "\n")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)
    for key in ("reward/total_change", "asr/wer_change"):
        for lr in args.lrs:
            vals = [r[key] for r in rows if r["lr"] == lr]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            print(f"{key:<22} lr={lr:<8g} mean {statistics.mean(vals):+.3f}  sd {sd:.3f}  values {vals}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
