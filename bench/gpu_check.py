"""The GPU check behind ``bench/gpu_check.sh``: one CUDA GPU, torch + transformers, no network, one JSON file.

    python bench/gpu_check.py --out gpu_check.json [--quick]
    python bench/gpu_check.py --out /tmp/smoke.json --device cpu --quick --shapes tiny   # the code paths, on CPU

Parts (each timed, each failure recorded in the JSON instead of ending the run; the file is rewritten after
every part, so a timeout keeps what finished):

1. ``steps``: GRPO steps in bf16 autocast, the tiny Llasa layout and SmolKartoffel's shape (random weights,
   vocabulary 114,696), the ``hf`` decoders (loop, loop with bfloat16 sampler weights, generate) alternated
   step by step, β = 0.04, a synthetic token-set reward (no codec or Whisper needed): per-phase seconds,
   tokens/s, peak CUDA memory, the bf16 sampler's log-prob gap, and the reference log-prob gap of a bfloat16
   reference copy vs the float32 one under the same autocast.
2. ``logprob_head``: fwd+bwd of the per-token log-prob head at V = 193,800 and 4 × 1,024 tokens, naive
   ``log_softmax(logits).gather`` vs ``grpo.logprobs.selective_logprobs`` (chunk 256 and 1,024): peak CUDA memory
   above the inputs, and seconds.
3. ``generation``: tokens/s of the fast loop (policy and bfloat16 sampler weights) vs ``model.generate`` at
   SmolKartoffel's shape, 64 rows × 256.
4. ``codec``: the full-size X-Codec2 decoder (random weights, 187 M parameters) on 5 s, 10 s and 8 × 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from grpo.config import GenerationConfig, GRPOConfig, OptimConfig, RunConfig, TrainingConfig
from grpo.decode import FastHFGenerator
from grpo.generation import HFGenerator
from grpo.reference import place_reference
from grpo.rollouts import Rollouts, Scores
from grpo.trainer import GRPOTrainer, Prompt, autocast_factory

DEVICE = torch.device("cuda")  # --device cpu: a smoke run of the code paths (no CUDA memory figures)
SHAPES = {  # LlamaConfig fields: the tiny Llasa layout (tts/tiny.py) and SmolKartoffel-135M
    "tiny": {"vocab_size": 66_056, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "smolkartoffel": {"vocab_size": 114_696, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                      "num_attention_heads": 9, "num_key_value_heads": 3},
}  # fmt: skip
STOP = 1


def llama(shape: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0, eos_token_id=STOP
    )
    return LlamaForCausalLM(cfg).to(DEVICE)


class TokenRangeScorer:
    """Synthetic reward: the share of a completion's tokens below ``limit`` (no speech stack needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def score(self, rollouts: Rollouts) -> Scores:
        mask = rollouts.completion_mask.bool()
        hit = ((rollouts.completion_ids < self.limit) & mask).sum(1).float()
        return Scores(rewards=hit / mask.sum(1).clamp(min=1).float())


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@contextlib.contextmanager
def peak() -> Any:
    """Yields a dict that receives the peak CUDA memory (bytes) allocated inside the block."""
    out: dict[str, int] = {}
    if DEVICE.type != "cuda":
        yield out
        return
    _sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    base = torch.cuda.memory_allocated(DEVICE)
    yield out
    _sync()
    out["peak_bytes"] = torch.cuda.max_memory_allocated(DEVICE)
    out["above_start_bytes"] = out["peak_bytes"] - base


def steps(quick: bool, shapes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sizes = {"tiny": (2, 4, 100), "smolkartoffel": (4, 4, 256)}  # prompts, group, max new tokens
    for shape in shapes:
        prompts, group, new_tokens = sizes[shape] if not quick else (1, 4, 16)
        model = llama(shape)
        vocab = SHAPES[shape]["vocab_size"]
        cfg = TrainingConfig(
            generation=GenerationConfig(max_new_tokens=new_tokens, temperature=0.9),
            grpo=GRPOConfig(group_size=group, batch_size=prompts * group, micro_batch_size=4, beta=0.04),
            optim=OptimConfig(lr=1e-5, max_grad_norm=0.2),
            run=RunConfig(output_dir="/tmp/gpu_check_run", precision="bf16"),
        )
        g = torch.Generator().manual_seed(0)
        data = [Prompt(ids=tuple(torch.randint(2, vocab, (40,), generator=g).tolist())) for _ in range(8)]
        ref = place_reference(llama(shape), cfg.grpo, DEVICE)  # float32 (the default)
        autocast = autocast_factory(DEVICE, "bf16")
        kw = {"pad_id": 0, "stop_ids": [STOP], "autocast": autocast}
        gens = {
            "loop": FastHFGenerator(model, cfg.generation, **kw),
            "loop_bf16_weights": FastHFGenerator(model, cfg.generation, **kw, sampler_dtype=torch.bfloat16),
            "generate": HFGenerator(model, cfg.generation, **kw),
        }
        tr = GRPOTrainer(model, gens["loop"], TokenRangeScorer(vocab // 2), data, cfg, ref_model=ref)
        runs: dict[str, list[dict[str, float]]] = {d: [] for d in gens}
        mem: dict[str, int] = {}
        for i in range(2 if quick else 3):  # round 0 warms up
            for d, gen in gens.items():
                tr.generator = gen
                with peak() as pk:
                    m = tr.train_step()
                mem[d] = max(mem.get(d, 0), pk.get("peak_bytes", 0))
                if i:
                    runs[d].append(m)
        res: dict[str, Any] = {"completions": prompts * group, "max_new_tokens": new_tokens}
        for d, rows in runs.items():
            keys = sorted({k for r in rows for k in r if k.startswith("time/")})
            res[d] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
            tokens = sum(r["completion/tokens"] for r in rows) / len(rows) * prompts * group
            res[d]["generate_tokens_per_s"] = tokens / res[d]["time/generate"]
            res[d]["peak_cuda_bytes"] = mem[d]
        base = res["generate"]
        for d in ("loop", "loop_bf16_weights"):  # CPU: no CUDA bytes
            res[f"ratio_{d}_to_generate"] = {k: res[d][k] / base[k] for k in res[d] if base.get(k)}
        res["loop_bf16_weights"]["is_abs_logp_diff_mean"] = sum(
            r["is/abs_logp_diff_mean"] for r in runs["loop_bf16_weights"]
        ) / len(runs["loop_bf16_weights"])
        res["reference_bf16_vs_fp32"] = reference_gap(ref, tr.last_rollouts, cfg, autocast)
        out[shape] = res
        del tr, model, ref, gens
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def reference_gap(ref: torch.nn.Module, rollouts: Rollouts, cfg: TrainingConfig, autocast: Callable) -> dict:
    """|Δ log p| of a bfloat16 copy of the reference vs the float32 one, both under the trainer's autocast."""
    from grpo.logprobs import token_logprobs

    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1).to(DEVICE)
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], 1).to(DEVICE)
    c, cmask = rollouts.completion_ids.shape[1], rollouts.completion_mask.to(DEVICE).bool()
    logps = {}
    for name, model in (("float32", ref), ("bfloat16", copy.deepcopy(ref).to(torch.bfloat16))):
        with autocast():
            logps[name] = token_logprobs(model, ids, mask, c, temperature=cfg.generation.temperature)
    diff = (logps["bfloat16"] - logps["float32"])[cmask].abs()
    return {"abs_logp_err_mean": diff.mean().item(), "abs_logp_err_max": diff.max().item()}


def logprob_head(quick: bool, shapes: list[str]) -> dict[str, Any]:
    from grpo.logprobs import selective_logprobs

    def naive(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(h @ w.T, dim=-1).gather(-1, y[:, None]).squeeze(-1)

    out: dict[str, Any] = {}
    v, n = 193_800, 4 * 1024 if not quick else 256
    variants: dict[str, Callable] = {
        "naive": naive,
        "selective_256": lambda h, w, y: selective_logprobs(h, w, y, chunk_tokens=256),
        "selective_1024": lambda h, w, y: selective_logprobs(h, w, y, chunk_tokens=1024),
    }
    for hidden in (576,) if quick else (576, 2048):
        g = torch.Generator(device=DEVICE).manual_seed(0)
        h = (torch.randn(n, hidden, device=DEVICE, generator=g) * 0.5).requires_grad_()
        w = (torch.randn(v, hidden, device=DEVICE, generator=g) * 0.02).requires_grad_()
        y = torch.randint(0, v, (n,), device=DEVICE, generator=g)
        for name, fn in variants.items():
            for _ in range(2):  # the first call warms up kernels; the second is reported
                h.grad = w.grad = None
                with peak() as pk:
                    t = time.perf_counter()
                    fn(h, w, y).sum().backward()
                    _sync()
                    dt = time.perf_counter() - t
            out[f"H{hidden}_{name}"] = {"fwd_bwd_s": dt, **pk}
        del h, w, y
        torch.cuda.empty_cache()
    return out


def generation(quick: bool, shapes: list[str]) -> dict[str, Any]:
    model = llama(shapes[-1]).eval()
    vocab = SHAPES[shapes[-1]]["vocab_size"]
    rows, new_tokens = (8, 16) if quick else (64, 256)
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0.9)
    autocast = autocast_factory(DEVICE, "bf16")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, vocab, (40,), generator=g).tolist() for _ in range(rows // 4)]
    out: dict[str, Any] = {"shape": shapes[-1], "rows": rows, "max_new_tokens": new_tokens}
    kw = {"pad_id": 0, "stop_ids": [STOP], "autocast": autocast}
    gens = {
        "loop": FastHFGenerator(model, cfg, **kw),
        "loop_bf16_weights": FastHFGenerator(model, cfg, **kw, sampler_dtype=torch.bfloat16),
        "generate": HFGenerator(model, cfg, **kw),
    }
    for rep in range(2):  # round 0 warms up
        for name, gen in gens.items():
            _sync()
            t = time.perf_counter()
            r = gen.generate(prompts, 4)
            _sync()
            dt = time.perf_counter() - t
            if rep:
                out[name] = {"s": dt, "tokens_per_s": float(r.completion_mask.sum()) / dt}
    for name in ("loop", "loop_bf16_weights"):
        out[f"speedup_{name}_vs_generate"] = out[name]["tokens_per_s"] / out["generate"]["tokens_per_s"]
    return out


def codec(quick: bool, shapes: list[str]) -> dict[str, Any]:
    from tts.codec import XCodec2Config, XCodec2Decoder
    from tts.constants import CODES_PER_SECOND

    torch.manual_seed(0)
    dec = XCodec2Decoder(XCodec2Config()).to(DEVICE).eval()
    out: dict[str, Any] = {"parameters": sum(p.numel() for p in dec.parameters())}
    cases = {"5s": (1, 5.0), "10s": (1, 10.0), "8x5s": (8, 5.0)} if not quick else {"1s": (1, 1.0)}
    for name, (batch, seconds) in cases.items():
        codes = torch.randint(0, 65_536, (batch, int(seconds * CODES_PER_SECOND)), device=DEVICE)
        for _ in range(2):  # the first call warms up
            _sync()
            t = time.perf_counter()
            with torch.no_grad():
                dec.decode(codes)
            _sync()
            dt = time.perf_counter() - t
        out[name] = {"s": dt, "audio_s_per_s": batch * seconds / dt}
    return out


PARTS = {"steps": steps, "logprob_head": logprob_head, "generation": generation, "codec": codec}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", default=",".join(SHAPES), help="model shapes for steps and generation")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("[bench] gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    import transformers

    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        "device": str(DEVICE),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
    }
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            report[name] = PARTS[name](args.quick, args.shapes.split(","))
        except Exception:  # recorded, so the remaining parts still run and the file says what broke
            report[name] = {"error": traceback.format_exc(limit=8)}
        report[name]["wall_s"] = time.perf_counter() - t
        print(f"[gpu_check] {name}: {report[name]['wall_s']:.1f} s{' (error)' if 'error' in report[name] else ''}")
        args.out.write_text(json.dumps(report, indent=2))
    print(f"[gpu_check] wrote {args.out}")


if __name__ == "__main__":
    main()
