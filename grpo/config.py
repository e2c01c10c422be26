"""The loop's own config sections: ``[generation]``, ``[grpo]``, ``[optim]``, ``[run]``.

Plain frozen dataclasses; ``tomlconfig`` fills them from TOML and reports a ``FieldError`` as ``file: section.key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tomlconfig import FieldError


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling; the same parameters for every backend so that switching backend changes speed, not behaviour."""

    # "hf": transformers generate (CPU, debugging); "vllm_colocate": vLLM on the training GPU;
    # "vllm_server": vLLM in `python -m grpo.serve` on another GPU (server_url)
    backend: Literal["hf", "vllm_colocate", "vllm_server"] = "hf"
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    # Sequences per generate call (a memory knob of the hf backend), in whole groups; 0 = the whole step at
    # once. Not the training batch: that is grpo.batch_size.
    batch_size: int = 0
    # hf backend: "loop" is grpo/decode.py (static KV cache, inverse-CDF sampling: the same distribution,
    # faster); "generate" is transformers' model.generate
    hf_decoder: Literal["loop", "generate"] = "loop"
    # hf loop: "policy" samples with the policy's own weights (the sampler is the policy); "bfloat16" with
    # bfloat16 copies of them, cast at each generation and freed after it: a decode step at a few rows reads
    # every weight once, so half the bytes is ~1.3x the tokens/s of the loop on a CPU (bench/step.py); its
    # log-probs are returned and the loss is reweighted by pi_old / pi_sampler, as for vLLM.
    hf_sampler_weights: Literal["policy", "bfloat16"] = "policy"
    vllm_gpu_memory_utilization: float = 0.3  # vllm_colocate: the engine's share of the training GPU
    vllm_sleep: bool = False  # vllm_colocate: free the engine's GPU memory between generations (sleep mode)
    vllm_dtype: str = "bfloat16"
    server_url: str = "http://127.0.0.1:8000"  # vllm_server
    server_timeout_s: float = 600.0
    # Sample the next step while this one is scored and trained (one step off-policy, corrected by the
    # importance weights) and score while the log-probs are computed. Only with vllm_server: the other
    # backends sample from the very weights being updated.
    overlap: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise FieldError("max_new_tokens", self.max_new_tokens, "must be >= 1")
        if not self.temperature > 0:
            raise FieldError("temperature", self.temperature, "must be > 0 (sampling; greedy gives no group spread)")
        if not 0 < self.top_p <= 1:
            raise FieldError("top_p", self.top_p, "must lie in (0, 1]")
        if self.top_k < 0:
            raise FieldError("top_k", self.top_k, "must be >= 0 (0 turns it off)")
        if not self.repetition_penalty > 0:
            raise FieldError("repetition_penalty", self.repetition_penalty, "must be > 0 (1.0 turns it off)")
        if self.batch_size < 0:
            raise FieldError("batch_size", self.batch_size, "must be >= 0 (0: the whole step in one call)")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise FieldError("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, "must lie in (0, 1]")
        if self.hf_sampler_weights != "policy" and (self.backend != "hf" or self.hf_decoder != "loop"):
            raise FieldError(
                "hf_sampler_weights",
                self.hf_sampler_weights,
                f"needs backend = 'hf' and hf_decoder = 'loop', not {self.backend!r} / {self.hf_decoder!r}",
            )
        if self.overlap and self.backend != "vllm_server":
            raise FieldError("overlap", self.overlap, f"needs backend = 'vllm_server', not {self.backend!r}")
        if not self.server_timeout_s > 0:
            raise FieldError("server_timeout_s", self.server_timeout_s, "must be > 0")


@dataclass(frozen=True)
class GRPOConfig:
    """One step: ``batch_size / group_size`` prompts × ``group_size`` completions per process, μ updates on them."""

    group_size: int = 4  # G completions per prompt
    # Completions per optimizer step and process (= prompts per step × G). Not generation.batch_size, which
    # only splits the sampling of these completions into generate calls.
    batch_size: int = 32
    micro_batch_size: int = 4  # completions per forward/backward (gradient accumulation over the batch)
    num_iterations: int = 1  # μ: optimizer updates per generated batch (> 1 needs the sampling policy's log-probs)
    beta: float = 0.0  # KL weight; 0 loads no reference model
    eps_low: float = 0.2  # ratio clip 1 - eps_low
    eps_high: float = 0.2  # ratio clip 1 + eps_high (DAPO's clip-higher uses 0.28)
    advantage_scale: Literal["group", "batch", "none"] = "group"  # divide by the group's / batch's std, or not
    advantage_eps: float = 1e-4
    loss_aggregation: Literal["token", "sequence", "constant"] = "token"
    logprob_chunk_tokens: int = 256  # lm_head positions per chunk for log-probs; peak memory ∝ chunk (bench/)
    # Truncated importance sampling against the sampler's log-probs (vLLM backends; grpo/importance.py)
    importance_level: Literal["token", "sequence"] = "token"
    importance_cap: float = 3.0  # C: weights above it are truncated to C (or masked)
    importance_mode: Literal["truncate", "mask"] = "truncate"
    # The frozen KL reference (β > 0; grpo/reference.py). bfloat16 halves its memory, but at SmolKartoffel's
    # real weights its log-probs were off by 0.035 nats per token (mean; bench/step.py), too much next to the
    # KL it anchors, so float32 is the default. A device ("cpu", "cuda:1") moves it off the policy's device.
    reference_dtype: Literal["float32", "bfloat16"] = "float32"
    reference_device: str = ""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise FieldError("group_size", self.group_size, "GRPO needs at least 2 completions per prompt")
        if self.batch_size < 1 or self.batch_size % self.group_size:
            raise FieldError(
                "batch_size", self.batch_size, f"must be a positive multiple of group_size={self.group_size}"
            )
        if not 1 <= self.micro_batch_size:
            raise FieldError("micro_batch_size", self.micro_batch_size, "must be >= 1")
        if self.num_iterations < 1:
            raise FieldError("num_iterations", self.num_iterations, "must be >= 1")
        if self.beta < 0:
            raise FieldError("beta", self.beta, "must be >= 0")
        for name in ("eps_low", "eps_high", "advantage_eps"):
            if getattr(self, name) < 0:
                raise FieldError(name, getattr(self, name), "must be >= 0")
        if self.eps_low >= 1:
            raise FieldError("eps_low", self.eps_low, "must be < 1 (the lower clip is 1 - eps_low)")
        if self.logprob_chunk_tokens < 1:
            raise FieldError("logprob_chunk_tokens", self.logprob_chunk_tokens, "must be >= 1")
        if not self.importance_cap > 0:
            raise FieldError("importance_cap", self.importance_cap, "must be > 0 (3 is the usual choice)")

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then constant or cosine; weight decay skips biases and norms (as HF Trainer)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_ratio: float = 0.0  # of all optimizer updates
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise FieldError("lr", self.lr, "must be > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise FieldError("betas", self.betas, "each must lie in [0, 1)")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", self.weight_decay, "must be >= 0")
        if not self.adam_eps > 0:
            raise FieldError("adam_eps", self.adam_eps, "must be > 0 (1e-8 is the usual choice)")
        if self.max_grad_norm < 0:
            raise FieldError("max_grad_norm", self.max_grad_norm, "must be >= 0 (0 turns clipping off)")
        if not 0 <= self.warmup_ratio < 1:
            raise FieldError("warmup_ratio", self.warmup_ratio, "must lie in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise FieldError("min_lr_ratio", self.min_lr_ratio, "must lie in [0, 1]")


# run.report_to's sinks (grpo/tracking.py); "jsonl" is always written, whether listed or not.
SINKS = ("jsonl", "tensorboard", "wandb", "trackio")


@dataclass(frozen=True)
class RunConfig:
    """Where the run goes and how often it writes."""

    output_dir: str = "runs/default"
    max_steps: int = 100  # GRPO steps (each: one generation, num_iterations optimizer updates)
    seed: int = 0
    save_every: int = 50  # steps between checkpoints (0: only at the end)
    keep_last: int = 3  # checkpoints kept
    sample_every: int = 10  # steps between written samples, and at step 1: the starting policy (0: never)
    num_samples: int = 4  # completions written each time
    log_every: int = 1  # steps between metric lines
    device: str = "auto"  # "auto": cuda (this process's local rank) when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the device supports it
    gradient_checkpointing: bool = False
    # Where metrics, the sample tables and their audio go: "jsonl" (metrics.jsonl, always written),
    # "tensorboard", "wandb", "trackio" (each needs its extra: pip install 'llasa-grpo[wandb]')
    report_to: tuple[str, ...] = ("jsonl",)
    tracker_project: str = "llasa-grpo"  # the wandb / trackio project
    run_name: str = ""  # the wandb / trackio run name; "" = the output_dir folder's name
    push_to_hub: str = ""  # a Hub repo id ("org/name"): train.py pushes the final checkpoint there; "" = off
    # Multi-process (torchrun) training: "replicate" keeps the whole model on every rank; "fsdp" (FSDP2) shards
    # the decoder layers' weights, gradients and optimizer state over the ranks (a single process: no sharding).
    parallel: Literal["replicate", "fsdp"] = "replicate"

    # Keys of older configs, with what replaced them (tomlconfig names the replacement instead of "unknown key").
    retired_keys: ClassVar[dict[str, str]] = {
        "tensorboard": 'replaced by run.report_to: report_to = ["jsonl", "tensorboard"] (or ["jsonl"] for off)'
    }

    def __post_init__(self) -> None:
        unknown = [s for s in self.report_to if s not in SINKS]
        if unknown or len(set(self.report_to)) != len(self.report_to):
            what = f"unknown sink {unknown[0]!r}" if unknown else "a sink listed twice"
            known = ", ".join(map(repr, SINKS))
            raise FieldError("report_to", list(self.report_to), f"{what}: choose among {known}, each at most once")
        if self.push_to_hub and self.push_to_hub.count("/") != 1:
            raise FieldError("push_to_hub", self.push_to_hub, "expected a Hub repo id like 'org/name' ('' = off)")
        if not self.output_dir:
            raise FieldError("output_dir", self.output_dir, "must name a folder")
        for name in ("max_steps", "keep_last", "num_samples", "log_every"):
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be >= 1")
        for name in ("save_every", "sample_every"):
            if getattr(self, name) < 0:
                raise FieldError(name, getattr(self, name), "must be >= 0 (0 turns it off)")


@dataclass(frozen=True)
class TrainingConfig:
    """The sections ``GRPOTrainer`` reads; a root config composes them with the task's own sections."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_training_sampling(self.generation, self.run.parallel)


# Sampling settings that change the distribution beyond temperature, and their "off" values.
_PROCESSED_SAMPLING = (("top_p", 1.0), ("top_k", 0), ("repetition_penalty", 1.0))


def check_training_sampling(gen: GenerationConfig, parallel: str = "replicate") -> None:
    """Refuse, for training, sampling that GRPO cannot account for.

    ``hf_decoder = "generate"`` (and the loop's FSDP fallback to it) samples with ``model.generate`` and returns
    no sampler log-probs, so π_old is the temperature-only policy; top-p, top-k or a repetition penalty would
    make the sampler another distribution (0.69 nats/token apart at top_p = 0.5), uncorrected. The default
    loop (``grpo/decode.py``), the vLLM backends and ``grpo.serve --engine hf`` return the processed
    log-probs, and the importance weights correct for the difference.
    """
    if gen.hf_sampler_weights != "policy" and parallel == "fsdp":
        raise FieldError(
            "generation.hf_sampler_weights",
            gen.hf_sampler_weights,
            "needs whole weights on each rank; under FSDP the hf backend samples with model.generate: use 'policy'",
        )
    if gen.backend != "hf" or (gen.hf_decoder == "loop" and parallel != "fsdp"):
        return
    for key, off in _PROCESSED_SAMPLING:
        value = getattr(gen, key)
        if value != off:
            raise FieldError(
                f"generation.{key}",
                value,
                f"generation.backend = 'hf' with model.generate (hf_decoder = 'generate', or FSDP) trains on the "
                f"temperature-only policy and returns no sampler log-probs to correct a processed distribution: "
                f"set generation.{key} = {off!r}, or use hf_decoder = 'loop' (without FSDP) or a vllm backend "
                "(whose processed log-probs the importance weights correct)",
            )
