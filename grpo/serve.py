"""Generation server: a vLLM engine on its own GPU, for ``generation.backend = "vllm_server"``.

    CUDA_VISIBLE_DEVICES=1 python -m grpo.serve --model SebastianBodza/SmolKartoffel-135M-v0.1 --port 8000
    (installed: llasa-grpo serve, same options)

Routes: ``GET /health``, ``GET /info`` (model, vocab size, weights version), ``POST /generate`` (token ids in,
token ids and log-probs out), ``POST /update_weights`` (a safetensors file the trainer wrote to shared memory).
Binds 127.0.0.1 unless ``--host`` says otherwise: the server executes weight files it is pointed at.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from grpo.engine import Engine, HFEngine, Sampling, VLLMEngine, VLLMSettings

# n × prompts × max_new_tokens of one /generate: the memory the answer (and the hf engine's step) needs grows
# with it. 262,144 = 128 completions of 2,048 tokens; raise it with --max-request-tokens.
MAX_REQUEST_TOKENS = 262_144
DEFAULT_WEIGHTS_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()  # as the trainer's

TokenId = Annotated[int, Field(strict=True, ge=0)]


class SamplingRequest(BaseModel):
    """``Sampling`` as it travels: checked here, so a bad value is a 422 naming the field, never a 500."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: Annotated[int, Field(strict=True, ge=1)]
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Field(strict=True, ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    stop_ids: list[TokenId] = []
    seed: Annotated[int, Field(strict=True)] | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_ids: Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    n: Annotated[int, Field(strict=True, ge=1)]
    sampling: SamplingRequest


class UpdateWeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    version: Annotated[int, Field(strict=True)]


def create_app(
    engine: Engine,
    *,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    max_request_tokens: int = MAX_REQUEST_TOKENS,
) -> FastAPI:
    """The server's routes over ``engine``. ``/update_weights`` loads only files inside ``weights_dir``."""
    app = FastAPI(title="llasa-grpo generation server")
    state: dict[str, Any] = {"version": 0, "specs": None}
    lock = threading.Lock()  # one engine call at a time: a weight update never interleaves with sampling
    allowed = Path(weights_dir).resolve()
    vocab = int(engine.info()["vocab_size"])

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {**engine.info(), "weights_version": state["version"]}

    @app.post("/generate")
    def generate(req: GenerateRequest) -> dict[str, Any]:
        s = req.sampling
        for where, ids in [*((f"prompt_ids[{i}]", p) for i, p in enumerate(req.prompt_ids)), ("stop_ids", s.stop_ids)]:
            if too_big := [t for t in ids if t >= vocab]:
                raise HTTPException(422, f"{where}: token id {too_big[0]} is outside the vocabulary (0..{vocab - 1})")
        tokens = len(req.prompt_ids) * req.n * s.max_new_tokens
        if tokens > max_request_tokens:
            raise HTTPException(
                422,
                f"prompts × n × max_new_tokens = {len(req.prompt_ids)} × {req.n} × {s.max_new_tokens} = {tokens} "
                f"exceeds the server's limit {max_request_tokens} (grpo.serve --max-request-tokens): "
                "send fewer completions per request (grpo.batch_size) or raise the limit",
            )
        sampling = Sampling(**{**s.model_dump(), "stop_ids": tuple(s.stop_ids)})
        with lock:
            samples = engine.generate(req.prompt_ids, req.n, sampling)
            version = state["version"]
        return {
            "weights_version": version,
            "samples": [
                [{"token_ids": list(s.token_ids), "logprobs": list(s.logprobs), "finished": s.finished} for s in g]
                for g in samples
            ],
        }

    @app.post("/update_weights")
    def update_weights(req: UpdateWeightsRequest) -> dict[str, int]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = _inside(Path(req.path), allowed)
        with lock:
            # Versions increase; 1 starts a new sequence (a new trainer's first push, e.g. a fresh run).
            if req.version < 1 or (req.version != 1 and req.version <= state["version"]):
                raise HTTPException(
                    409, f"version {req.version}: not after the served version {state['version']} (nor 1, a new run)"
                )
            try:
                weights = load_file(str(path))
            except (SafetensorError, OSError) as e:
                raise HTTPException(400, f"{path}: not a readable safetensors file: {e}") from None
            # Everything is checked before the engine sees a tensor: a bad file leaves the served model as it was.
            specs = getattr(engine, "weight_specs", lambda: None)() or state["specs"]
            if problem := _weights_problem(weights, specs):
                raise HTTPException(400, f"{path}: weights do not fit the served model: {problem}")
            try:
                engine.load_weights(weights.items())
            except (KeyError, ValueError, RuntimeError) as e:
                raise HTTPException(400, f"weights do not fit the served model: {e}") from None
            state["version"] = req.version
            state["specs"] = {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}
        return {"weights_version": req.version}

    return app


def _inside(path: Path, allowed: Path) -> Path:
    """``path`` resolved (links followed) if it is a .safetensors file inside ``allowed``; else a 403/400."""
    resolved = path.resolve()
    if not resolved.is_relative_to(allowed):
        raise HTTPException(
            403, f"{path}: outside the server's weights folder {allowed} (grpo.serve --weights-dir); not loaded"
        )
    if path.suffix != ".safetensors" or not resolved.is_file():
        raise HTTPException(400, f"no safetensors file at {path}")
    return resolved


def _weights_problem(weights: dict[str, Any], specs: dict[str, tuple[tuple[int, ...], Any]] | None) -> str | None:
    """Why ``weights`` cannot replace the served ones (names, shapes, dtypes, finiteness), or None."""
    if specs is not None:
        missing = sorted(set(specs) - set(weights))
        unexpected = sorted(set(weights) - set(specs))
        if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head may travel under one name
            return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        for name, t in weights.items():
            shape, dtype = specs[name]
            if tuple(t.shape) != shape:
                return f"{name} has shape {tuple(t.shape)}, the served model {shape}"
            if t.dtype != dtype:
                return f"{name} has dtype {t.dtype}, the served model {dtype}"
    for name, t in weights.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            return f"{name} holds NaN or inf"
    return None


def warn_if_public(host: str, what: str) -> None:
    """A service bound beyond this machine has no authentication: say what anyone who reaches it can do."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host}: this service has no authentication; anyone who reaches the port "
            f"can {what}. Bind 127.0.0.1 and tunnel (ssh -L) unless the network is trusted.",
            file=sys.stderr,
            flush=True,
        )


def main(argv: list[str] | None = None, prog: str = "python -m grpo.serve") -> None:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='The trainer side: [generation] backend = "vllm_server", server_url = "http://127.0.0.1:<port>".',
    )
    p.add_argument("--model", required=True, help="the trainer's model.path (HF id or folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default %(default)s")
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="vLLM's share of the GPU (default %(default)s)"
    )
    p.add_argument("--dtype", default="bfloat16", help="vLLM weight and activation dtype (default %(default)s)")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="vLLM's context limit in tokens (default: the model's)"
    )
    p.add_argument("--seed", type=int, default=0, help="the engine's seed; a request may carry its own (default 0)")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="hf: transformers, for CPU checks")
    p.add_argument(
        "--weights-dir",
        default=DEFAULT_WEIGHTS_DIR,
        help="the only folder /update_weights loads files from (default %(default)s, as the trainer's)",
    )
    p.add_argument(
        "--max-request-tokens",
        type=int,
        default=MAX_REQUEST_TOKENS,
        help="bound on prompts × n × max_new_tokens of one /generate (default %(default)s)",
    )
    args = p.parse_args(argv)
    import uvicorn

    warn_if_public(args.host, f"replace the served weights with files from {args.weights_dir} and run generations")

    if args.engine == "hf":
        engine: Engine = HFEngine(args.model, seed=args.seed)
    else:
        settings = VLLMSettings(
            model=args.model,
            gpu_memory_utilization=args.gpu_memory_utilization,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            seed=args.seed,
            in_process=True,  # the server process owns the engine; weights arrive as files
        )
        engine = VLLMEngine(settings)
    app = create_app(engine, weights_dir=args.weights_dir, max_request_tokens=args.max_request_tokens)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
