"""``torch.compile`` of a decode step, measured: is it worth offering for the hf loop (grpo/decode.py)?

    python bench/compile_decode.py --model smollm2 --rows 4 --tokens 48 --dtype bfloat16 --threads 1

One decode step is the model's forward on [rows, 1] new tokens against a ``StaticCache``; here its inputs have
fixed shapes (the full-length attention mask, an explicit ``cache_position``), so the compiled graph is built
once. Prints the eager ms per step, the compiled one's first call (the compile) and its ms per step after
that, then eager again (a drifting machine shows as a gap between the two eager runs), and the ratios.
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
