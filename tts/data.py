"""Datasets of texts to synthesise (JSONL or CSV) and the durations of their reference audio.

One row per prompt: ``text`` (required), optional ``ref_audio`` + ``ref_text`` (voice cloning; both or neither),
``speaker``, ``language``. Relative audio paths are resolved against the data file's folder. Bad rows are
reported with ``file:line`` and skipped; loading stops if more than ``max_bad_fraction`` of the rows are bad.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIELDS = ("text", "ref_audio", "ref_text", "speaker", "language")


@dataclass(frozen=True)
class Example:
    text: str
    ref_audio: str | None = None  # absolute path
    ref_text: str | None = None
    speaker: str | None = None
    language: str | None = None
    line: int = 0  # 1-based line in the data file

    def meta(self) -> dict[str, Any]:
        """The row as a plain dict (what travels in ``Rollouts.meta``)."""
        return {
            "text": self.text,
            "ref_audio": self.ref_audio,
            "ref_text": self.ref_text,
            "speaker": self.speaker,
            "language": self.language,
            "line": self.line,
        }


@dataclass(frozen=True)
class BadRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(ValueError):
    def __init__(self, message: str, bad_rows: list[BadRow]) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows


def load_examples(
    path: str | os.PathLike[str], *, max_bad_fraction: float = 0.0, check_audio: bool = True
) -> list[Example]:
    """Read a ``.jsonl`` or ``.csv`` dataset; bad rows are logged (and listed in the error if loading stops)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"[tts] data.path={str(path)!r}: no such file")
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"[tts] data.path={str(path)!r}: expected a .jsonl or .csv file")
    rows = _jsonl_rows(p) if suffix == ".jsonl" else _csv_rows(p)
    examples: list[Example] = []
    bad: list[BadRow] = []
    for line, row in rows:
        try:
            examples.append(_example(row, line, p.parent, check_audio))
        except ValueError as e:
            bad.append(BadRow(str(p), line, str(e)))
    total = len(examples) + len(bad)
    if total == 0:
        raise DataError(f"[tts] data.path={str(path)!r}: no rows", [])
    for b in bad:
        log.warning("[tts] bad data row %s", b)
    if len(bad) / total > max_bad_fraction:
        listed = "\n  ".join(str(b) for b in bad[:20]) + ("\n  …" if len(bad) > 20 else "")
        raise DataError(
            f"[tts] {len(bad)} of {total} rows of {p} are bad, more than data.max_bad_fraction={max_bad_fraction}:"
            f"\n  {listed}",
            bad,
        )
    if not examples:
        raise DataError(f"[tts] data.path={str(path)!r}: every row is bad", bad)
    return examples


def _jsonl_rows(p: Path) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield i, json.loads(raw)
            except json.JSONDecodeError as e:
                yield i, ValueError(f"invalid JSON ({e.msg} at column {e.colno})")


def _csv_rows(p: Path) -> Iterator[tuple[int, Any]]:
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise ValueError(f"[tts] data.path={str(p)!r}: the CSV header must name a 'text' column")
        start = reader.line_num + 1
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                start = reader.line_num + 1
                continue
            yield start, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
            start = reader.line_num + 1  # a quoted field may span lines: report where the row starts


def _example(row: Any, line: int, base: Path, check_audio: bool) -> Example:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, Mapping):
        raise ValueError(f"expected an object with a 'text' field, got {type(row).__name__}")
    values: dict[str, str | None] = {}
    for name in FIELDS:
        v = row.get(name)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"field {name!r} must be a string, got {type(v).__name__}")
        if isinstance(v, str) and (k := _surrogate_at(v)) is not None:  # JSON "\ud800": no tokenizer takes it
            raise ValueError(f"field {name!r} holds a lone surrogate {v[k]!r} at character {k}: not valid Unicode")
        values[name] = v.strip() if isinstance(v, str) and v.strip() else None
    if values["text"] is None:
        raise ValueError("missing or empty 'text'")
    if (values["ref_audio"] is None) != (values["ref_text"] is None):
        have, lack = ("ref_audio", "ref_text") if values["ref_audio"] else ("ref_text", "ref_audio")
        raise ValueError(f"'{have}' without '{lack}': voice cloning needs both")
    ref_audio = values["ref_audio"]
    if ref_audio is not None:
        audio_path = Path(ref_audio).expanduser()
        audio_path = audio_path if audio_path.is_absolute() else (base / audio_path)
        ref_audio = str(audio_path.resolve())
        if check_audio:
            _audio_duration(ref_audio)
    return Example(
        text=values["text"],
        ref_audio=ref_audio,
        ref_text=values["ref_text"],
        speaker=values["speaker"],
        language=values["language"],
        line=line,
    )


def _surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate (U+D800..U+DFFF) in ``text``, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _audio_duration(path: str) -> float:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:
        raise ValueError(f"unreadable ref_audio {path} ({e})") from e
    if info.frames == 0:
        raise ValueError(f"ref_audio {path} is empty")
    return info.frames / info.samplerate


# ---------------------------------------------------------------------------------------------- references


def reference_durations(examples: Iterable[Example]) -> dict[str, float]:
    """Seconds of each distinct ``ref_audio`` (the reward derives its speaking-rate band from these)."""
    out: dict[str, float] = {}
    for ex in examples:
        if ex.ref_audio and ex.ref_audio not in out:
            try:
                out[ex.ref_audio] = _audio_duration(ex.ref_audio)
            except ValueError as e:
                raise ValueError(f"[tts] data row at line {ex.line}: {e}") from e
    return out
