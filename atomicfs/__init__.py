"""Atomic file writes: the one implementation, for every package (grpo, tts, reward, evaluation, llasa_grpo).

A write goes to a temporary file in the target's folder and is renamed over the target (``os.replace``), so a
reader — another process, or a run resumed after a crash — sees the old file or the new one, never half of one.

A leaf: it imports only the standard library, so ``grpo/`` (which imports nothing of speech) and ``tts/``
(which imports nothing of the GRPO algorithm) can both use it. Folder-level atomicity lives with the folders'
owners: ``tts.io.build_folder`` (built model folders) and ``grpo.checkpoint`` (checkpoint-N).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
