"""What else could make a decode step of the hf loop (grpo/decode.py) faster: ``torch.compile``, int8 weights.

    python bench/decode_step.py --model smollm2 --rows 4 --tokens 48 --dtype bfloat16 --threads 1

At a few rows a decode step reads every weight once per token, so its time is set by the weights' bytes and
the per-op overhead. Two levers are measured here, each against its baseline in the same run:

* ``torch.compile`` of one decode step: the model's forward on [rows, 1] new tokens against a ``StaticCache``,
  with fixed-shape inputs (the full-length attention mask, an explicit ``cache_position``) so the graph is
  built once. Eager ms per step before and after, the compiled first call (the compile) and its ms per step.
* int8 weight-only products (``torch._weight_int8pack_mm``, per-row scales) for the output head, the largest
  matrix (vocabulary × hidden), against the head in float32 and bfloat16 at [rows, hidden].
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import AutoModelForCausalLM, StaticCache

from bench.step import resolve_model


@torch.no_grad()
def run(model: torch.nn.Module, step: Callable, rows: int, prompt: int, tokens: int) -> tuple[float, float]:
    """(seconds of the first decode step, mean seconds of the others after 4 more) of greedy decoding."""
    cache = StaticCache(config=model.config, max_cache_len=prompt + tokens)
    attn = torch.zeros(rows, prompt + tokens, dtype=torch.long)
    attn[:, :prompt] = 1
    ids = torch.randint(100, 40_000, (rows, prompt), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, attention_mask=attn[:, :prompt], cache=cache, cache_position=torch.arange(prompt))
    tok = out.logits[:, -1].argmax(-1)
    times = []
    for t in range(tokens - 1):
        attn[:, prompt + t] = 1
        start = time.perf_counter()
        logits = step(tok[:, None], attn, torch.full((rows, 1), prompt + t), cache, torch.tensor([prompt + t]))
        tok = logits[:, -1].float().argmax(-1)
        times.append(time.perf_counter() - start)
    return times[0], sum(times[5:]) / len(times[5:])


def head_product(weight: torch.Tensor, rows: int, repeats: int = 5) -> None:
    """Print the head's [rows, H] · [H, V] time in float32, bfloat16 and int8 weights (best of ``repeats``)."""
    scale = weight.abs().amax(1).clamp(min=1e-8) / 127  # [V], one scale per output row
    q = torch.round(weight / scale[:, None]).to(torch.int8)
    x = torch.randn(rows, weight.shape[1])
    xb, wb, sb = x.bfloat16(), weight.bfloat16(), scale.bfloat16()
    variants = {
        "float32": lambda: x @ weight.T,
        "bfloat16": lambda: xb @ wb.T,
        "int8 weights, bf16 input": lambda: torch._weight_int8pack_mm(xb, q, sb),
    }
    best = {}
    for name, fn in variants.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    print(f"output head {tuple(weight.shape)} at {rows} rows, best of {repeats}:")
    for name, t in best.items():
        print(f"  {name:<26}{1e3 * t:7.1f} ms   {best['float32'] / t:5.2f}x float32")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="a folder, 'smollm2' or 'smol-random' (tts/smol.py)")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--prompt", type=int, default=40)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=getattr(torch, args.dtype)).eval()

    def eager(tok, attn, pos, cache, cache_position):
        return model(
            input_ids=tok, attention_mask=attn, position_ids=pos, cache=cache, cache_position=cache_position
        ).logits

    head_product(model.get_output_embeddings().weight.detach().float(), args.rows)
    compiled = torch.compile(eager, dynamic=False)
    shape = (args.rows, args.prompt, args.tokens)
    _, e1 = run(model, eager, *shape)
    compile_s, c = run(model, compiled, *shape)
    _, e2 = run(model, eager, *shape)
    eager_s = (e1 + e2) / 2
    print(
        f"{args.model}, {args.dtype}, {args.rows} rows, {args.tokens} steps after a {args.prompt}-token prompt, "
        f"torch threads {torch.get_num_threads()}\n"
        f"  eager     {1e3 * e1:6.1f} ms/step (before), {1e3 * e2:6.1f} ms/step (after)\n"
        f"  compiled  {1e3 * c:6.1f} ms/step, first call (compiling) {compile_s:.1f} s\n"
        f"  compiled / eager {c / eager_s:.2f}; break-even after {compile_s / max(eager_s - c, 1e-9):.0f} steps"
        + ("" if c < eager_s else " (never: it is not faster)")
    )


if __name__ == "__main__":
    main()
