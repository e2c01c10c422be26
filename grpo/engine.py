"""Sampling engines behind one small interface, shared by the colocated backend and the generation server.

An ``Engine`` generates token ids with the log-probs of the distribution that sampled them and loads new
weights. ``VLLMEngine`` wraps ``vllm.LLM`` (imported lazily: this module imports on machines without vLLM);
``HFEngine`` does the same with ``transformers`` so that the server path runs, and is tested, on a CPU.
``samples_to_rollouts`` turns what any engine returns into ``Rollouts``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from transformers.generation.logits_process import LogitsProcessorList

from grpo.generation import Sampling, completion_mask, hf_sampling_config, left_pad
from grpo.rollouts import Rollouts


@dataclass(frozen=True)
class Sample:
    """One sampled completion: its tokens (stop token included when it stopped) and the engine's log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finished: bool


class Engine(Protocol):
    def info(self) -> dict[str, Any]:
        """At least ``model`` and ``vocab_size``: checked against the trainer's model."""
        ...

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[list[Sample]]:
        """``n`` samples for every prompt, in prompt order."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights (HF parameter names) and drop every cached prefix."""
        ...


def samples_to_rollouts(
    prompt_ids: Sequence[Sequence[int]], samples: Sequence[Sequence[Sample]], group_size: int, pad_id: int
) -> Rollouts:
    """Engine samples (one list of ``group_size`` per prompt) → ``Rollouts`` with ``sampler_logps``."""
    if len(samples) != len(prompt_ids) or any(len(s) != group_size for s in samples):
        got = [len(s) for s in samples]
        raise ValueError(f"[grpo] engine returned {got} samples for {len(prompt_ids)} prompts × {group_size}")
    flat = [s for group in samples for s in group]
    for s in flat:
        if len(s.token_ids) != len(s.logprobs):
            raise ValueError(f"[grpo] engine sample has {len(s.token_ids)} tokens but {len(s.logprobs)} log-probs")
    prompt, pmask = left_pad([list(p) for p in prompt_ids for _ in range(group_size)], pad_id)
    width = max(1, max(len(s.token_ids) for s in flat))
    comp = torch.full((len(flat), width), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(flat), width), dtype=torch.long)
    logps = torch.zeros((len(flat), width), dtype=torch.float32)
    for i, s in enumerate(flat):
        n = len(s.token_ids)
        comp[i, :n] = torch.tensor(s.token_ids, dtype=torch.long)
        cmask[i, :n] = 1
        logps[i, :n] = torch.tensor(s.logprobs, dtype=torch.float32)
    return Rollouts(
        prompt_ids=prompt,
        prompt_mask=pmask,
        completion_ids=comp,
        completion_mask=cmask,
        group_size=group_size,
        finished=torch.tensor([s.finished for s in flat], dtype=torch.bool),
        sampler_logps=logps,
    )


def sampling_processors(sampling: Sampling) -> list[Any]:
    """transformers' processors for ``sampling`` in generate's own order (penalty, temperature, top-k, top-p)."""
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out: list[Any] = []
    if sampling.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty=sampling.repetition_penalty))
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    return out


class _ChosenLogprobs:
    """The last logits processor: keeps the processed log-softmax of one step only, and at the next step (whose
    ``input_ids`` end with the token just chosen) gathers that token's log-prob: memory [N] per step."""

    def __init__(self) -> None:
        self.prev: Tensor | None = None  # [N, V] log-probs of the step before
        self.chosen: list[Tensor] = []  # [N] per step

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.prev is not None:
            self.chosen.append(self.prev.gather(-1, input_ids[:, -1:])[:, 0])
        self.prev = scores.float().log_softmax(-1)
        return scores

    def finish(self, new: Tensor) -> Tensor:
        """Log-probs [N, T] of the generated tokens ``new`` [N, T]."""
        if self.prev is not None and new.shape[1] > len(self.chosen):
            self.chosen.append(self.prev.gather(-1, new[:, len(self.chosen)][:, None])[:, 0])
        self.prev = None
        if not self.chosen:
            return torch.zeros(new.shape, dtype=torch.float32)
        return torch.stack(self.chosen[: new.shape[1]], dim=1)


class HFEngine:
    """``Engine`` over a transformers causal LM: ``generate`` with the processed scores (after temperature,
    top-k/top-p and repetition penalty), so its log-probs are those of the sampling distribution, as vLLM's
    ``processed_logprobs``. Slow; for the server path on machines without vLLM, and for tests."""

    def __init__(self, model_path: str, *, device: str = "cpu", seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.model = AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()
        self.device = device
        torch.manual_seed(seed)

    def info(self) -> dict[str, Any]:
        return {"model": self.model_path, "vocab_size": int(self.model.get_output_embeddings().weight.shape[0])}

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[list[Sample]]:
        pad = sampling.stop_ids[0] if sampling.stop_ids else 0
        ids, mask = left_pad([list(p) for p in prompt_ids for _ in range(n)], pad)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        # transformers would keep every step's [N, V] scores (output_scores: 23 GB for n = 2000 × 50 tokens of a
        # 65k vocabulary). Instead the same processors run as an explicit list whose last member keeps only
        # each chosen token's log-prob, [N] per step.
        recorder = _ChosenLogprobs()
        plain = replace(sampling, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
        new = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=hf_sampling_config(plain, pad),
            logits_processor=LogitsProcessorList([*sampling_processors(sampling), recorder]),
        )[:, ids.shape[1] :]
        logps = recorder.finish(new).cpu()  # [N, T]
        new = new.cpu()
        keep, finished = completion_mask(new, sampling.stop_ids)  # up to and including the first stop
        samples = [
            Sample(tuple(row[:k]), tuple(lp[:k]), f)
            for row, lp, k, f in zip(new.tolist(), logps.tolist(), keep.sum(1).tolist(), finished.tolist(), strict=True)
        ]
        return [samples[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def weight_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name → (shape, dtype) of every weight the model takes, for checking a file before loading it."""
        return {k: (tuple(v.shape), v.dtype) for k, v in self.model.state_dict().items()}

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        state = dict(weights)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # a tied head may be sent under one name only
        if missing or unexpected:
            raise KeyError(f"not the weights of {self.model_path}: missing {missing[:3]}, unexpected {unexpected[:3]}")


@dataclass(frozen=True)
class VLLMSettings:
    """How the vLLM engine is started (the ``[generation]`` section's vLLM keys)."""

    model: str
    gpu_memory_utilization: float = 0.3
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    enable_sleep_mode: bool = False
    seed: int = 0
    in_process: bool = True  # colocated: keep the engine in this process so weights pass by reference


class VLLMEngine:
    """``Engine`` over ``vllm.LLM``. Log-probs are the processed ones (after temperature and penalties), i.e.
    those of the distribution that actually sampled, which is what importance sampling needs."""

    def __init__(self, settings: VLLMSettings) -> None:
        if settings.in_process:
            # Colocated use pushes weights with `apply_model`, which must run in *this* process to pass
            # tensors by reference; vLLM's V1 engine otherwise runs the model in a child process.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "[grpo] generation.backend uses vLLM, which is not installed: pip install 'llasa-grpo[vllm]' "
                'in a CUDA environment, or set generation.backend = "hf"'
            ) from e
        self._vllm = vllm
        self.settings = settings
        self.llm = vllm.LLM(
            model=settings.model,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enable_sleep_mode=settings.enable_sleep_mode,
            seed=settings.seed,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
        )
        self.asleep = False

    def info(self) -> dict[str, Any]:
        hf = self.llm.llm_engine.model_config.hf_config
        return {"model": self.settings.model, "vocab_size": int(hf.vocab_size)}

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[list[Sample]]:
        self.wake_up()
        params = self._vllm.SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(sampling.stop_ids),
            # Stop on our stop ids only: vLLM would also stop at the model's own EOS token, and a completion that
            # ends without a stop id is rejected by _to_sample.
            ignore_eos=True,
            logprobs=0,  # the sampled token's own log-prob
            seed=sampling.seed,
            detokenize=False,
        )
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = [[_to_sample(c, sampling.stop_ids) for c in out.outputs] for out in outputs]
        if self.settings.enable_sleep_mode:
            self.llm.sleep(level=1)  # weights to CPU, KV cache freed: the trainer gets the GPU memory back
            self.asleep = True
        return result

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        self.wake_up()
        items = list(weights)
        self.llm.apply_model(lambda model: model.load_weights(items))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights


def _to_sample(completion: Any, stop_ids: Sequence[int]) -> Sample:
    """A vLLM ``CompletionOutput`` → ``Sample``; its ``logprobs`` is one {token_id: Logprob} dict per token."""
    ids = list(completion.token_ids)
    logps = [float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs or [], strict=False)]
    if len(logps) != len(ids) or any(math.isnan(x) for x in logps):
        raise RuntimeError("[grpo] vLLM returned no log-prob for some sampled tokens (is logprobs=0 honoured?)")
    finished = completion.finish_reason == "stop"
    if finished and (not ids or ids[-1] not in stop_ids):
        raise RuntimeError(f"[grpo] vLLM stopped without a stop token ({completion.stop_reason!r}); check stop_ids")
    return Sample(token_ids=tuple(ids), logprobs=tuple(logps), finished=finished)


def named_weights(model: torch.nn.Module) -> Iterable[tuple[str, Tensor]]:
    """The policy's weights under Hugging Face names, unwrapping DDP / torch.compile wrappers.

    FSDP-sharded weights are gathered whole, one tensor at a time: collective, so every rank must iterate.
    """
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    for name, tensor in model.state_dict().items():
        yield name, (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()
