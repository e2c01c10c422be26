"""Decoder load time and decode speed (seconds of audio per second of compute) of the X-Codec2 decoder.

    .venv/bin/python bench/codec.py [--full] [--device cpu] [--threads N]

The tiny checkpoint is built on the fly; ``--full`` also writes a random-weight decoder of the real size
(187 M parameters, ~713 MB float32) to a temporary folder and loads it through ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tts.codec import XCodec2Config, XCodec2Decoder
from tts.constants import CODES_PER_SECOND
from tts.tiny import build_tiny_codec


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, folder: Path, device: str, lengths_s: list[float], batch: int, repeats: int) -> None:
    t0 = time.perf_counter()
    codec = XCodec2Decoder.from_pretrained(folder, device=device)
    _sync(device)
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in codec.parameters()) / 1e6
    print(f"{name}: {params:.2f} M parameters, load {load_s:.2f} s ({device}, {torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)
    codec.decode(torch.zeros(1, 10, dtype=torch.long, device=device))  # warm-up
    cases = [(1, s) for s in lengths_s] + [(batch, lengths_s[len(lengths_s) // 2])]
    for n, seconds in cases:
        codes = [rng.integers(0, 65536, int(seconds * CODES_PER_SECOND)) for _ in range(n)]
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            codec.decode_batch(codes, batch_size=n)
            _sync(device)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"  {n} x {seconds:4.1f} s audio: {best:6.3f} s  -> {n * seconds / best:8.1f} s audio / s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also the full-size random-weight decoder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bench("tiny", build_tiny_codec(Path(tmp) / "tiny"), args.device, [1.0, 5.0, 10.0], 8, args.repeats)
        if args.full:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            XCodec2Decoder(XCodec2Config()).save_pretrained(Path(tmp) / "full")
            print(f"(full-size random checkpoint written in {time.perf_counter() - t0:.1f} s)")
            bench("full", Path(tmp) / "full", args.device, [1.0, 5.0, 10.0], 8, args.repeats)


if __name__ == "__main__":
    main()
