"""Data parallelism through ``torch.distributed`` (torchrun), with every helper a no-op in a single process.

Each rank generates and scores its own whole groups. What must be global is gathered explicitly:
rewards (so a batch-scaled advantage uses the std of the whole batch), the loss normaliser (so the sum over
ranks and micro-batches is the full-batch loss), and the gradients, which are summed once per optimizer update.

Why not ``DistributedDataParallel``: its reducer hooks into the module's ``forward``, whereas the log-prob
computation runs the decoder body and the output head separately (to keep the [tokens, vocab] logits out of
memory). Summing the accumulated gradients ourselves, in flat buckets, is exact for any forward, needs no
``no_sync`` bookkeeping across micro-batches, and — because the loss is already divided by the global
normaliser — gives exactly the gradient one process would compute on the union of all ranks' data.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn


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
    """Sum ``.grad`` over ranks in flat buckets of about ``bucket_bytes`` (one collective per bucket)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
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


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
