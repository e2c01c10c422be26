"""The engine backends of the ``Generator`` interface (vLLM on a GPU; ``HFEngine`` for CPU checks).

- ``vllm_colocate``: a vLLM engine in the training process, on the training GPU. After each optimizer step the
  policy's tensors are handed to it by reference (``Engine.load_weights``) and its prefix cache is reset.
- ``vllm_server``: a vLLM engine in another process, usually on another GPU (``python -m grpo.serve``). Weights
  travel as one safetensors file in shared memory (``/dev/shm``) that the server loads; the server is checked
  at start-up to serve a model of the trainer's vocabulary, and every failure names the URL. Under torchrun
  all ranks share one server: rank 0 uploads the (identical) weights, every rank counts the version.

Both return the engine's log-probs in ``Rollouts.sampler_logps``; the trainer corrects the engine/trainer
mismatch with truncated importance sampling (``grpo.importance``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from safetensors.torch import save_file
from torch import Tensor, nn

from atomicfs import atomic_path
from grpo import distributed as dist
from grpo.engine import Engine, Sample, named_weights, samples_to_rollouts
from grpo.generation import Sampling
from grpo.http import RetriesExhausted, RetryPolicy, request
from grpo.rollouts import Rollouts


class EngineGenerator:
    """``Generator`` over any in-process ``Engine`` (``VLLMEngine`` when colocated; a fake one in tests)."""

    def __init__(self, engine: Engine, sampling: Sampling, *, pad_id: int) -> None:
        self.engine, self.sampling, self.pad_id = engine, sampling, pad_id

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        samples = self.engine.generate(prompt_ids, group_size, self.sampling)
        return samples_to_rollouts(prompt_ids, samples, group_size, self.pad_id)

    def sync_weights(self, model: nn.Module) -> None:
        self.engine.load_weights(named_weights(model))


class ServerError(RuntimeError):
    """The generation server failed or is unreachable; the message names the URL and what to do."""


class ServerGenerator:
    """``Generator`` talking to ``python -m grpo.serve`` over HTTP (127.0.0.1 unless configured otherwise)."""

    def __init__(
        self,
        url: str,
        sampling: Sampling,
        *,
        pad_id: int,
        vocab_size: int | None = None,
        timeout_s: float = 600.0,
        retries: int = 2,
        shm_dir: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.sampling, self.pad_id = sampling, pad_id
        self.retry = RetryPolicy(
            tries=retries + 1,
            errors=(httpx.ConnectError, httpx.ConnectTimeout),
            backoff=lambda k: min(2.0 ** (k - 1), 10.0),
        )
        self.client = client or httpx.Client(base_url=self.url, timeout=timeout_s)
        self.shm_dir = Path(shm_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()))
        self.weights_version = 0  # of the weights this trainer last pushed; 0 = none yet
        info = self._call("GET", "/info")
        if vocab_size is not None and info.get("vocab_size") != vocab_size:
            raise ServerError(
                f"[grpo] generation server {self.url} serves {info.get('model')!r} with vocab_size="
                f"{info.get('vocab_size')}, but the trainer's model has vocab_size={vocab_size}: start the server "
                "with the trainer's model.path"
            )

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        expected = self.weights_version  # read first: with overlap, sync_weights may run during the request
        body = {"prompt_ids": [list(p) for p in prompt_ids], "n": group_size, "sampling": self.sampling.to_dict()}
        reply = self._call("POST", "/generate", json=body)
        version = reply.get("weights_version")
        # With overlap one update may be pushed while this request waits for the server's lock (under torchrun
        # another rank's step can end first): that version is the policy the step trains, which is fine.
        pushed_meanwhile = expected > 0 and version == expected + 1
        if version != expected and not pushed_meanwhile:
            if expected == 0:
                why = "no weights were pushed yet: call sync_weights(model) first (GRPOTrainer.train does)"
            else:
                why = (
                    "the server was restarted or another run pushed weights to it (each run needs its own server): "
                    "restart training with --resume, which pushes the checkpoint's weights"
                )
            raise ServerError(
                f"[grpo] generation server {self.url} holds weights version {version}, the trainer expects "
                f"{expected}: {why}"
            )
        samples = [
            [Sample(tuple(s["token_ids"]), tuple(s["logprobs"]), bool(s["finished"])) for s in group]
            for group in reply["samples"]
        ]
        return samples_to_rollouts(prompt_ids, samples, group_size, self.pad_id)

    def sync_weights(self, model: nn.Module) -> None:
        """Push ``model``'s weights as the next version. Collective under torchrun (every rank calls it): the
        ranks hold identical weights, so rank 0 uploads, the others wait for it and advance their version."""
        sharded = dist.is_sharded(model)  # FSDP: every rank takes part in gathering the weights; rank 0 uploads
        if sharded or dist.rank() == 0:
            tensors = {name: t.contiguous().cpu() for name, t in named_weights(model)}
            if dist.rank() == 0:
                self._upload(tensors, self.weights_version + 1)
        dist.barrier()
        self.weights_version += 1

    def _upload(self, tensors: dict[str, Tensor], version: int) -> None:
        """Write the weights to shared memory (atomically: the server never sees half a file), let the server load
        them, delete."""
        path = self.shm_dir / f"llasa-grpo-weights-{uuid.uuid4().hex}.safetensors"
        try:
            with atomic_path(path) as tmp:
                save_file(_untie(tensors), str(tmp))
            self._call("POST", "/update_weights", json={"path": str(path), "version": version})
        finally:
            path.unlink(missing_ok=True)

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        """One request, retried only when no connection was made (the server never saw it). A request the
        server received is never repeated: after a read timeout it is still working on it under its lock."""
        try:
            response = request(self.client, method, route, self.retry, **kwargs)
        except RetriesExhausted as e:
            raise ServerError(
                f"[grpo] generation server {self.url} unreachable after {self.retry.tries} tries ({e.last}): "
                "start it with `python -m grpo.serve --model <model.path>` or fix generation.server_url"
            ) from None
        except httpx.TimeoutException as e:
            raise ServerError(
                f"[grpo] generation server {self.url}{route} gave no answer within the timeout ({e!r}): it may "
                "still be working; raise generation.server_timeout_s (e.g. for long max_new_tokens or large "
                "batches) and check the server's log"
            ) from e
        except httpx.TransportError as e:
            raise ServerError(
                f"[grpo] generation server {self.url}{route} failed mid-request ({e!r}): check the server's log"
            ) from e
        if response.status_code != 200:
            raise ServerError(f"[grpo] generation server {self.url}{route}: {response.status_code} {response.text}")
        return response.json()


def _untie(tensors: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share memory (tied embeddings): store a copy of the duplicates."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in tensors.items():
        ptr = t.data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.setdefault(ptr, name)
    return out
