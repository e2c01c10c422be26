"""The one atomic-write helper: a reader sees the old file or the new one, and nothing else writes files that way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atomicfs import atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.jsonl"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".jsonl" and tmp.parent == target.parent  # same folder: os.replace is atomic there
        tmp.write_text("half of the ne")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["metrics.jsonl"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and len(list(target.parent.iterdir())) == 1


def test_no_other_module_renames_files_into_place():
    """File-level writes go through atomicfs; folders are renamed by their owners (tts.io.build_folder, the
    checkpoint writer, the Whisper asset assembly), never with os.replace."""
    offenders = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("atomicfs", "tests", "bench", ".venv") or rel.parts[0].startswith("."):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bos\.replace\(|\.with_suffix\(\"\.(tmp|part)\"\)", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, offenders
