"""Whisper backends on real espeak speech: assets, cross-clip batching, silence gate, HTTP service and client."""

import socket
import threading
import time

import numpy as np
import pytest

from reward.client import HTTPTranscriber, TranscriberUnavailable
from reward.config import TranscriberConfig
from reward.normalize import error_rate
from reward.transcribe import WhisperTranscriber, make_transcriber
from reward.whisper_assets import whisper_base_dir
from tests import speech_fixtures as sf

TEXTS = ("My sister has lived in Boston for two years.", "The little dog likes to play in the big garden.")


@pytest.fixture(scope="module")
def whisper():
    return WhisperTranscriber(TranscriberConfig(cpu_threads=2))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    sf.require_speech_tools()
    d = tmp_path_factory.mktemp("tr")
    return [sf.synthesize(t, "en", d, f"c{i}") for i, t in enumerate(TEXTS)]


def test_whisper_base_is_assembled_once_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("LLASA_GRPO_CACHE", str(tmp_path))
    d = whisper_base_dir()
    assert d == tmp_path / "whisper-base"
    names = sorted(p.name for p in d.iterdir())
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]  # no temp folder left
    assert d.joinpath("model.bin").stat().st_size == 94371840 + 50845767  # part1 + part2
    mtime = d.joinpath("model.bin").stat().st_mtime_ns
    assert whisper_base_dir() == d and d.joinpath("model.bin").stat().st_mtime_ns == mtime  # reused


def test_batched_and_sequential_agree_and_silence_is_gated(whisper, clips):
    noise = (0.1 * np.random.default_rng(0).standard_normal(40000)).astype(np.float32)
    batch = whisper.transcribe([*clips, np.zeros(40000, np.float32), noise], "en")
    for text, tr in zip(TEXTS, batch[:2], strict=True):
        assert error_rate(text, tr.text, "en") < 0.2 and not tr.silent and tr.no_speech_prob < 0.5
    assert batch[2].silent and batch[2].text == "" and batch[2].no_speech_prob is None  # energy gate, no model
    # the raw batched generate invents words for noise; the no-speech gate blanks them
    assert batch[3].silent and batch[3].text == "" and batch[3].no_speech_prob > 0.6
    seq = WhisperTranscriber(TranscriberConfig(batched=False, cpu_threads=2), model=whisper.model)
    for a, b in zip(seq.transcribe(clips, ["en", "en"]), batch[:2], strict=True):
        assert error_rate(a.text, b.text, "en") < 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_roundtrip_and_clear_error_when_down(whisper, clips):
    import uvicorn

    from reward.service import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(whisper, "base"), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = make_transcriber(TranscriberConfig(backend="http", url=f"http://127.0.0.1:{port}", timeout_s=60))
        assert isinstance(client, HTTPTranscriber)
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        assert client.health()["status"] == "ok"
        remote = client.transcribe(clips[:1], "en")
        local = whisper.transcribe(clips[:1], "en")
        assert remote[0].text == local[0].text and remote[0].no_speech_prob == pytest.approx(local[0].no_speech_prob)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    down = HTTPTranscriber(TranscriberConfig(backend="http", url=f"http://127.0.0.1:{port}", retries=1, timeout_s=2))
    with pytest.raises(TranscriberUnavailable, match=r"no answer after 2 tries.*python -m reward.service"):
        down.transcribe(clips[:1], "en")
