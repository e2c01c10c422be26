"""evaluate.py end to end on tiny checkpoints with the real offline Whisper, checked against its own samples;
the statistics (paired bootstrap, slopes, normalisations) on hand-made records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate
from evaluation.plots import write_plots
from evaluation.report import (
    METRICS,
    SampleRecord,
    analyse,
    cluster_slope,
    error_rates,
    read_samples,
    resample_rows,
    write_outputs,
)
from reward.normalize import letters, normalize
from tts.tiny import tiny_assets

MAX_NEW_TOKENS = 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("speaking_rate_vs_length.png", "wer_distribution.png", "failure_rates_by_temperature.png")


def stopping_model(out: Path) -> Path:
    """The tiny model edited to end its speech early: every token embedding gets +4 in dimension 0 (so the final
    hidden state has a large, steady h_0), and the stop token +0.8 more there. With tied embeddings the stop
    logit rises by ≈ 0.8·h_0 and every other logit by the same constant: only the stop probability changes."""
    from transformers import AutoModelForCausalLM

    from tts.llasa import SPEECH_GENERATION_END

    src = tiny_assets()[0]
    shutil.copytree(src, out)  # tokenizer files as they are
    model = AutoModelForCausalLM.from_pretrained(src)
    stop_id = json.loads((src / "tokenizer.json").read_text())["added_tokens"]
    stop_id = next(t["id"] for t in stop_id if t["content"] == SPEECH_GENERATION_END)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] += 4.0
        emb[stop_id, 0] += 0.8
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base (by its model.path name), the same model by folder, and the edited model; 2 texts × 2 samples."""
    tmp = tmp_path_factory.mktemp("eval")
    edited = stopping_model(tmp / "stops")
    out = tmp / "out"
    argv = [
        "--config", "tiny.toml",
        "--checkpoints", "base=tiny-llasa", f"again={tiny_assets()[0]}", f"stops={edited}",
        "--data", "data/eval_tiny.jsonl", "--limit", "2", "--samples", "2", "--temperatures", "1.0",
        "--set", f"generation.max_new_tokens={MAX_NEW_TOKENS}", "--bootstrap", "500", "--out", str(out),
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _pairs(rows: list[dict], other: str, name: str) -> list[float]:
    base = {(r["temperature"], r["text_index"], r["sample_index"]): r[name] for r in rows if r["checkpoint"] == "base"}
    return [
        float(r[name]) - float(base[(r["temperature"], r["text_index"], r["sample_index"])])
        for r in rows
        if r["checkpoint"] == other and r[name] is not None
    ]


@pytest.mark.slow
def test_report_numbers_match_a_recomputation_from_its_own_samples(run: Path) -> None:
    rows, metrics = _rows(run), json.loads((run / "metrics.json").read_text())
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        ref, hyp = normalize(r["text"], r["language"]), normalize(r["transcript"], r["language"])
        assert r["wer"] == pytest.approx(jiwer.wer(ref, hyp) if hyp else 1.0)
        assert r["cer"] == pytest.approx(jiwer.cer(ref, hyp) if hyp else 1.0)
        # one code is 20 ms of audio; the WAV on disk is that long; the rate counts the normalised text's letters
        wav, sr = sf.read(run / r["audio"])
        assert sr == 16000 and len(wav) == 320 * r["num_codes"]
        assert r["duration_s"] == pytest.approx(r["num_codes"] / 50)
        assert r["text_chars"] == letters(r["text"], r["language"])  # the speaking_rate term's counter
        assert r["chars_per_second"] == pytest.approx(r["text_chars"] / r["duration_s"])
        assert r["truncated"] == (not r["finished"])
        assert r["num_codes"] <= (MAX_NEW_TOKENS - 1 if r["finished"] else MAX_NEW_TOKENS)
    for ckpt in ("base", "again", "stops"):
        mine = [r for r in rows if r["checkpoint"] == ckpt]
        for m in METRICS:
            vals = [float(r[m.name]) for r in mine if r[m.name] is not None]
            got = metrics["overall"][ckpt][m.name]
            assert got["n"] == len(vals)
            if vals:
                assert got["mean"] == pytest.approx(np.mean(vals)) and got["std"] == pytest.approx(np.std(vals))
        x = [r["text_chars"] for r in mine]
        y = [r["chars_per_second"] for r in mine]
        assert metrics["rate_slope"][ckpt]["mean"] == pytest.approx(100 * np.polyfit(x, y, 1)[0])
    for m in ("wer", "truncated", "duration_s", "chars_per_second", "reward"):
        d = metrics["differences"]["stops"][m]
        assert d["estimate"] == pytest.approx(np.mean(_pairs(rows, "stops", m)))
        assert d["low"] <= d["estimate"] + 1e-9 and d["estimate"] - 1e-9 <= d["high"]


@pytest.mark.slow
def test_same_model_same_seeds_gives_the_same_samples(run: Path) -> None:
    """Pairing works: the base named by id and by folder produce identical codes, audio and transcripts."""
    rows, metrics = _rows(run), json.loads((run / "metrics.json").read_text())
    key = ("temperature", "text_index", "sample_index", "num_codes", "transcript", "finished", "wer")
    base = sorted(tuple(r[k] for k in key) for r in rows if r["checkpoint"] == "base")
    again = sorted(tuple(r[k] for k in key) for r in rows if r["checkpoint"] == "again")
    assert base == again
    for r in (r for r in rows if r["checkpoint"] == "again"):
        assert (run / r["audio"]).read_bytes() == (run / r["audio"].replace("/again/", "/base/")).read_bytes()
    for m, d in metrics["differences"]["again"].items():
        if d["n_pairs"]:
            assert d["estimate"] == d["low"] == d["high"] == 0.0, m


@pytest.mark.slow
def test_edited_model_is_measured_as_stopping(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["base"]["truncated"]["mean"] == 1.0  # random tiny model: the stop token is 1 of 66 k
    assert metrics["overall"]["stops"]["truncated"]["mean"] < 1.0
    assert metrics["differences"]["stops"]["duration_s"]["estimate"] < 0
    report = (run / "report.md").read_text()
    assert "| metric | base | again | stops | Δ again − base [95 % CI] | Δ stops − base [95 % CI] |" in report
    trunc = metrics["overall"]["stops"]["truncated"]["mean"]
    assert f"| {100 * trunc:.1f} % |" in report.split("truncation rate")[1].split("\n")[0] + "|"
    for name in PLOTS:
        data = (run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and f"]({name})" in report
        import matplotlib.image

        assert matplotlib.image.imread(run / name).shape[:2] >= (300, 500)
    assert len(read_samples(run / "samples.jsonl")) == 12


def test_bad_checkpoint_paths_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    common = ["--config", "tiny.toml", "--data", "data/eval_tiny.jsonl", "--out", str(tmp_path / "o")]
    assert evaluate.main([*common, "--checkpoints", "base=tiny-llasa", "grpo=runs/nope/checkpoint-9"]) == 2
    assert "--checkpoints grpo=runs/nope/checkpoint-9: no such folder" in capsys.readouterr().err
    assert evaluate.main([*common, "--checkpoints", f"grpo={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoints grpo={tmp_path / 'run'}" in err and "checkpoint-3" in err
    assert evaluate.main([*common, "--checkpoints", "a=tiny-llasa", "a=tiny-llasa"]) == 2
    assert "used twice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------- stats


def _record(ckpt: str, tau: float, text: int, k: int, chars: int, seconds: float, wer: float, trunc: bool):
    return SampleRecord(
        checkpoint=ckpt,
        temperature=tau,
        text_index=text,
        sample_index=k,
        text="x" * chars,
        language="en",
        transcript="",
        audio="",
        duration_s=seconds,
        num_codes=round(50 * seconds),
        text_chars=chars,
        finished=not trunc,
        wer=wer,
        cer=wer,
        hangup=False,
        hangup_regex=False,
        token_loop=False,
        truncated=trunc,
        empty=False,
        chars_per_second=chars / seconds,
        speaker_similarity=None,
        reward=1.0 - wer,
    )


def _synthetic(n_texts: int = 40, seed: int = 1) -> list[SampleRecord]:
    """'fast' speaks long texts faster (rate 10 + 2 per 100 chars) and has WER 0.1 lower than 'base'."""
    rng = np.random.default_rng(seed)
    recs = []
    for t in range(n_texts):
        chars = int(rng.integers(10, 200))
        for tau in (0.7, 1.0):
            for k in range(3):
                noise, w = rng.normal(0, 0.3), float(rng.uniform(0.2, 0.6))
                recs.append(_record("base", tau, t, k, chars, chars / (12 + noise), w, tau < 1 and k == 0))
                fast = 10 + 0.02 * chars + noise
                recs.append(_record("fast", tau, t, k, chars, chars / fast, w - 0.1, False))
    return recs


def test_paired_bootstrap_and_slopes_on_known_effects(tmp_path: Path) -> None:
    recs = _synthetic()
    res = analyse(recs, {"base": "b", "fast": "f"}, [0.7, 1.0], 3, resamples=1000, seed=0)
    wer = res.differences["fast"]["wer"]
    assert wer.estimate == pytest.approx(-0.1) and wer.low == pytest.approx(-0.1) and wer.high == pytest.approx(-0.1)
    trunc = res.differences["fast"]["truncated"]  # base truncates sample 0 at τ 0.7: 1/6 of all samples
    assert trunc.estimate == pytest.approx(-1 / 6) and trunc.significant
    assert res.by_temperature["base"]["0.7"]["truncated"].mean == pytest.approx(1 / 3)
    assert res.by_temperature["base"]["1"]["truncated"].mean == 0.0
    assert res.slopes["base"].low < 0 < res.slopes["base"].high  # no length effect
    assert res.slopes["fast"].mean == pytest.approx(2.0, abs=0.2) and res.slopes["fast"].low > 1.0
    slope = res.differences["fast"]["rate_slope"]
    assert slope.significant and slope.low < 2.0 < slope.high
    # the bins follow the data: mean rate of 'fast' rises from the shortest to the longest bin
    bins = res.rate_bins["fast"]
    assert sum(b.n_texts for b in bins) == 40 and bins[0].mean < bins[-1].mean
    files = write_outputs(res, tmp_path, write_plots)
    assert "**-10.0 pp [-10.0" not in files["report"].read_text()  # a WER is not a rate: no 'pp'
    assert "**-0.100 [-0.100, -0.100]**" in files["report"].read_text()
    for name in PLOTS:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert [r.wer for r in read_samples(files["samples"])] == [r.wer for r in recs]


def test_bootstrap_interval_covers_a_noisy_shift() -> None:
    """A shift of 0.05 under noise of 0.2 per text, 200 texts: the 95 % interval contains 0.05 and not 0."""
    rng = np.random.default_rng(3)
    recs = []
    for t in range(200):
        base = rng.uniform(0, 1)
        recs.append(_record("a", 1.0, t, 0, 50, 4.0, base, False))
        recs.append(_record("b", 1.0, t, 0, 50, 4.0, base + 0.05 + rng.normal(0, 0.2), False))
    d = analyse(recs, {"a": "", "b": ""}, [1.0], 1, resamples=2000, seed=0).differences["b"]["wer"]
    assert d.low < 0.05 < d.high and d.low > 0
    assert d.high - d.low == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(200), rel=0.25)


def test_cluster_slope_equals_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, 12)
    y = 3 + 0.5 * x[:, None] + rng.normal(0, 1, (12, 4))
    y[2, 1] = np.nan
    ok = ~np.isnan(y)
    expected = np.polyfit(np.repeat(x[:, None], 4, 1)[ok], y[ok], 1)[0]
    assert cluster_slope(x, y, resample_rows(12, 0, 0))[0] == pytest.approx(expected)


def test_error_rate_normalisations() -> None:
    # the project's normalisation spells numbers out like the reward does; Seed-TTS-eval style does not
    assert error_rates("Meet me at 8.", "meet me at eight", "en", "project") == (0.0, 0.0)
    wer, cer = error_rates("Meet me at 8.", "meet me at eight", "en", "seedtts")
    assert wer == pytest.approx(0.25) and cer > 0
    assert error_rates("It's fine!", "it's fine", "en", "seedtts") == (0.0, 0.0)
    assert error_rates("Hallo Welt", "", "de", "seedtts") == (1.0, 1.0)
