"""Checkpoints a run can resume from exactly, and that ``transformers`` loads as a plain model folder.

    run_dir/checkpoint-<step>/
        model.safetensors, config.json, ...   model.save_pretrained (+ tokenizer files): from_pretrained-ready
        optimizer.pt, scheduler.pt            state dicts (torch.load(weights_only=True)); with run.parallel =
                                              "fsdp" whole (gathered), keyed by parameter name
        rng-rank<r>.pt                        python / numpy / torch (/ cuda) generator states of each rank
        trainer_state.json                    step, data position, world size
        README.md                             the model card, when the trainer has a card writer (train.py);
                                              evaluate.py refreshes its evaluation section, so it is not sized
        checkpoint.complete                   written last: step and every file's size (the completeness check)

A checkpoint is written into ``.tmp-checkpoint-<step>`` and renamed when complete, so a crash mid-write never
leaves a folder that looks whole (a step saved again replaces its folder by renames too); only the newest
``keep_last`` are kept. Completeness is one check, the marker: it is written last and deleted first (pruning
killed half-way leaves a folder without it, which nothing counts). ``validate_checkpoint`` also checks that
every file has the size the marker recorded and that the state file parses and names the folder's step;
``--resume auto`` takes the newest valid checkpoint and says why it skipped any others.

The run folder is also locked while a run trains in it (``lock_run_dir``), and ``check_writable`` is the
preflight that it can be written; a failed write says "no space left" or "not writable" and names the path.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn
from torch.distributed.tensor import DTensor

from grpo import distributed as dist

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MARKER = "checkpoint.complete"
LOCK_FILE = ".lock"
CARD_FILE = "README.md"  # documentation, edited in place later (evaluate.py): not in the marker's size list


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, naming the file and the problem."""


class RunDirError(OSError):
    """The run folder cannot be written (not writable, no space left) or is in use by another run."""


def _all_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    if not run_dir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir())


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with their marker) in ``run_dir``, oldest first."""
    return [p for _, p in _all_dirs(Path(run_dir)) if (p / MARKER).is_file()]


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder, its marker first: interrupted half-way, what is left counts as incomplete."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints_after(run_dir: str | Path, step: int) -> list[Path]:
    """Delete the checkpoints of steps after ``step`` (on resume from an older one: an abandoned future that
    pruning and ``--resume auto`` would otherwise prefer); returns them."""
    later = [p for n, p in _all_dirs(Path(run_dir)) if n > step]
    for p in later:
        remove_checkpoint(p)
    return later


def validate_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The trainer state of a complete, undamaged checkpoint; else ``CheckpointError`` naming file and problem.

    Cheap (no tensor is read): the marker exists and lists every file with its size, each file has that
    size, the torch files are whole zip archives, the state file is JSON whose step is the folder's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"[grpo] {directory}: not a checkpoint folder")
    marker = directory / MARKER
    if not marker.is_file():
        raise CheckpointError(f"[grpo] {marker}: missing: the checkpoint is incomplete (written or deleted half-way)")
    info = _read_json(marker)
    for name, size in dict(info.get("files", {})).items():
        f = directory / name
        if not f.is_file():
            raise CheckpointError(f"[grpo] {f}: missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"[grpo] {f}: {f.stat().st_size} bytes, {size} when written (truncated or damaged)")
        if f.suffix == ".pt" and not zipfile.is_zipfile(f):
            raise CheckpointError(f"[grpo] {f}: not a torch file (damaged)")
    state = _read_json(directory / STATE_FILE)
    step = state.get("step")
    named = _NAME.match(directory.name)
    if not isinstance(step, int) or step != info.get("step") or (named and step != int(named.group(1))):
        raise CheckpointError(
            f"[grpo] {directory / STATE_FILE}: step {step!r} disagrees with the folder {directory.name} "
            f"(marker step {info.get('step')!r}): not trusted"
        )
    if not isinstance(state.get("data"), Mapping):
        raise CheckpointError(f"[grpo] {directory / STATE_FILE}: no data position ('data')")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"[grpo] {path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"[grpo] {path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"[grpo] {path}: expected a JSON object, got {type(value).__name__}")
    return value


def newest_valid_checkpoint(run_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint of ``run_dir`` that validates; says which it took and why it skipped newer ones."""
    for _, path in reversed(_all_dirs(Path(run_dir))):
        try:
            validate_checkpoint(path)
        except CheckpointError as e:
            say(f"[grpo] skipping {path.name}: {e}")
            continue
        say(f"[grpo] resuming from {path} (the newest valid checkpoint)")
        return path
    return None


def find_checkpoint(resume: str, output_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """``auto`` → newest valid checkpoint in ``output_dir`` (None if there is none); a run folder → its newest
    valid one; a checkpoint folder → itself, validated (``CheckpointError`` names what is damaged)."""
    if resume == "auto":
        return newest_valid_checkpoint(output_dir, say)
    path = Path(resume)
    if (path / STATE_FILE).is_file() or (path / MARKER).is_file() or _NAME.match(path.name):
        validate_checkpoint(path)
        return path
    found = newest_valid_checkpoint(path, say)
    if found is None:
        raise FileNotFoundError(f"[grpo] --resume {resume}: no checkpoint-<step> folder there that is valid")
    return found


# --------------------------------------------------------------------------------------------------------------
# Resuming with another config: what may change

# Settings a resumed run keeps (a change is refused, naming them); any other change is applied from the resumed
# step on and printed. The optimizer's hyperparameters (lr, betas, eps, weight decay) are set from the config
# after its state is loaded; the lr schedule (schedule, warm-up, floor, max_steps) is always the config's,
# evaluated at the number of updates done so far; memory knobs (micro/generation batch sizes) change nothing else.
RESUME_FIXED: dict[str, str] = {
    "model.path": "the checkpoint holds that model's weights",
    "grpo.group_size": "it defines a step's groups, advantages and metrics",
    "grpo.batch_size": "it defines a step (its prompts, metrics and what max_steps means)",
    "grpo.num_iterations": "the lr schedule counts the optimizer updates as steps × num_iterations",
    "run.seed": "the prompt order of the epoch in progress is drawn from it",
}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any, str | None]]:
    """(key, old value, new value, why it may not change or None) for every setting that differs."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k), RESUME_FIXED.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------------------------------------------
# The run folder: writable, and one run at a time


def check_writable(run_dir: str | Path) -> None:
    """Preflight: ``run_dir`` (or the folder it will be created in) accepts files; else ``RunDirError``."""
    run_dir = Path(run_dir)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"[grpo] run.output_dir={str(run_dir)!r}: {existing} is not a folder: not writable")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise RunDirError(f"[grpo] run.output_dir={str(run_dir)!r}: {_why(e, existing)}: {existing}") from None


def lock_run_dir(run_dir: str | Path) -> IO[str]:
    """Take the run folder's exclusive lock (``run_dir/.lock``, with this PID) for as long as the returned file
    stays open; the kernel drops it when the process ends, however it ends. A second run fails, naming the PID."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # held open: the lock lives as long as the file
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirError(
            f"[grpo] run.output_dir={str(run_dir)!r} is in use by another run (PID {pid}, lock {path}): wait for it "
            "to end or stop it, or choose another --set run.output_dir=..."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _why(e: BaseException, path: Path) -> str:
    """'no space left on device' / 'not writable' for a failed write (torch says only "unexpected pos")."""
    code = getattr(e, "errno", None)
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 1 << 20):
        return "no space left on device" + (f" ({free / 2**20:.1f} MiB free)" if free is not None else "")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable"
    return f"write failed ({e})"


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
    readme: str | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically (collective: every rank calls it; rank 0 writes the shared parts).

    An FSDP-sharded model and its optimizer state are gathered whole onto rank 0 first, so the checkpoint is
    the same plain model folder and resumes at any world size. ``rng`` replaces this rank's current generator
    states (a checkpoint of an earlier moment, e.g. the start of a step that failed). ``readme`` (rank 0's
    counts) is written as the folder's model card, ``README.md``.
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
        with _writing(tmp):
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
            if readme is not None:
                (tmp / CARD_FILE).write_text(readme, encoding="utf-8")
    dist.barrier()
    with _writing(tmp):
        torch.save(rng or rng_state(), tmp / f"rng-rank{dist.rank()}.pt")
    dist.barrier()
    if dist.rank() == 0:
        with _writing(tmp):  # the marker last: only now does the folder count as a checkpoint
            files = {
                str(f.relative_to(tmp)): f.stat().st_size
                for f in sorted(tmp.rglob("*"))
                if f.is_file() and f.relative_to(tmp) != Path(CARD_FILE)
            }
            marker = json.dumps({"step": step, "files": files}, indent=2) + "\n"
            (tmp / MARKER).write_text(marker, encoding="utf-8")
        if final.exists():  # saving a step again (e.g. resumed from it): swap by renames, then delete the old one
            final.rename(replaced)
        tmp.rename(final)
        remove_checkpoint(replaced)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            remove_checkpoint(old)
    dist.barrier()
    return final


class _writing:
    """Inside: a failed write removes the half-written folder and becomes ``RunDirError`` ("no space left on
    device" / "not writable", with the path) instead of e.g. torch's "inline_container.cc: unexpected pos"."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        if error is None:
            return False
        shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, RunDirError):
            raise RunDirError(
                f"[grpo] cannot write checkpoint {self.tmp}: {_why(error, self.tmp.parent)} (removed the partial "
                "folder; earlier checkpoints are untouched)"
            ) from error
        return False


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
    state = validate_checkpoint(directory)
    try:
        load_model_weights(model, directory)
    except (OSError, RuntimeError, SafetensorError) as e:  # e.g. "incomplete metadata" of a damaged file
        raise CheckpointError(f"[grpo] {directory}: model weights cannot be read: {e}") from None
    device = next(model.parameters()).device
    if optimizer is not None:
        optim_state = _torch_load(directory / "optimizer.pt", map_location=device)
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
        scheduler.load_state_dict(_torch_load(directory / "scheduler.pt"))
    rng_file = directory / f"rng-rank{dist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(_torch_load(rng_file))
    else:
        warnings.warn(
            f"[grpo] {directory} has no {rng_file.name} (saved with world size {state.get('world_size')}): "
            "sampling continues from a fresh random state",
            stacklevel=2,
        )
    return state


def _torch_load(path: Path, **kwargs: Any) -> Any:
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"[grpo] {path}: cannot be read ({e})") from None
