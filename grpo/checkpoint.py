"""Checkpoints a run can resume from exactly, and that ``transformers`` loads as a plain model folder.

    run_dir/checkpoint-<step>/
        model.safetensors, config.json, ...   model.save_pretrained (+ tokenizer files): from_pretrained-ready
        optimizer.pt, scheduler.pt            state dicts (torch.load(weights_only=True)); with run.parallel =
                                              "fsdp" whole (gathered), keyed by parameter name
        rng-rank<r>.pt                        python / numpy / torch (/ cuda) generator states of each rank
        trainer_state.json                    step, data position, world size

A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed when complete, so a crash mid-write never
leaves a folder that looks whole (a step saved again replaces its folder by renames too); only the newest
``keep_last`` are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_model
from torch import nn
from torch.distributed.tensor import DTensor

from grpo import distributed as dist

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def remove_checkpoints_after(run_dir: str | Path, step: int) -> list[Path]:
    """Delete the checkpoints of steps after ``step`` (on resume from an older one: an abandoned future that
    pruning and ``--resume auto`` would otherwise prefer); returns them."""
    later = [p for p in checkpoint_dirs(run_dir) if int(p.name.removeprefix("checkpoint-")) > step]
    for p in later:
        shutil.rmtree(p)
    return later


def find_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """``auto`` → newest checkpoint in ``output_dir`` (None if there is none); a run folder → its newest;
    a checkpoint folder → itself."""
    if resume == "auto":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise FileNotFoundError(f"[grpo] --resume {resume}: no checkpoint-<step> folder with {STATE_FILE} there")
    return found[-1]


# --------------------------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    """Every generator a step draws from (as tensors and plain values, so ``weights_only`` loading works)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------
# Save / load


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    tokenizer: Any = None,
    keep_last: int = 3,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (collective: every rank calls it; rank 0 writes the shared parts).

    An FSDP-sharded model and its optimizer state are gathered whole onto rank 0 first, so the checkpoint is
    the same plain model folder and resumes at any world size. ``rng`` replaces this rank's current generator
    states (a checkpoint of an earlier moment, e.g. the start of a step that failed).
    """
    sharded = dist.is_sharded(model)
    weights = dist.full_state_dict(model) if sharded else None  # collective
    optim_state = dist.full_optimizer_state_dict(model, optimizer) if sharded else optimizer.state_dict()
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    replaced = run_dir / f".old-checkpoint-{step}"
    if dist.rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
        tmp.mkdir(parents=True)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp, state_dict=weights)
        else:
            save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        info = {"step": step, "world_size": dist.world_size(), "sharded": sharded, **state}
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    dist.barrier()
    torch.save(rng or rng_state(), tmp / f"rng-rank{dist.rank()}.pt")
    dist.barrier()
    if dist.rank() == 0:
        if final.exists():  # saving a step again (e.g. resumed from it): swap by renames, then delete the old one
            final.rename(replaced)
        tmp.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_model_weights(model: nn.Module, directory: str | Path) -> None:
    """Load the safetensors weights of ``directory`` (single file or shards) into ``model`` in place.

    Tied parameters (e.g. a tied output head) are stored once; the others must all be present.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"[grpo] {directory}: no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    missing, unexpected = dist.load_full_state_dict(model, weights)
    own = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    loaded_ptrs = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if unexpected or untied:
        raise ValueError(
            f"[grpo] {directory}: weights do not match the model (missing {untied[:5]}, unexpected {unexpected[:5]}): "
            "was this checkpoint written for another model.path?"
        )


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from ``directory``; return the trainer state."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    load_model_weights(model, directory)
    device = next(model.parameters()).device
    if optimizer is not None:
        optim_state = torch.load(directory / "optimizer.pt", map_location=device, weights_only=True)
        if state.get("sharded", False):  # whole, keyed by parameter name: fits a sharded or a plain model
            dist.load_full_optimizer_state_dict(model, optimizer, optim_state)
        elif dist.is_sharded(model):
            raise ValueError(
                f"[grpo] {directory}: optimizer state written with run.parallel='replicate'; "
                "resume it with run.parallel = 'replicate'"
            )
        else:
            optimizer.load_state_dict(optim_state)
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng_file = directory / f"rng-rank{dist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        warnings.warn(
            f"[grpo] {directory} has no {rng_file.name} (saved with world size {state.get('world_size')}): "
            "sampling continues from a fresh random state",
            stacklevel=2,
        )
    return state
