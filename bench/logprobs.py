"""Forward+backward time and peak memory of three ways to get per-token log-probs from hidden states.

    (a) naive:      log_softmax(h Wᵀ).gather(y)                 full [tokens, V] logits, kept for backward
    (b) logsumexp:  (h Wᵀ).gather(y) − logsumexp(h Wᵀ)          same, without the log_softmax output
    (c) selective:  grpo.logprobs.selective_logprobs            chunked, backward recomputes each chunk

Each variant runs in its own subprocess; peak memory is that process's ru_maxrss after the measured runs minus
its ru_maxrss before them (inputs allocated, kernels warmed up on a small head), so it counts everything the
forward and backward passes allocate, the head's weight gradient included. CPU, float32.

    .venv/bin/python bench/logprobs.py                      # vocab 193,800; hidden 576 and 2,048; 2,048 tokens
    .venv/bin/python bench/logprobs.py --hidden 576 --tokens 1024 --chunks 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grpo.logprobs import selective_logprobs


def naive(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    return torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def logsumexp(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    logits = hidden @ weight.T
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)


def selective(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    return selective_logprobs(hidden, weight, targets, chunk_tokens=chunk)


VARIANTS: dict[str, Callable[[Tensor, Tensor, Tensor, int], Tensor]] = {
    "naive": naive,
    "logsumexp": logsumexp,
    "selective": selective,
}
LABELS = {"naive": "(a) log_softmax + gather", "logsumexp": "(b) gather − logsumexp", "selective": "(c) selective"}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB; MB = 10^6 bytes


def forward_backward(fn: Callable, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> float:
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    logps = fn(hidden, weight, targets, chunk)
    logps.sum().backward()
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """One variant, one process: print {"time_s", "peak_mb"} as JSON."""
    torch.manual_seed(0)
    fn, h = VARIANTS[args.variant], args.hidden[0]
    # Scale in place: a freed temporary as big as the head would raise the ru_maxrss baseline.
    weight = torch.randn(args.vocab, h).mul_(0.02).requires_grad_()
    hidden = torch.randn(args.tokens, h).requires_grad_()
    targets = torch.randint(args.vocab, (args.tokens,))
    small = torch.randn(1000, h).mul_(0.02).requires_grad_()  # warm-up head: keeps its gradient out of the baseline
    forward_backward(fn, hidden[:64].detach().requires_grad_(), small, targets[:64] % 1000, args.chunks[0])
    base = max_rss_mb()
    times = [forward_backward(fn, hidden, weight, targets, args.chunks[0]) for _ in range(args.repeats)]
    print(json.dumps({"time_s": min(times), "peak_mb": max_rss_mb() - base}))


def run_one(args: argparse.Namespace, variant: str, hidden: int, chunk: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", variant, "--hidden", str(hidden), "--chunks", str(chunk)]
    cmd += ["--vocab", str(args.vocab), "--tokens", str(args.tokens), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    print(
        f"vocab {args.vocab:,}, {args.tokens:,} tokens, float32, CPU, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}; peak = ru_maxrss growth during forward+backward"
    )
    print("| hidden | variant | chunk | fwd+bwd s | peak MB | time / (a) | memory / (a) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for h in args.hidden:
        rows = [("naive", 0), ("logsumexp", 0)] + [("selective", c) for c in args.chunks]
        results = [(v, c, run_one(args, v, h, c or args.chunks[0])) for v, c in rows]
        base = results[0][2]
        for variant, chunk, r in results:
            print(
                f"| {h} | {LABELS[variant]} | {chunk or '–'} | {r['time_s']:.2f} | {r['peak_mb']:,.0f} "
                f"| {r['time_s'] / base['time_s']:.2f} | {r['peak_mb'] / base['peak_mb']:.3f} |",
                flush=True,
            )
        print(f"| {h} | floor: the head's weight gradient | | | {args.vocab * h * 4 / 1e6:,.0f} | | |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=193_800)
    parser.add_argument("--hidden", type=int, nargs="+", default=[576, 2048])
    parser.add_argument(
        "--tokens", type=int, default=2048, help="completion tokens per step (4 × 1,024 needs >10 GB for (a))"
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256], help="chunk_tokens values for (c)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=sorted(VARIANTS), dest="variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    worker(args) if args.variant else main(args)
