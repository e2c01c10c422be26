"""Generation server: a vLLM engine on its own GPU, for ``generation.backend = "vllm_server"``.

    CUDA_VISIBLE_DEVICES=1 python -m grpo.serve --model SebastianBodza/SmolKartoffel-135M-v0.1 --port 8000

Routes: ``GET /health``, ``GET /info`` (model, vocab size, weights version), ``POST /generate`` (token ids in,
token ids and log-probs out), ``POST /update_weights`` (a safetensors file the trainer wrote to shared memory).
Binds 127.0.0.1 unless ``--host`` says otherwise: the server executes weight files it is pointed at.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from grpo.engine import Engine, HFEngine, Sampling, VLLMEngine, VLLMSettings


class GenerateRequest(BaseModel):
    prompt_ids: list[list[int]]
    n: int
    sampling: dict[str, Any]


class UpdateWeightsRequest(BaseModel):
    path: str
    version: int


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="llasa-grpo generation server")
    state = {"version": 0}
    lock = threading.Lock()  # one engine call at a time: a weight update never interleaves with sampling

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {**engine.info(), "weights_version": state["version"]}

    @app.post("/generate")
    def generate(req: GenerateRequest) -> dict[str, Any]:
        if req.n < 1 or not req.prompt_ids or any(not p for p in req.prompt_ids):
            raise HTTPException(422, "need n >= 1 and at least one non-empty prompt")
        try:
            sampling = Sampling(**{**req.sampling, "stop_ids": tuple(req.sampling.get("stop_ids", ()))})
        except TypeError as e:
            raise HTTPException(422, f"bad sampling parameters: {e}") from None
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
        from safetensors.torch import load_file

        path = Path(req.path)
        if path.suffix != ".safetensors" or not path.is_file():
            raise HTTPException(400, f"no safetensors file at {req.path}")
        weights = load_file(str(path))
        with lock:
            try:
                engine.load_weights(weights.items())
            except (KeyError, ValueError, RuntimeError) as e:
                raise HTTPException(400, f"weights do not fit the served model: {e}") from None
            state["version"] = req.version
        return {"weights_version": req.version}

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the trainer's model.path (HF id or folder)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="hf: transformers, for CPU checks")
    args = p.parse_args(argv)
    import uvicorn

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
    uvicorn.run(create_app(engine), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
