"""Per-phase time of GRPO steps on the tiny model (or any config): where does a step's time go?

    python bench/step.py                                   # tiny.toml, 1 warm-up + 3 measured steps
    python bench/step.py --config tiny.toml --steps 5 --set generation.max_new_tokens=200

Builds the same components as train.py, runs steps without writing a run folder, and prints the mean of each
``time/*`` metric (the scorer reports decode / transcribe / reward inside ``score``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from grpo.distributed import resolve_device
from grpo.trainer import GRPOTrainer
from llasa_grpo import recipe


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows) / len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny.toml")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe.load(args.config, [*args.set, f"run.output_dir={tmp}", "run.tensorboard=false"])
        recipe.check_resources(cfg, source=args.config)
        device = resolve_device(cfg.run.device)
        t0 = time.perf_counter()
        parts = recipe.build_components(cfg, device)
        build_s = time.perf_counter() - t0
        tr = GRPOTrainer(
            parts.model, parts.generator, parts.scorer, parts.prompts, cfg.training,
            pad_id=parts.pad_id, ref_model=parts.ref_model, tokenizer=parts.tokenizer,
        )  # fmt: skip
        tr.train_step()  # warm-up: first-call allocations, Whisper's first batch
        runs = [tr.train_step() for _ in range(args.steps)]
    keys = sorted({k for r in runs for k in r if k.startswith("time/")}, key=lambda k: -runs[0].get(k, 0))
    g = cfg.grpo
    print(
        f"config {args.config} {' '.join(args.set)}\n"
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, device {device}; build {build_s:.1f} s\n"
        f"step: {g.batch_size} completions ({g.prompts_per_step} prompts × {g.group_size}), "
        f"≤ {cfg.generation.max_new_tokens} new tokens, mean {_mean(runs, 'completion/tokens'):.0f}; "
        f"mean of {len(runs)} steps after 1 warm-up"
    )
    total = _mean(runs, "time/step")
    for k in keys:
        v = _mean(runs, k)
        inner = "   (inside score)" if k in ("time/decode", "time/transcribe", "time/reward") else ""
        print(f"  {k:<18} {v:8.3f} s  {100 * v / total:5.1f} %{inner}")


if __name__ == "__main__":
    main()
