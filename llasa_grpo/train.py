"""GRPO training of a Llasa-style TTS model.

    python train.py --config tiny.toml                       # offline demo on CPU
    python train.py --config small.toml --set grpo.beta=0.0  # override single keys (TOML values)
    python train.py --config small.toml --resume auto        # continue from the newest checkpoint
    torchrun --nproc-per-node 2 train.py --config small.toml # data parallel, one process per GPU

Parse the config, check that models and data are reachable, build the components, run the loop, summarise.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from grpo import distributed as dist
from grpo.checkpoint import checkpoint_dirs, find_checkpoint
from grpo.metrics import METRICS_FILE, read_metrics, summarize
from grpo.trainer import GRPOTrainer, TrainResult
from tomlconfig import ConfigError, dump_toml

RESOLVED_CONFIG = "config.resolved.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from llasa_grpo.config import keys_help  # reads no model code: --help stays quick

    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="TOML file (see tiny.toml, small.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one key")
    p.add_argument(
        "--resume", metavar="DIR|auto", help="a checkpoint or run folder, or 'auto': newest in run.output_dir"
    )
    p.add_argument("--overwrite", action="store_true", help="delete run.output_dir's previous run first")
    return p.parse_args(argv)


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (or None), refusing to mix a new run into an old run folder."""
    if resume is not None:
        ckpt = find_checkpoint(resume, run_dir)
        if ckpt is None:
            print(f"[train] --resume auto: no checkpoint in {run_dir}, starting from the beginning")
        return ckpt
    old = checkpoint_dirs(run_dir) or (run_dir / METRICS_FILE).is_file()
    if old and not overwrite:
        raise ConfigError(
            f"run.output_dir={str(run_dir)!r} holds a previous run: continue it with --resume auto, "
            f"start over with --overwrite, or choose another --set run.output_dir=..."
        )
    if old and dist.rank() == 0:
        shutil.rmtree(run_dir)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from llasa_grpo import recipe  # imports torch/transformers: after argparse so --help is instant
    from tts.data import DataError

    try:
        cfg = recipe.load(args.config, args.set)
        recipe.check_resources(cfg, source=args.config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = dist.init_distributed(cfg.run.device)
    try:
        run_dir = Path(cfg.run.output_dir)
        resume = prepare_run_dir(run_dir, args.resume, args.overwrite)
        dist.barrier()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one progress bar: the loop's
        parts = recipe.build_components(cfg, info.device)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RESOLVED_CONFIG).write_text(dump_toml(cfg), encoding="utf-8")
            print(recipe.describe(cfg, parts, info.device, info.world_size), flush=True)
        trainer = GRPOTrainer(
            parts.model,
            parts.generator,
            parts.scorer,
            parts.prompts,
            cfg.training,
            pad_id=parts.pad_id,
            ref_model=parts.ref_model,
            tokenizer=parts.tokenizer,
            dist_info=info,
        )
        result = trainer.train(resume=resume)
    except (ConfigError, FileNotFoundError, DataError) as e:  # bad input, already phrased for the user
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    if info.is_main:
        print(report(result, args, time.perf_counter() - started))
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
        cmd = ["python", "train.py", "--config", args.config, *(a for s in args.set for a in ("--set", s))]
        lines.append(f"  resume with: {shlex.join([*cmd, '--resume', str(result.checkpoint)])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
