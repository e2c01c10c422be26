"""Upload a checkpoint folder to the Hugging Face Hub as a model repo.

    python -m llasa_grpo.push runs/small/checkpoint-500 org/smolkartoffel-grpo            # or llasa-grpo push
    python -m llasa_grpo.push runs/small/checkpoint-500 org/smolkartoffel-grpo --dry-run  # list, upload nothing

What is uploaded: the model folder (safetensors weights, config.json, tokenizer files) and its model card
(README.md). The resume state (optimizer, scheduler, RNG states, trainer state, completeness marker) stays
local unless ``--with-training-state``. Needs a token (``huggingface-cli login`` or ``HF_TOKEN``).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo.checkpoint import MARKER, STATE_FILE, CheckpointError

# Only for resuming a run: not part of a Hub model.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng-rank*.pt", STATE_FILE, MARKER, ".*")


def upload_files(checkpoint: str | Path, *, with_training_state: bool = False) -> list[str]:
    """The files of ``checkpoint`` (relative, sorted) that a push uploads; ``CheckpointError`` if it is not a
    model folder (no config.json or no safetensors weights)."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise CheckpointError(f"[push] {folder}: no such folder")
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"[push] {folder}: not a model folder (needs config.json and *.safetensors weights)")
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    if with_training_state:
        return [f for f in files if not Path(f).name.startswith(".")]
    return [f for f in files if not any(fnmatch.fnmatch(Path(f).name, p) for p in TRAINING_STATE)]


def commit_operations(checkpoint: str | Path, *, with_training_state: bool = False) -> list[Any]:
    """``huggingface_hub.CommitOperationAdd`` per file to upload (what ``push`` commits)."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(checkpoint)
    return [
        CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
        for f in upload_files(folder, with_training_state=with_training_state)
    ]


def push(
    checkpoint: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    with_training_state: bool = False,
    dry_run: bool = False,
    api: Any = None,
    token: str | None = None,
) -> list[Any]:
    """Create ``repo_id`` (a model repo; kept if it exists) and commit the checkpoint's files in one commit.
    Returns the commit operations; with ``dry_run`` only those (nothing is sent). ``api``: an ``HfApi``."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"[push] repo {repo_id!r}: expected a Hub repo id like 'org/name'")
    operations = commit_operations(checkpoint, with_training_state=with_training_state)
    if dry_run:
        return operations
    if api is None:
        from huggingface_hub import HfApi, get_token

        if not (token or get_token()):
            raise ValueError(
                f"[push] {repo_id}: no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN (a write token)"
            )
        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.create_commit(
        repo_id,
        operations=operations,
        commit_message=f"llasa-grpo: upload {Path(checkpoint).name}",
        repo_type="model",
    )
    return operations


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llasa-grpo push", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint-N folder (or any model folder)")
    p.add_argument("repo", metavar="REPO", help="Hub repo id, e.g. org/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--with-training-state", action="store_true", help="also upload optimizer, scheduler and RNG states")
    p.add_argument("--dry-run", action="store_true", help="list the files it would upload and stop")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        operations = push(
            args.checkpoint,
            args.repo,
            private=args.private,
            with_training_state=args.with_training_state,
            dry_run=args.dry_run,
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the Hub's own errors (network, permissions), named by type
        print(f"error: [push] {args.repo}: upload failed ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"[push] {verb} {len(operations)} files of {args.checkpoint} to {args.repo}:")
    for op in operations:
        print(f"  {op.path_in_repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
