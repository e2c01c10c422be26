"""Where a run's numbers go besides ``metrics.jsonl``: TensorBoard, Weights & Biases, trackio (``run.report_to``).

Every sink gets every logged metric and, at each sample-writing step, a table of the written samples (the
fields a ``SampleWriter`` returns: text, transcript, reward, each term) and their audio. ``metrics.jsonl`` stays
the source of truth: always written, truncated on resume; the sinks follow it.

    tensorboard   run_dir/tensorboard/ event files; a resume purges the abandoned steps (``purge_step``)
    wandb         run_dir/wandb/ (``WANDB_MODE=offline`` needs no network; ``wandb sync`` uploads later)
    trackio       local SQLite under ``TRACKIO_DIR`` (default ~/.cache/huggingface/trackio); ``trackio show``

A resumed run continues the same W&B / trackio run: their ids are kept in ``run_dir/tracking.json``. Neither can
drop logged steps, so a resume from a checkpoint older than the last logged step says what they will show.
Only the main process opens trackers. A sink asked for but not installed fails before the run starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from atomicfs import write_text
from grpo.config import SINKS
from grpo.rollouts import Sample

STATE_FILE = "tracking.json"
# sink -> (module that must be importable, the extra that installs it)
_REQUIRES = {sink: (sink, sink) for sink in ("tensorboard", "wandb", "trackio")}


class TrackingError(ValueError):
    """A sink of ``run.report_to`` cannot be used (not installed), naming the extra that installs it."""


class Tracker(Protocol):
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_samples(self, step: int, samples: Sequence[Sample]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackingRun:
    """What the sinks need to know about the run."""

    run_dir: Path
    project: str  # run.tracker_project
    name: str  # run.run_name, else the run folder's name
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved config, recorded by wandb / trackio
    resume_step: int | None = None  # the checkpoint's step when resuming, else None
    last_logged: int | None = None  # the last step metrics.jsonl held before the resume truncated it


def missing_sinks(report_to: Sequence[str]) -> list[str]:
    """One message per sink of ``report_to`` that is not installed, naming the extra to install."""
    out = []
    for sink in report_to:
        if sink not in SINKS:
            out.append(f"run.report_to: unknown sink {sink!r} (known: {', '.join(SINKS)})")
        elif sink in _REQUIRES and importlib.util.find_spec(_REQUIRES[sink][0]) is None:
            module, extra = _REQUIRES[sink]
            out.append(
                f"run.report_to includes {sink!r} but {module} is not installed: pip install 'llasa-grpo[{extra}]' "
                f"(or remove {sink!r} from run.report_to)"
            )
    return out


def check_sinks(report_to: Sequence[str]) -> None:
    if problems := missing_sinks(report_to):
        raise TrackingError("[grpo] " + "; ".join(problems))


def open_trackers(report_to: Sequence[str], run: TrackingRun, say: Callable[[str], None] = print) -> list[Tracker]:
    """The trackers of ``report_to`` ("jsonl" is the metrics file itself: no tracker), each opened on ``run``."""
    check_sinks(report_to)
    state = _read_state(run.run_dir) if run.resume_step is not None else {}
    factories: dict[str, Callable[[TrackingRun, dict[str, Any]], Tracker]] = {
        "tensorboard": TensorBoardTracker,
        "wandb": WandbTracker,
        "trackio": TrackioTracker,
    }
    trackers: list[Tracker] = []
    try:
        for sink in report_to:
            if sink in factories:
                trackers.append(factories[sink](run, state))
    except BaseException:
        for t in trackers:
            t.close()
        raise
    _write_state(run.run_dir, state)
    abandoned = run.resume_step is not None and run.last_logged is not None and run.last_logged > run.resume_step
    if abandoned:
        first = run.resume_step + 1
        later = f"step {first}" if first == run.last_logged else f"steps {first}–{run.last_logged}"
        if "wandb" in report_to:
            say(
                f"[grpo] wandb cannot drop logged steps: {later} of the abandoned continuation stay in run "
                f"{state['wandb']['id']}, and W&B ignores the re-run ones until step {run.last_logged + 1}"
            )
        if "trackio" in report_to:
            say(f"[grpo] trackio cannot drop logged steps: {later} will show twice in run {state['trackio']['name']!r}")
    return trackers


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise TrackingError(f"[grpo] {path}: not valid JSON ({e}); delete it to start new tracker runs") from None
    return state if isinstance(state, dict) else {}


def _write_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def finite_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def sample_table(samples: Sequence[Sample]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the samples' fields: columns in order of first appearance, a missing field is None."""
    columns: list[str] = []
    for s in samples:
        columns += [k for k in s.fields if k not in columns]
    return columns, [[s.fields.get(c) for c in columns] for s in samples]


def markdown_table(samples: Sequence[Sample]) -> str:
    columns, rows = sample_table(samples)

    def cell(v: Any) -> str:
        text = "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _caption(s: Sample, i: int) -> str:
    text = s.fields.get("text")
    return f"{i:03d}: {text}" if text is not None else f"{i:03d}"


def _pcm(audio: np.ndarray) -> np.ndarray:
    """[T] float32 clipped to [-1, 1] (what the sinks expect of float audio)."""
    return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# The sinks


class TensorBoardTracker:
    """Scalars, a markdown table (``add_text``) and ``add_audio`` per sample, in ``run_dir/tensorboard``."""

    def __init__(self, run: TrackingRun, state: dict[str, Any]) -> None:
        import torch
        from torch.utils.tensorboard import SummaryWriter

        self._torch = torch
        # purge_step writes a session start: TensorBoard hides every earlier event at or after its step (what the
        # abandoned continuation logged). Its UI takes the first start as no restart, so a fresh run writes one too.
        purge = run.resume_step + 1 if run.resume_step is not None else 0
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=purge, flush_secs=30)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for k, v in finite_scalars(metrics).items():
            self.writer.add_scalar(k, v, step)

    def log_samples(self, step: int, samples: Sequence[Sample]) -> None:
        if samples:
            self.writer.add_text("samples", markdown_table(samples), step)
        for i, s in enumerate(samples):
            if s.audio is not None and s.audio.size:
                clip = self._torch.from_numpy(_pcm(s.audio))[None]  # [1, T]
                self.writer.add_audio(f"samples/{i:03d}", clip, step, sample_rate=s.sample_rate)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """``wandb.log`` of the metrics; a ``wandb.Table`` and a list of ``wandb.Audio`` per sample-writing step."""

    def __init__(self, run: TrackingRun, state: dict[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        run_id = state.get("wandb", {}).get("id") or uuid.uuid4().hex[:8]
        self.run = wandb.init(
            project=run.project,
            name=run.name,
            id=run_id,
            dir=str(run.run_dir),
            resume="allow",
            config=dict(run.config),
        )
        state["wandb"] = {"id": self.run.id, "project": run.project}

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(finite_scalars(metrics), step=step)

    def log_samples(self, step: int, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        columns, rows = sample_table(samples)
        logged: dict[str, Any] = {"samples/table": self._wandb.Table(columns=columns, data=rows)}
        audio = [
            self._wandb.Audio(_pcm(s.audio), sample_rate=s.sample_rate, caption=_caption(s, i))
            for i, s in enumerate(samples)
            if s.audio is not None and s.audio.size
        ]
        if audio:
            logged["samples/audio"] = audio
        self.run.log(logged, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """``trackio`` run: the metrics, a ``trackio.Table`` and one ``trackio.Audio`` per sample."""

    def __init__(self, run: TrackingRun, state: dict[str, Any]) -> None:
        import trackio

        self._trackio = trackio
        previous = state.get("trackio", {})
        self.run = trackio.init(
            project=previous.get("project", run.project),
            name=previous.get("name", run.name),
            config=dict(run.config),
            resume="allow" if previous else "never",
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )
        state["trackio"] = {"project": previous.get("project", run.project), "name": self.run.name}

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(finite_scalars(metrics), step=step)

    def log_samples(self, step: int, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        columns, rows = sample_table(samples)
        logged: dict[str, Any] = {"samples/table": self._trackio.Table(columns=columns, data=rows)}
        for i, s in enumerate(samples):
            if s.audio is not None and s.audio.size:
                pcm = (_pcm(s.audio) * 32767).astype(np.int16)  # int16: trackio would peak-normalise float audio
                logged[f"samples/audio_{i:03d}"] = self._trackio.Audio(
                    pcm, caption=_caption(s, i), sample_rate=s.sample_rate
                )
        self.run.log(logged, step=step)

    def close(self) -> None:
        self.run.finish()
