"""Generation throughput: tokens per second of the ``hf`` backend vs ``vllm_colocate``, same prompts and sampling.

    python bench/generate.py --model SebastianBodza/SmolKartoffel-135M-v0.1 --prompts 8 --group-size 4
    python bench/generate.py            # the offline tiny model, hf only (vLLM needs CUDA)

Every backend gets the same prompt ids, group size, temperature and budget; the table prints generated tokens
per second and the ratio to ``hf`` measured in the same run. Sampling is not forced to run to the budget, so
the token counts can differ between backends; tokens/s is what is compared.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.config import GenerationConfig
from grpo.engine import Sampling, VLLMEngine, VLLMSettings
from grpo.engine_generation import EngineGenerator
from grpo.generation import HFGenerator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF id or folder (default: the offline tiny Llasa model)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--backends", default="hf,vllm_colocate")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    args = p.parse_args()

    if args.model is None:
        from tts.tiny import tiny_assets

        args.model = str(tiny_assets()[0])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(args.model)
    stop = tok.convert_tokens_to_ids("<|SPEECH_GENERATION_END|>")
    stop_ids = [stop if isinstance(stop, int) and stop >= 0 else tok.eos_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, min(tok.vocab_size, 1000), (24,), generator=g).tolist() for _ in range(args.prompts)]

    rows: list[tuple[str, int, float]] = []
    for backend in args.backends.split(","):
        if backend == "hf":
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
            gen = HFGenerator(model, gen_cfg, pad_id=pad, stop_ids=stop_ids)
        elif backend == "vllm_colocate":
            if device != "cuda":
                print("vllm_colocate: skipped (needs CUDA and vLLM)")
                continue
            engine = VLLMEngine(VLLMSettings(model=args.model, gpu_memory_utilization=args.gpu_memory_utilization))
            gen = EngineGenerator(engine, Sampling.from_config(gen_cfg, stop_ids, seed=0), pad_id=pad)
        else:
            raise SystemExit(f"unknown backend {backend!r}: use hf, vllm_colocate")
        gen.generate(prompts[:1], args.group_size)  # warm-up (kernels, CUDA graphs)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = gen.generate(prompts, args.group_size)
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append((backend, int(r.completion_mask.sum()), time.perf_counter() - t0))

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{args.prompts} prompts × {args.group_size}, ≤{args.max_new_tokens} new tokens, device {name}")
    print(f"{'backend':<15}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'vs hf':>8}")
    base = next((n / s for b, n, s in rows if b == "hf"), None)
    for backend, n, s in rows:
        ratio = f"{(n / s) / base:.2f}x" if base else "-"
        print(f"{backend:<15}{n:>8}{s:>10.2f}{n / s:>11.1f}{ratio:>8}")


if __name__ == "__main__":
    main()
