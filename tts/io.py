"""Small file helpers shared by tts/ and reward/: the cache folder and atomic writes.

An atomic write goes to a temporary file in the target's folder and is renamed over the target
(``os.replace``), so a reader — another process, or a run resumed after a crash — sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """``$LLASA_GRPO_CACHE`` or ``~/.cache/llasa-grpo``: built assets live outside the repository."""
    return Path(os.environ.get("LLASA_GRPO_CACHE", Path.home() / ".cache" / "llasa-grpo")).expanduser()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the suffix, so writers that infer the format from it (soundfile, numpy) work.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
