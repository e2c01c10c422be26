"""Entropy of one chunk of logits: ``grpo.logprobs._entropy_`` (log S − Σ e z' / S, one exp per entry) against
the direct −Σ π log π in the same buffer (one exp and one log per entry), interleaved in one run.

    .venv/bin/python bench/entropy.py [--tokens 1024] [--vocab 193800] [--repeats 5]

The trainer computes the sampling policy's entropy on every first update of a step, over the same [tokens, V]
logits as the log-probs, so at Llasa's vocabulary its element-wise work is a visible part of the update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grpo.logprobs import _entropy_


def direct_(z: Tensor) -> Tensor:
    """The baseline: π in z's buffer, then −Σ π log π (xlogy: 0 · log 0 = 0)."""
    p = z.sub_(z.amax(dim=-1, keepdim=True)).exp_()
    p = p.div_(p.sum(dim=-1, keepdim=True))
    return -p.xlogy_(p).sum(dim=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=193_800)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(args.tokens, args.vocab) * 3
    times: dict[str, list[float]] = {"direct": [], "project": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("direct", direct_), ("project", _entropy_)):
            z = logits.clone()
            start = time.perf_counter()
            results[name] = fn(z)
            times[name].append(time.perf_counter() - start)
    err = float((results["direct"] - results["project"]).abs().max())
    a, b = statistics.median(times["direct"]), statistics.median(times["project"])
    print(f"[{args.tokens}, {args.vocab}] float32, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  direct −Σ π log π   {a * 1000:7.1f} ms")
    print(f"  log S − Σ e z' / S  {b * 1000:7.1f} ms   {a / b:.2f}x faster   max |ΔH| {err:.2e}")


if __name__ == "__main__":
    main()
