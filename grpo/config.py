"""TOML → nested frozen dataclasses, and the loop's own config sections.

The loader is generic: it walks the type hints of any dataclass tree, so each package keeps its config next to
the code it configures (``reward/config.py``, ``tts/config.py``) and one root dataclass composes the sections.
Everything is checked before anything heavy loads: unknown keys (with a close match suggested), wrong types,
and the dataclasses' own ``__post_init__`` checks, each reported as ``file: section.key``.

    cfg = load_config(Config, "small.toml", overrides=["grpo.beta=0.04"])
    Path("run/config.resolved.toml").write_text(dump_toml(cfg))
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, already phrased for the user: ``small.toml: grpo.group_size=1: GRPO needs ...``."""


class FieldError(ValueError):
    """Raised by a config dataclass's ``__post_init__`` to blame one key; the loader adds file and section."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        super().__init__(f"{key}={value!r}: {message}")
        self.key, self.value, self.message = key, value, message


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (TOML) into ``cls``, then apply ``--set``-style ``overrides`` ("section.key=<TOML value>")."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{source}: no such config file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
    cfg = from_dict(cls, raw, source=source)
    if not overrides:
        return cfg
    # Overrides land on the fully resolved tree, so `--set reward.weights.wer=2` keeps the other default weights.
    merged = to_dict(cfg)
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(cls, merged, keys, value, item)
    return from_dict(cls, merged, source="--set " + " ".join(overrides))


def from_dict(cls: type[T], raw: Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from nested mappings, checking keys, types and the dataclasses' own checks."""
    return _build(cls, raw, source, ())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"grpo.beta=0.04"`` → (["grpo", "beta"], 0.04). The value is a TOML literal; bare words are strings."""
    key, sep, text = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set grpo.beta=0.04")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # `--set model.path=/data/x` without quotes
    return keys, value


def _set_path(cls: type, tree: dict[str, Any], keys: list[str], value: Any, item: str) -> None:
    hint: Any = cls
    node = tree
    for i, key in enumerate(keys):
        where = ".".join(keys[: i + 1])
        if dataclasses.is_dataclass(hint):
            hints = _hints(hint)
            if key not in hints:
                raise ConfigError(f"--set {item}: unknown key {where}{_suggest(key, hints)}")
            hint = hints[key]
        elif _is_mapping(hint):
            hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        else:
            raise ConfigError(f"--set {item}: {'.'.join(keys[:i])} is a value, not a section")
        if i == len(keys) - 1:
            node[key] = value
        else:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]


# --------------------------------------------------------------------------------------------------------------
# Type checking


def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known keys: {', '.join(sorted(known))}){hint}"


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping)


def _build(cls: type, raw: Any, source: str, path: tuple[str, ...]) -> Any:
    where = ".".join(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a table, got {_describe(raw)}")
    hints = _hints(cls)
    unknown = [k for k in raw if k not in hints]
    if unknown:
        key = ".".join((*path, unknown[0]))
        raise ConfigError(f"{source}: {key}: unknown key{_suggest(unknown[0], hints)}")
    kwargs = {k: _convert(hints[k], v, source, (*path, k)) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:
        key = ".".join((*path, e.key))
        raise ConfigError(f"{source}: {key}={e.value!r}: {e.message}") from None
    except (ValueError, TypeError) as e:
        msg = str(e)
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{source}: {msg if msg.startswith('[') else prefix + msg}") from None


def _convert(hint: Any, value: Any, source: str, path: tuple[str, ...]) -> Any:
    """Check ``value`` against type hint ``hint``; convert lists to tuples and ints to floats where declared."""
    key = ".".join(path)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {expected}, got {_describe(value)}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):  # already built (a default, or a tree passed back in)
            return value
        return _build(hint, value, source, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise bad(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise bad("a path string")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"an array {_type_name(hint)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, source, (*path, str(i))) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"an array of {len(args)} values")
        return tuple(_convert(a, v, source, (*path, str(i))) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (list, Sequence) or hint in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise bad("an array")
        item = args[0] if args else Any
        return [_convert(item, v, source, (*path, str(i))) for i, v in enumerate(value)]
    if _is_mapping(hint):
        if not isinstance(value, Mapping):
            raise bad("a table")
        kt, vt = args if args else (Any, Any)
        return {
            _convert(kt, k, source, (*path, str(k))): _convert(vt, v, source, (*path, str(k))) for k, v in value.items()
        }
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise bad(hint.__name__)
        return value
    raise ConfigError(f"{source}: {key}: the loader cannot check type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------------------------
# Writing


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass tree as plain nested dicts (tuples stay tuples, Paths become strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(plain(x) for x in v)
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def dump_toml(cfg: Any) -> str:
    """Serialise a config tree as TOML that ``load_config`` reads back to an equal tree.

    TOML has no null: ``None`` values are written as comments and thus load back as their (``None``) default.
    """
    lines: list[str] = []

    def table(prefix: str, data: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not tables):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"# {_key(k)} = none" if v is None else f"{_key(k)} = {_value(v)}")
        for k, v in tables.items():
            table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", to_dict(cfg))
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"[grpo] cannot write {v!r} as TOML")


# --------------------------------------------------------------------------------------------------------------
# The loop's own sections: [generation], [grpo], [optim], [run]


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


@dataclass(frozen=True)
class RunConfig:
    """Where the run goes and how often it writes."""

    output_dir: str = "runs/default"
    max_steps: int = 100  # GRPO steps (each: one generation, num_iterations optimizer updates)
    seed: int = 0
    save_every: int = 50  # steps between checkpoints (0: only at the end)
    keep_last: int = 3  # checkpoints kept
    sample_every: int = 10  # steps between written samples (0: never)
    num_samples: int = 4  # completions written each time
    log_every: int = 1  # steps between metric lines
    device: str = "auto"  # "auto": cuda (this process's local rank) when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where the device supports it
    gradient_checkpointing: bool = False
    tensorboard: bool = True  # also write TensorBoard scalars when `tensorboard` is installed
    # Multi-process (torchrun) training: "replicate" keeps the whole model on every rank; "fsdp" (FSDP2) shards
    # the decoder layers' weights, gradients and optimizer state over the ranks (a single process: no sharding).
    parallel: Literal["replicate", "fsdp"] = "replicate"

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise FieldError("output_dir", self.output_dir, "must name a folder")
        for name in ("max_steps", "keep_last", "num_samples", "log_every"):
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be >= 1")
        for name in ("save_every", "sample_every"):
            if getattr(self, name) < 0:
                raise FieldError(name, getattr(self, name), "must be >= 0 (0 turns it off)")
        if self.parallel not in ("replicate", "fsdp"):
            raise FieldError("parallel", self.parallel, "must be 'replicate' or 'fsdp'")


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
