"""Data parallelism through ``torch.distributed`` (torchrun), with every helper a no-op in a single process.

Each rank generates and scores its own whole groups. What must be global is gathered explicitly:
rewards (so a batch-scaled advantage uses the std of the whole batch), the loss normaliser (so the sum over
ranks and micro-batches is the full-batch loss), and the gradients, which are summed once per optimizer update.

Why not ``DistributedDataParallel``: its reducer hooks into the module's ``forward``, whereas the log-prob
computation runs the decoder body and the output head separately (to keep the [tokens, vocab] logits out of
memory). Summing the accumulated gradients ourselves, in flat buckets, is exact for any forward, needs no
``no_sync`` bookkeeping across micro-batches, and — because the loss is already divided by the global
normaliser — gives exactly the gradient one process would compute on the union of all ranks' data.

``run.parallel = "fsdp"`` (FSDP2) additionally shards every decoder layer's parameters, gradients and AdamW
state over the ranks (``shard_model``). Each layer is wrapped on its own, not the root, because each layer is
called through its own ``forward`` (FSDP's all-gather / reduce-scatter hooks fire), whereas the root's forward
is bypassed by the log-prob computation. The root-level parameters (embeddings, final norm, output head) stay
replicated and are summed by ``all_reduce_gradients`` like in replicate mode. FSDP reduce-scatters the layers'
gradients as a plain sum (divide factor 1): the loss is already divided by the global normaliser.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → this process's GPU when CUDA is available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"[grpo] run.device={name!r} but CUDA is not available: use 'auto' or 'cpu'")
    return device


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a single process.

    NCCL on CUDA, gloo on CPU. Each rank uses GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if not is_distributed():
        return t
    x = t.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts).to(t.device)


def all_reduce_sum(x: float) -> float:
    if not is_distributed():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.item()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the ranks that report each key (a scorer may omit a term on one rank)."""
    if not is_distributed():
        return dict(values)
    gathered: list[dict[str, float] | None] = [None] * world_size()
    dist.all_gather_object(gathered, dict(values))
    sums: dict[str, list[float]] = {}
    for d in gathered:
        for k, v in (d or {}).items():
            sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. one rank received SIGTERM: all stop after this step)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_parameters(module: nn.Module) -> None:
    """Start every rank from rank 0's weights (and buffers)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        x = t.data.to(_comm_device())
        dist.broadcast(x, src=0)
        if x is not t.data:
            t.data.copy_(x)


def all_reduce_gradients(params: Iterable[nn.Parameter], bucket_bytes: int = 32 << 20) -> None:
    """Sum ``.grad`` over ranks in flat buckets of about ``bucket_bytes`` (one collective per bucket).

    FSDP-sharded gradients (DTensors) are skipped: their backward already reduce-scattered them.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    bucket: list[Tensor] = []
    size = 0
    for g in [*grads, None]:
        if g is not None and (
            not bucket or (size + g.numel() * g.element_size() <= bucket_bytes and g.dtype == bucket[0].dtype)
        ):
            bucket.append(g)
            size += g.numel() * g.element_size()
            continue
        if bucket:
            flat = torch.cat([b.reshape(-1) for b in bucket]).to(_comm_device())
            dist.all_reduce(flat)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
        if g is not None:
            bucket, size = [g], g.numel() * g.element_size()


# --------------------------------------------------------------------------------------------------------------
# FSDP2 (run.parallel = "fsdp")


def shard_model(model: nn.Module) -> None:
    """Shard each decoder layer (``model.get_decoder().layers``) over all ranks with FSDP2's ``fully_shard``.

    Call after ``broadcast_parameters`` (every rank must shard the same full weights) and before building the
    optimizer (it must hold the sharded parameters). Gradients are reduce-scattered as sums and accumulate in
    the shards across micro-batches, so Σ over ranks and micro-batches is the full-batch gradient.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "[grpo] run.parallel='fsdp' needs torch.distributed: launch with torchrun --nproc-per-node N "
            "(N ≥ 2), or set run.parallel = 'replicate'"
        )
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not layers:
        raise ValueError(f"[grpo] run.parallel='fsdp': {type(model).__name__} has no get_decoder().layers to shard")
    for layer in layers:
        # Explicit True: each layer is its own FSDP root, and a root by default keeps its full weights after
        # forward, which would leave every layer unsharded after the first forward (e.g. the reference model's).
        fully_shard(layer, reshard_after_forward=True)
        layer.set_gradient_divide_factor(1.0)  # sum, not average: the loss already has the global normaliser
        layer.set_force_sum_reduction_for_comms(True)  # plain SUM collective (gloo has no PREMUL_SUM)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over replicated and FSDP-sharded gradients alike; returns the norm.

    ‖g‖ = √(Σ_replicated ‖g_p‖² + Σ_ranks Σ_sharded ‖local shard‖²): a replicated gradient is whole (and equal)
    on every rank, a sharded one counts once through its shards. Then g ← g · min(1, max_norm / (‖g‖ + 1e-6)).
    """
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(with_grad, max_norm).item()
    plain = [g for g in grads if not isinstance(g, DTensor)]
    sq = torch.stack([g.detach().float().pow(2).sum() for g in sharded]).sum()
    dist.all_reduce(sq)  # the shards' part, summed over ranks (model device: CUDA with NCCL, CPU with gloo)
    if plain:
        sq = sq + torch.stack([g.detach().float().pow(2).sum() for g in plain]).sum().to(sq.device)
    total = sq.sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in [*sharded, *plain]:
        g.mul_(coef.to(g.device, g.dtype))
    return total.item()


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's state dict on CPU, on rank 0 (other ranks get ``{}``); collective when sharded."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Load a whole state dict (on every rank) into a sharded or plain model; returns (missing, unexpected)."""
    if not is_sharded(model):
        result = model.load_state_dict(state, strict=False)
    else:
        result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
    return list(result.missing_keys), list(result.unexpected_keys)


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state keyed by parameter name, on CPU, on rank 0 (``{}`` elsewhere); collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of ``full_optimizer_state_dict`` (every rank passes the whole state; each keeps its shards)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
