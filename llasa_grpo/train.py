"""GRPO training of a Llasa-style TTS model.

    python train.py --config tiny.toml                       # offline demo on CPU
    python train.py --config small.toml --set grpo.beta=0.0  # override single keys (TOML values)
    python train.py --config small.toml --resume auto        # continue from the newest checkpoint
    python train.py --config small.toml --print-config       # the resolved config as TOML, then exit
    torchrun --nproc-per-node 2 train.py --config small.toml # data parallel, one process per GPU

Installed, the same program is ``llasa-grpo train``.

Parse the config, check that models and data are reachable, build the components, run the loop, summarise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from atomicfs import write_text
from grpo import distributed as dist
from grpo.checkpoint import (
    LOCK_FILE,
    CheckpointError,
    RunDirError,
    check_writable,
    checkpoint_dirs,
    config_changes,
    find_checkpoint,
    lock_run_dir,
    validate_checkpoint,
)
from grpo.metrics import METRICS_FILE, read_metrics, summarize
from grpo.trainer import GRPOTrainer, TrainResult
from llasa_grpo.card import card_writer
from tomlconfig import ConfigError, FieldError, dump_toml, to_dict

RESOLVED_CONFIG = "config.resolved.toml"
RESUME_LOG = "resumes.jsonl"  # one line per resume: the checkpoint and every setting that changed


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from llasa_grpo.config import keys_help  # reads no model code: --help stays quick

    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="TOML file (see tiny.toml, small.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one key")
    p.add_argument(
        "--resume", metavar="DIR|auto", help="a checkpoint or run folder, or 'auto': newest in run.output_dir"
    )
    p.add_argument("--overwrite", action="store_true", help="delete run.output_dir's previous run first")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config (after --config and --set) as TOML, exit"
    )
    args = p.parse_args(argv)
    args.prog = prog  # the resume hint repeats the command the user ran
    return args


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the config the run would use, as the TOML ``config.resolved.toml`` would hold; it loads
    no model (the config tree imports no torch)."""
    from llasa_grpo import config

    try:
        cfg = config.load(args.config, args.set)
        cfg.training  # noqa: B018 (its checks, as a run makes them)
    except FieldError as e:
        print(f"error: {args.config}: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(dump_toml(cfg), end="")
    return 0


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (or None), refusing to mix a new run into an old run folder."""
    say = print if dist.rank() == 0 else (lambda _m: None)
    if resume is not None:
        ckpt = find_checkpoint(resume, run_dir, say=say)
        if ckpt is None:
            say(f"[train] --resume auto: no valid checkpoint in {run_dir}, starting from the beginning")
        return ckpt
    old = checkpoint_dirs(run_dir) or (run_dir / METRICS_FILE).is_file()
    if old and not overwrite:
        raise ConfigError(
            f"run.output_dir={str(run_dir)!r} holds a previous run: continue it with --resume auto, "
            f"start over with --overwrite, or choose another --set run.output_dir=..."
        )
    if old and dist.rank() == 0:
        for entry in run_dir.iterdir():  # all but the lock this process holds
            if entry.name != LOCK_FILE:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return None


def check_resume_config(checkpoint: Path, run_dir: Path, cfg: Any) -> list[tuple[str, Any, Any, str | None]]:
    """Compare the config ``checkpoint`` was trained with (recorded in it, else the run folder's resolved config)
    with this one: refuse a change of a ``RESUME_FIXED`` setting, print the others (they apply), record all."""
    recorded = validate_checkpoint(checkpoint).get("config")
    if recorded is None and (run_dir / RESOLVED_CONFIG).is_file():
        recorded = tomllib.loads((run_dir / RESOLVED_CONFIG).read_text(encoding="utf-8"))
    if recorded is None:
        print(f"[train] {checkpoint} records no config: cannot say which settings changed", flush=True)
        return []
    changes = config_changes(recorded, to_dict(cfg))
    refused = [c for c in changes if c[3]]
    if refused:
        raise ConfigError(
            f"--resume {checkpoint}: "
            + "; ".join(f"{k} {a!r} → {b!r} cannot change when resuming ({why})" for k, a, b, why in refused)
            + ": keep the checkpoint's value, or start a new run (--overwrite or another run.output_dir)"
        )
    if dist.rank() == 0:
        if changes:
            listed = ", ".join(f"{k} {a!r} → {b!r}" for k, a, b, _ in changes)
            print(f"[train] resuming {checkpoint} with changed settings (applied): {listed}", flush=True)
        else:
            print(f"[train] resuming {checkpoint} with its own settings", flush=True)
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "checkpoint": str(checkpoint),
            "changes": {k: {"from": a, "to": b} for k, a, b, _ in changes},
        }
        with open(run_dir / RESUME_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    return changes


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if args.print_config:
        return print_config(args)
    started = time.perf_counter()
    from llasa_grpo import recipe  # imports torch/transformers: after argparse so --help is instant
    from tts.data import DataError

    try:
        cfg = recipe.load(args.config, args.set)
        try:
            cfg.training  # noqa: B018 (its checks: the sampling that training can account for)
        except FieldError as e:
            raise ConfigError(f"{args.config}: {e}") from None
        recipe.check_resources(cfg, source=args.config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = dist.init_distributed(cfg.run.device)
    lock = None  # held until this function returns (the kernel releases it however the process ends)
    try:
        run_dir = Path(cfg.run.output_dir)
        if info.is_main:
            check_writable(run_dir)
            lock = lock_run_dir(run_dir)
        resume = prepare_run_dir(run_dir, args.resume, args.overwrite)
        if resume is not None:
            check_resume_config(resume, run_dir, cfg)
        dist.barrier()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one progress bar: the loop's
        parts = recipe.build_components(cfg, info.device)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / RESOLVED_CONFIG, dump_toml(cfg))
            print(recipe.describe(cfg, parts, info.device, info.world_size), flush=True)
        trainer = GRPOTrainer(
            parts.model,
            parts.generator,
            parts.scorer,
            parts.prompts,
            cfg.training,
            ref_model=parts.ref_model,
            tokenizer=parts.tokenizer,
            dist_info=info,
        )
        trainer.checkpoint_extra = {"config": to_dict(cfg)}  # what a resume compares against
        trainer.model_card = card_writer(cfg)  # README.md of every checkpoint
        try:
            result = trainer.train(resume=resume)
        except Exception:
            if info.is_main and checkpoint_dirs(run_dir):  # a failed step still leaves its predecessors resumable
                saved = f"saved {trainer.failure_checkpoint}; " if trainer.failure_checkpoint else ""
                print(f"[train] {saved}resume with: {resume_command(args, 'auto')}", file=sys.stderr, flush=True)
            raise
    except (ConfigError, FileNotFoundError, DataError, CheckpointError, RunDirError) as e:  # phrased for the user
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
        if lock is not None:
            lock.close()
    if info.is_main:
        print(report(result, args, time.perf_counter() - started))
        if cfg.run.push_to_hub:
            return push_final(result, cfg.run.push_to_hub)
    return 0


def push_final(result: TrainResult, repo: str) -> int:
    """run.push_to_hub: the run's last checkpoint to ``repo`` once the run has reached run.max_steps."""
    from llasa_grpo.push import push

    if result.interrupted or result.checkpoint is None:
        where = result.checkpoint or "CHECKPOINT"
        print(f"[train] not pushed (the run stopped early): push later with: llasa-grpo push {where} {repo}")
        return 0
    try:
        operations = push(result.checkpoint, repo)
    except Exception as e:  # the run itself succeeded: say how to retry the upload
        print(f"error: [train] push of {result.checkpoint} to {repo} failed ({type(e).__name__}: {e}); retry with: "
              f"llasa-grpo push {result.checkpoint} {repo}", file=sys.stderr)  # fmt: skip
        return 1
    print(f"[train] pushed {result.checkpoint} ({len(operations)} files) to {repo}")
    return 0


def report(result: TrainResult, args: argparse.Namespace, seconds: float) -> str:
    run = result.run_dir
    lines = [
        f"[train] {'stopped' if result.interrupted else 'finished'} at step {result.step} "
        f"({result.step - result.start_step} steps this session, {seconds:.0f} s)",
        *summarize(read_metrics(run)),
        f"  run folder   {run}  (resolved config: {run / RESOLVED_CONFIG})",
        f"  metrics      {run / METRICS_FILE}" + ("  + tensorboard/" if (run / "tensorboard").is_dir() else ""),
        f"  samples      {run / 'samples'}" if (run / "samples").is_dir() else "  samples      none written",
        f"  checkpoint   {result.checkpoint or 'none written'}",
    ]
    if result.interrupted:
        lines.append(f"  resume with: {resume_command(args, str(result.checkpoint))}")
    return "\n".join(lines)


def resume_command(args: argparse.Namespace, checkpoint: str) -> str:
    program = args.prog.split() if getattr(args, "prog", None) else ["python", "train.py"]
    cmd = [*program, "--config", args.config, *(a for s in args.set for a in ("--set", s))]
    return shlex.join([*cmd, "--resume", checkpoint])


if __name__ == "__main__":
    sys.exit(main())
