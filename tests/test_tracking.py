"""run.report_to: every sink gets the metrics, the sample table and the audio; a resume continues the same
tracker run and TensorBoard hides the abandoned steps. Each sink runs for real, offline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from grpo.rollouts import Rollouts, Sample, Scores
from grpo.tracking import STATE_FILE, TrackingError, TrackingRun, markdown_table, open_trackers, sample_table
from grpo.trainer import GRPOTrainer
from tests.grpo_fixtures import (
    ScriptedGenerator,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


def _tone(amplitude: float, n: int = 1600) -> np.ndarray:
    return (amplitude * np.sin(np.arange(n) * 2 * np.pi * 440 / RATE)).astype(np.float32)


class _SpeakingScorer(TokenSetScorer):
    """TokenSetScorer that writes samples as a speech scorer does: table fields and a waveform each."""

    def write_samples(self, rollouts: Rollouts, scores: Scores, directory: Path, limit: int) -> list[Sample]:
        return [
            Sample({"text": f"prompt {m['index']}", "reward": float(r), "term/in_set": float(r)}, _tone(0.5), RATE)
            for m, r in zip(rollouts.meta[:limit], scores.rewards[:limit].tolist(), strict=True)
        ]


def _trainer(tmp_path: Path, **run) -> GRPOTrainer:
    cfg = training_config(tmp_path, run={"sample_every": 2, "num_samples": 2, "save_every": 2, **run})
    return GRPOTrainer(tiny_llama(), ScriptedGenerator(), _SpeakingScorer(range(2, 12)), prompts(6), cfg)


def _samples() -> list[Sample]:
    return [
        Sample({"text": "hallo", "reward": 0.5, "term/wer": None}, _tone(0.3), RATE),
        Sample({"text": "a | b", "reward": 0.25, "transcript": "ab"}, _tone(0.1), RATE),
    ]


def test_sample_table_keeps_every_field_and_escapes_markdown():
    columns, rows = sample_table(_samples())
    assert columns == ["text", "reward", "term/wer", "transcript"]
    assert rows == [["hallo", 0.5, None, None], ["a | b", 0.25, None, "ab"]]
    assert markdown_table(_samples()).splitlines()[-1] == "| a \\| b | 0.25 |  | ab |"


def test_tensorboard_gets_scalars_table_audio_and_purges_abandoned_steps_on_resume(tmp_path):
    # read back as TensorBoard's own UI does: every summary is a tensor, purged on a restart (purge_step)
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    report_to = ("jsonl", "tensorboard")
    _trainer(tmp_path, max_steps=4, report_to=report_to).train()  # checkpoints 2 and 4, samples at 1, 2 and 4
    _trainer(tmp_path, max_steps=3, report_to=report_to).train(resume=tmp_path / "checkpoint-2")

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    jsonl = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert sorted(jsonl) == [1, 2, 3]
    for tag in ("reward/mean", "loss", "reward/in_set"):  # steps 3 and 4 of the first run are purged
        events = acc.Tensors(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
        assert make_ndarray(events[-1].tensor_proto).item() == pytest.approx(jsonl[3][tag], rel=1e-6)
    for i in range(2):  # the step-4 audio of the abandoned run is gone; step 2's is a WAV at the sample rate
        audio = acc.Tensors(f"samples/{i:03d}")
        assert acc.SummaryMetadata(f"samples/{i:03d}").plugin_data.plugin_name == "audio"
        assert [a.step for a in audio] == [1, 2]
        wav = make_ndarray(audio[-1].tensor_proto).reshape(-1)[0]
        assert wav[:4] == b"RIFF" and int.from_bytes(wav[24:28], "little") == RATE
    text = acc.Tensors("samples/text_summary")
    table = make_ndarray(text[-1].tensor_proto).reshape(-1)[0].decode()
    assert [t.step for t in text] == [1, 2]
    assert table.startswith("| text | reward | term/in_set |") and "| prompt " in table


def test_a_sink_that_is_not_installed_fails_at_start_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackingError, match=r"'wandb' but wandb is not installed: pip install 'llasa-grpo\[wandb\]'"):
        _trainer(tmp_path, report_to=("jsonl", "wandb"))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_train_preflight_names_a_missing_tracker_and_the_old_tensorboard_key(monkeypatch, capsys, tmp_path):
    import huggingface_hub.constants

    import train

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    assert train.main(["--config", "tiny.toml", "--set", 'run.report_to=["jsonl", "trackio"]']) == 2
    assert "run.report_to includes 'trackio' but trackio is not installed" in capsys.readouterr().err
    old = tmp_path / "old.toml"
    old.write_text((ROOT / "tiny.toml").read_text() + "tensorboard = true\n")  # [run] is tiny.toml's last table
    assert train.main(["--config", str(old)]) == 2
    err = capsys.readouterr().err
    assert "run.tensorboard: no longer a key: replaced by run.report_to" in err


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, with every folder it writes under tmp_path."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }.items():
        monkeypatch.setenv(key, value)


def _eventually(check: Callable[[], bool], seconds: float = 60.0) -> bool:
    """wandb 0.31's service writes the offline .wandb file after ``finish()`` returns (measured: ~1 s later)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_wandb_offline_run_gets_metrics_table_audio_and_continues_on_resume(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    run = TrackingRun(run_dir, "llasa-grpo-test", "run-a", {"grpo": {"beta": 0.0}})
    [tracker] = open_trackers(["jsonl", "wandb"], run)
    tracker.log_metrics(1, {"reward/mean": 0.5, "loss": math.nan})  # a NaN is left out, not an error
    tracker.log_metrics(2, {"reward/mean": 0.75})
    tracker.log_samples(2, _samples())
    tracker.close()
    run_id = json.loads((run_dir / STATE_FILE).read_text())["wandb"]["id"]
    [first] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    assert _eventually(lambda: b"reward/mean" in (first / f"run-{run_id}.wandb").read_bytes())
    [table] = (first / "files" / "media" / "table").glob("samples/table_*.table.json")
    assert json.loads(table.read_text())["columns"] == ["text", "reward", "term/wer", "transcript"]
    assert list((first / "files" / "media" / "audio").rglob("*.wav"))

    said: list[str] = []
    [tracker] = open_trackers(["wandb"], dataclasses.replace(run, resume_step=1, last_logged=2), said.append)
    tracker.log_metrics(2, {"reward/mean": 0.8})
    tracker.close()
    assert json.loads((run_dir / STATE_FILE).read_text())["wandb"]["id"] == run_id  # the same W&B run
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert said == [
        f"[grpo] wandb cannot drop logged steps: step 2 of the abandoned continuation stay in run {run_id}, "
        "and W&B ignores the re-run ones until step 3"
    ]


_TRACKIO_SCRIPT = """
import dataclasses, json, sys
from pathlib import Path
import numpy as np
from grpo.rollouts import Sample
from grpo.tracking import TrackingRun, open_trackers
from trackio.sqlite_storage import SQLiteStorage

tone = (0.3 * np.sin(np.arange(1600) / 6)).astype(np.float32)
samples = [Sample({"text": t, "reward": r}, tone, 16000) for t, r in (("hallo", 0.5), ("a | b", 0.25))]

run = TrackingRun(Path(sys.argv[1]), "llasa-grpo-test", "run-a", {"x": 1})
[t] = open_trackers(["jsonl", "trackio"], run)
t.log_metrics(1, {"loss": 1.0})
t.log_metrics(2, {"loss": 0.5})
t.log_samples(2, samples)
t.close()
[t] = open_trackers(["trackio"], dataclasses.replace(run, resume_step=2))
t.log_metrics(3, {"loss": 0.25})
t.close()
logs = SQLiteStorage.get_logs("llasa-grpo-test", "run-a")
print("RESULT " + json.dumps({"runs": SQLiteStorage.get_runs("llasa-grpo-test"), "logs": logs}, default=str))
"""


def test_trackio_local_run_gets_metrics_table_audio_and_continues_on_resume(tmp_path):
    # trackio reads TRACKIO_DIR once, at import: a fresh process keeps its database under tmp_path
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _TRACKIO_SCRIPT, str(tmp_path / "run")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]  # trackio prints its own lines too
    result = json.loads(line.removeprefix("RESULT "))
    assert result["runs"] == ["run-a"]  # resumed, not a second run
    logs = result["logs"]
    assert [(r["step"], r.get("loss")) for r in logs if "loss" in r] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    [media] = [r for r in logs if "samples/table" in r]
    assert media["step"] == 2 and media["samples/table"]["_type"] == "trackio.table"
    assert media["samples/audio_001"]["caption"] == "001: a | b"
    wavs = list((tmp_path / "trackio" / "media").rglob("*.wav"))
    assert len(wavs) == 2
