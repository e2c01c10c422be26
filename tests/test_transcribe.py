"""Whisper backends on real espeak speech: assets, cross-clip batching, silence gate, HTTP service and client."""

import socket
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from llasa_grpo import recipe
from reward.asr.http import HTTPTranscriber, TranscriberUnavailable, encode_audio
from reward.asr.whisper import WhisperTranscriber, speech_segments
from reward.asr.whisper_assets import whisper_base_dir
from reward.config import TranscriberConfig
from reward.normalize import error_rate
from tests import speech_fixtures as sf
from tomlconfig import ConfigError

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


def test_a_shorter_encoder_window_pads_less_and_longer_clips_keep_30_s(whisper, clips, monkeypatch):
    """window_s = 5: the batched encoder sees [B, 80, 500]; a clip longer than 5 s goes the 30 s way."""
    short = WhisperTranscriber(TranscriberConfig(cpu_threads=2, window_s=5.0), model=whisper.model)
    shapes, sequential = [], []
    encode, transcribe_sequential = whisper.model.encode, short.transcribe_sequential
    monkeypatch.setattr(whisper.model, "encode", lambda f: shapes.append(f.shape) or encode(f))
    monkeypatch.setattr(
        short, "transcribe_sequential", lambda a, lang: sequential.append(len(a)) or transcribe_sequential(a, lang)
    )
    long_clip = np.concatenate([clips[0], np.zeros(16000, np.float32), clips[1]])  # > 5 s
    assert len(clips[0]) < 5 * 16000 < len(long_clip)
    out = short.transcribe([clips[0], long_clip], "en")
    assert shapes[0] == (1, 80, 500) and sequential == [len(long_clip)]
    assert error_rate(TEXTS[0], out[0].text, "en") < 0.2
    assert error_rate(" ".join(TEXTS), out[1].text, "en") < 0.2
    with pytest.raises(ValueError, match=r"window_s=40\.0: must be within 1 and 30 seconds"):
        TranscriberConfig(window_s=40.0)


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
        config = TranscriberConfig(backend="http", url=f"http://127.0.0.1:{port}", timeout_s=60)
        client = recipe.build_transcriber(config)
        assert isinstance(client, HTTPTranscriber)
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        assert client.health()["status"] == "ok"
        http = ["transcriber.backend=http", f'transcriber.url="http://127.0.0.1:{port}"', "transcriber.retries=0"]
        recipe.check_resources(recipe.load("tiny.toml", http))  # the preflight asks the service for /health
        remote = client.transcribe(clips[:1], "en")
        local = whisper.transcribe(clips[:1], "en")
        assert remote[0].text == local[0].text and remote[0].no_speech_prob == pytest.approx(local[0].no_speech_prob)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    down = HTTPTranscriber(TranscriberConfig(backend="http", url=f"http://127.0.0.1:{port}", retries=1, timeout_s=2))
    with pytest.raises(TranscriberUnavailable, match=r"no answer after 2 tries.*python -m reward.service"):
        down.transcribe(clips[:1], "en")
    with pytest.raises(
        ConfigError, match=rf"cannot start:\n  transcriber\.url=http://127\.0\.0\.1:{port}/health: no answer"
    ):
        recipe.check_resources(recipe.load("tiny.toml", http))


def test_each_clip_is_transcribed_in_the_language_it_is_given(whisper, clips):
    """The caller resolves the language (row, else transcriber.language); the config does not override it."""
    german_default = WhisperTranscriber(TranscriberConfig(language="de", cpu_threads=2), model=whisper.model)
    tr = german_default.transcribe(clips[:1], ["en"])[0]
    assert error_rate(TEXTS[0], tr.text, "en") < 0.2


def test_a_quiet_segment_does_not_blank_a_long_transcript():
    def seg(text, p_ns, avg, start, end):
        return SimpleNamespace(text=text, no_speech_prob=p_ns, avg_logprob=avg, start=start, end=end)

    speech, quiet = seg(" Guten Morgen.", 0.05, -0.3, 0.0, 30.0), seg(" Ich bin hier.", 0.9, -1.2, 30.0, 40.0)
    tr = speech_segments([speech, quiet], 0.6, None)
    assert tr.text == "Guten Morgen." and not tr.silent and tr.raw_text == "Guten Morgen. Ich bin hier."
    assert tr.no_speech_prob == pytest.approx(0.05) and tr.avg_logprob == pytest.approx(-0.3)
    both = speech_segments([speech, seg(" Wie geht's?", 0.3, -0.5, 30.0, 40.0)], 0.6, None)
    assert both.text == "Guten Morgen. Wie geht's?"
    assert both.no_speech_prob == pytest.approx((0.05 * 30 + 0.3 * 10) / 40)  # duration-weighted
    assert speech_segments([quiet], 0.6, None).silent and speech_segments([quiet], 0.6, None).text == ""
    # with a log-prob threshold (Whisper's rule) a confident segment stays even with a high no-speech probability
    assert speech_segments([quiet], 0.6, -1.5).text == "Ich bin hier."
    assert speech_segments([], 0.6, None).silent


def _client(handler, **kw) -> tuple[HTTPTranscriber, list[str]]:
    calls: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return handler(len(calls))

    config = TranscriberConfig(backend="http", url="http://127.0.0.1:9", **kw)
    return HTTPTranscriber(config, httpx.Client(transport=httpx.MockTransport(record))), calls


def test_client_retries_only_what_did_no_work(monkeypatch):
    monkeypatch.setattr("grpo.http.time.sleep", lambda s: None)
    audio = [np.zeros(160, np.float32)]
    ok = {"transcripts": [{"text": "hallo", "avg_logprob": -0.1, "no_speech_prob": 0.0, "silent": False}]}

    def read_timeout(n):
        raise httpx.ReadTimeout("timed out")

    client, calls = _client(read_timeout, retries=3, timeout_s=7.0)
    with pytest.raises(TranscriberUnavailable, match=r"within transcriber\.timeout_s=7\.0 for 1 clips.*raise"):
        client.transcribe(audio, "de")
    assert calls == ["/transcribe"]  # not queued again behind the server's lock

    client, calls = _client(lambda n: httpx.Response(500, text="CUDA out of memory"), retries=3)
    with pytest.raises(TranscriberUnavailable, match="HTTP 500: CUDA out of memory"):
        client.transcribe(audio, "de")
    assert len(calls) == 1

    client, calls = _client(lambda n: httpx.Response(503) if n < 3 else httpx.Response(200, json=ok), retries=2)
    assert client.transcribe(audio, "de")[0].text == "hallo" and len(calls) == 3

    def refused(n):
        raise httpx.ConnectError("refused")

    client, calls = _client(refused, retries=2)
    with pytest.raises(TranscriberUnavailable, match=r"no answer after 3 tries.*python -m reward\.service"):
        client.health()
    assert calls == ["/health"] * 3


def test_service_answers_bad_input_with_422(whisper):
    from fastapi.testclient import TestClient

    from reward.service import create_app

    app = TestClient(create_app(whisper, "base"))
    response = app.post("/transcribe", json={"languages": [""], "audios": [encode_audio(np.zeros(16000))]})
    assert response.status_code == 422 and "every clip needs a language" in response.text
