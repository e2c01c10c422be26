"""Small file helpers shared by tts/, reward/ and lab/: the cache folder and atomic folder builds.

File-level atomic writes are ``atomicfs`` (a leaf that grpo/ can use too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_folder", "cache_root"]


def cache_root() -> Path:
    """``$LLASA_GRPO_CACHE`` or ``~/.cache/llasa-grpo``: built assets live outside the repository."""
    return Path(os.environ.get("LLASA_GRPO_CACHE", Path.home() / ".cache" / "llasa-grpo")).expanduser()


def build_folder(target: str | os.PathLike[str], build: Callable[[Path], object], *, mode: int | None = None) -> Path:
    """Build a folder once: ``build(tmp)`` fills a temporary sibling of ``target``, which is then renamed into
    place. A folder holding ``config.json`` counts as built (returned at once); concurrent builders are safe,
    the loser's copy is discarded. ``mode``: permissions for the folder (mkdtemp makes it private)."""
    out = Path(target)
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    if mode is not None:
        tmp.chmod(mode)
    try:
        build(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process won the race
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
