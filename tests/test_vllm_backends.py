"""CPU tests of the vLLM backends: importance-sampling math, rollouts from engine samples, weight-sync
bookkeeping through a fake engine, and the generation server's schema and error paths. vLLM itself is
not needed (the GPU paths are exercised in bench/generate.py where CUDA and vLLM exist)."""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import pytest
import torch
import transformers
from fastapi.testclient import TestClient

from grpo.engine import Sample, Sampling, samples_to_rollouts
from grpo.engine_generation import EngineGenerator, ServerError, ServerGenerator
from grpo.importance import importance_weights
from grpo.logprobs import token_logprobs
from grpo.rollouts import Rollouts
from grpo.serve import create_app
from grpo.trainer import GRPOTrainer
from tests.grpo_fixtures import (  # noqa: F401 (one_thread: a fixture)
    ScriptedGenerator,
    TokenSetScorer,
    one_thread,
    prompts,
    tiny_llama,
    training_config,
)

STOP = 3
PAD = 0


class FakeEngine:
    """Samples fixed continuations and records every weight update it receives."""

    def __init__(self, vocab_size: int = 32) -> None:
        self.vocab_size = vocab_size
        self.loaded: list[dict[str, torch.Tensor]] = []
        self.calls: list[tuple[int, Sampling]] = []

    def info(self) -> dict[str, Any]:
        return {"model": "fake", "vocab_size": self.vocab_size}

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, sampling: Sampling) -> list[list[Sample]]:
        self.calls.append((n, sampling))
        out = []
        for p in prompt_ids:
            group = []
            for i in range(n):
                finished = i % 2 == 0
                ids = [p[-1] + 4, p[-1] + 5 + i] + ([STOP] if finished else [7])
                group.append(Sample(tuple(ids), tuple(-0.1 * (k + 1) for k in range(len(ids))), finished))
            out.append(group)
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.loaded.append({k: v.clone() for k, v in weights})


# ---- importance sampling ------------------------------------------------------------------------------------


def test_token_level_truncation_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0]])
    w, stats = importance_weights(old, sampler, mask, level="token", cap=1.5, mode="truncate")
    # exp(0.5)=1.6487 → capped at 1.5; exp(-1.5)=0.2231 kept; padding → 0
    assert torch.allclose(w, torch.tensor([[1.5, math.exp(-1.5), 0.0]]))
    assert stats["is/ratio_max"] == pytest.approx(math.exp(0.5))
    assert stats["is/abs_logp_diff_max"] == pytest.approx(1.5)
    assert stats["is/capped_frac"] == pytest.approx(0.5)
    w_only, none = importance_weights(old, sampler, mask, level="token", cap=1.5, mode="truncate", stats=False)
    assert torch.equal(w_only, w) and none == {}  # the trainer's micro-batches: same weights, no host syncs


def test_mask_mode_drops_tokens_beyond_the_cap():
    old = torch.tensor([[0.0, 0.0]])
    sampler = torch.tensor([[-2.0, -0.1]])
    w, _ = importance_weights(old, sampler, torch.ones(1, 2), cap=3.0, mode="mask")
    assert w[0, 0] == 0  # exp(2) = 7.4 > 3
    assert w[0, 1] == pytest.approx(math.exp(0.1))


def test_sequence_level_uses_the_product_over_tokens():
    old = torch.tensor([[-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    sampler = torch.tensor([[-1.2, -1.1, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w, _ = importance_weights(old, sampler, mask, level="sequence", cap=10.0)
    assert torch.allclose(w[0], torch.tensor([math.exp(0.3), math.exp(0.3), 0.0]))  # padding's 5.0 ignored
    assert torch.allclose(w[1], torch.ones(3))


def test_identical_engines_give_unit_weights():
    logps = -torch.rand(4, 6)
    w, stats = importance_weights(logps, logps.clone(), torch.ones(4, 6))
    assert torch.equal(w, torch.ones(4, 6))
    assert stats["is/abs_logp_diff_mean"] == 0.0


def test_importance_rejects_bad_arguments():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="cap"):
        importance_weights(x, x, torch.ones(1, 2), cap=0)
    with pytest.raises(ValueError, match="shapes"):
        importance_weights(x, torch.zeros(1, 3), torch.ones(1, 2))


# ---- engine samples → rollouts, colocated bookkeeping -------------------------------------------------------


def test_samples_to_rollouts_pads_and_keeps_logprobs():
    prompts = [[5, 6], [9]]
    samples = FakeEngine().generate(prompts, 2, Sampling(max_new_tokens=3))
    r = samples_to_rollouts(prompts, samples, 2, PAD)
    assert r.prompt_ids.tolist() == [[5, 6], [5, 6], [0, 9], [0, 9]]
    assert r.completion_lists()[0] == [10, 11, STOP]
    assert r.finished.tolist() == [True, False, True, False]
    assert r.sampler_logps is not None
    assert torch.allclose(r.sampler_logps[0], torch.tensor([-0.1, -0.2, -0.3]))
    with pytest.raises(ValueError, match="samples for 2 prompts"):
        samples_to_rollouts(prompts, samples[:1], 2, PAD)


def test_colocated_sync_hands_over_every_weight():
    engine, model = FakeEngine(), tiny_llama()
    gen = EngineGenerator(engine, Sampling(max_new_tokens=3, stop_ids=(STOP,)), pad_id=PAD)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    gen.sync_weights(model)
    received = engine.loaded[-1]
    assert set(received) == set(model.state_dict())
    assert torch.equal(received["model.norm.weight"], model.model.norm.weight)
    assert len(engine.loaded) == 1  # one sync, one hand-over
    assert len(gen.generate([[4]], 2)) == 2


# ---- generation server ---------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    engine = FakeEngine()
    return engine, TestClient(create_app(engine, weights_dir=tmp_path))


def test_server_generates_and_syncs_weights(served, tmp_path):
    engine, client = served
    sampling = Sampling(max_new_tokens=3, temperature=0.9, stop_ids=(STOP,))
    gen = ServerGenerator("http://test", sampling, pad_id=PAD, vocab_size=32, client=client, shm_dir=str(tmp_path))
    r = gen.generate([[5, 6]], 2)
    assert r.completion_lists()[1] == [10, 12, 7]
    assert engine.calls[0] == (2, sampling)  # sampling parameters arrive unchanged
    model = tiny_llama()
    gen.sync_weights(model)
    assert set(engine.loaded[-1]) == set(model.state_dict())
    assert torch.equal(engine.loaded[-1]["lm_head.weight"], model.lm_head.weight)
    assert list(tmp_path.iterdir()) == []  # the shared-memory file is removed after the load
    assert client.get("/info").json()["weights_version"] == 1
    gen.generate([[5, 6]], 2)  # versions agree


def test_server_rejects_a_different_model(served):
    _, client = served
    with pytest.raises(ServerError, match="vocab_size=64"):
        ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, vocab_size=64, client=client)


def test_server_restart_is_detected(served):
    _, client = served
    gen = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client)
    gen.weights_version = 3  # the trainer synced 3 times, the server (restarted) holds version 0
    with pytest.raises(ServerError, match="restarted"):
        gen.generate([[1]], 2)


def test_generating_before_any_push_says_so(served, tmp_path):
    _, client = served
    other = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client, shm_dir=str(tmp_path))
    other.weights_version = 4
    other.sync_weights(tiny_llama())  # another run left the server at version 5
    gen = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client)
    with pytest.raises(ServerError, match=r"version 5, the trainer expects 0: no weights were pushed yet"):
        gen.generate([[1]], 2)


@pytest.mark.usefixtures("one_thread")
def test_fresh_run_pushes_its_weights_to_a_server_used_before(served, tmp_path):
    """A server still holding another run's weights (version 3) serves a fresh run: train() pushes the
    starting weights first, so the versions agree and the engine samples from this run's policy."""
    engine, client = served
    sampling = Sampling(max_new_tokens=3, stop_ids=(STOP,))
    previous = ServerGenerator("http://test", sampling, pad_id=PAD, client=client, shm_dir=str(tmp_path))
    for _ in range(3):
        previous.sync_weights(tiny_llama(seed=9))
    model = tiny_llama(seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    gen = ServerGenerator("http://test", sampling, pad_id=PAD, vocab_size=32, client=client, shm_dir=str(tmp_path))
    cfg = training_config(tmp_path / "run", generation={"backend": "vllm_server"}, run={"max_steps": 2})
    result = GRPOTrainer(model, gen, TokenSetScorer(range(2, 10)), prompts(4), cfg).train()
    assert result.step == 2 and gen.weights_version == 3  # the initial push, then one per step
    first_push = engine.loaded[3]  # after the previous run's three
    assert all(torch.equal(first_push[k], v) for k, v in start.items())
    assert client.get("/info").json()["weights_version"] == 3


def test_only_rank_0_uploads_but_every_rank_counts(served, tmp_path, monkeypatch):
    """Under torchrun all ranks share one server and hold the same weights: one upload per sync."""
    engine, client = served
    gen = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client, shm_dir=str(tmp_path))
    monkeypatch.setattr("grpo.engine_generation.dist.rank", lambda: 1)
    gen.sync_weights(tiny_llama())
    assert engine.loaded == [] and gen.weights_version == 1
    monkeypatch.setattr("grpo.engine_generation.dist.rank", lambda: 0)
    gen.sync_weights(tiny_llama())
    assert len(engine.loaded) == 1 and client.get("/info").json()["weights_version"] == gen.weights_version == 2


def _mock_server(fail: type[httpx.TransportError], failures: int) -> tuple[httpx.Client, list[str]]:
    """A client whose /generate fails ``failures`` times with ``fail`` before the fake server answers."""
    app_client = TestClient(create_app(FakeEngine()))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/generate" and seen.count("/generate") <= failures:
            raise fail("simulated", request=request)
        reply = app_client.request(request.method, request.url.path, content=request.content, headers=request.headers)
        return httpx.Response(reply.status_code, content=reply.content, headers=reply.headers)

    return httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler)), seen


def test_read_timeout_is_not_retried_and_names_the_timeout_key():
    """The server received the request and is still working on it under its lock: a retry would queue a
    second generation behind the first. The error says which key to raise."""
    client, seen = _mock_server(httpx.ReadTimeout, failures=1)
    gen = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client, retries=2)
    with pytest.raises(ServerError, match=r"/generate gave no answer within the timeout.*generation.server_timeout_s"):
        gen.generate([[1]], 2)
    assert seen == ["/info", "/generate"]


def test_connection_failures_are_retried():
    client, seen = _mock_server(httpx.ConnectError, failures=1)
    gen = ServerGenerator("http://test", Sampling(max_new_tokens=2), pad_id=PAD, client=client, retries=1)
    assert len(gen.generate([[1]], 2)) == 2
    assert seen == ["/info", "/generate", "/generate"]


def test_server_validates_requests(served):
    _, client = served
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/generate", json={"prompt_ids": [[]], "n": 2, "sampling": {}}).status_code == 422
    bad = {"prompt_ids": [[1]], "n": 2, "sampling": {"max_new_tokens": 2, "beam_width": 3}}
    assert client.post("/generate", json=bad).status_code == 422
    assert client.post("/update_weights", json={"path": "/nope.safetensors", "version": 1}).status_code == 403


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError, match=r"unreachable after 1 tries.*grpo.serve"):
        ServerGenerator(f"http://127.0.0.1:{port}", Sampling(max_new_tokens=2), pad_id=PAD, retries=0)


# ---- the trainer with an engine's log-probs --------------------------------------------------------------------


class _MismatchedEngine:
    """Scripted completions whose sampler log-probs are the policy's own + ``shift`` (an engine that rates
    every sampled token e^shift times more likely than the trainer does)."""

    def __init__(self, policy: torch.nn.Module, shift: float) -> None:
        self.inner, self.policy, self.shift = ScriptedGenerator(), policy, shift

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        r = self.inner.generate(prompt_ids, group_size)
        ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)
        mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)
        with torch.no_grad():
            logps = token_logprobs(self.policy.eval(), ids, mask, r.completion_ids.shape[1])
        return dataclasses.replace(r, sampler_logps=(logps + self.shift) * r.completion_mask)

    def sync_weights(self, model: torch.nn.Module) -> None:
        pass


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("shift", "ratio"), [(0.0, 1.0), (math.log(2.0), 0.5)])
def test_trainer_reweights_by_the_engine_mismatch(tmp_path, shift, ratio):
    def step(generator_for: Any) -> dict[str, float]:
        model = tiny_llama(seed=1)
        cfg = training_config(tmp_path, optim={"max_grad_norm": 0.0})
        trainer = GRPOTrainer(model, generator_for(model), TokenSetScorer(range(2, 10)), prompts(4), cfg)
        return trainer.train_step()

    base = step(lambda _model: ScriptedGenerator())
    corrected = step(lambda model: _MismatchedEngine(model, shift))
    # An engine that agrees with the trainer changes nothing; one that over-rates every sampled token ×2 gets
    # weights π_old/μ = 1/2, which halves the gradient.
    assert corrected["is/ratio_mean"] == pytest.approx(ratio, rel=1e-4)
    assert corrected["grad_norm"] == pytest.approx(ratio * base["grad_norm"], rel=1e-3)


# ---- the server path end to end: a real server process (transformers engine) on 127.0.0.1 -------------------


@pytest.fixture
def served_tiny(tmp_path):
    """`python -m grpo.serve --engine hf` on a free port, serving a saved tiny Llama."""
    model_dir = tmp_path / "model"
    tiny_llama(seed=4).save_pretrained(model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "grpo.serve", "--engine", "hf", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"grpo.serve exited: {proc.stderr.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url, model_dir
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_server_backend_trains_with_synced_weights(tmp_path, served_tiny):
    """Trainer ↔ real server process: the server's log-probs match the trainer's at every step (weights are
    synced after each update); with overlap the prefetched step was sampled one update earlier, which the
    importance statistics show."""
    url, model_dir = served_tiny
    sampling = Sampling(max_new_tokens=8, temperature=1.0, stop_ids=(1,))

    def trainer(overlap: bool) -> GRPOTrainer:
        cfg = training_config(
            tmp_path / f"run-{overlap}",
            generation={"backend": "vllm_server", "overlap": overlap},
            optim={"lr": 5e-2},
            run={"max_steps": 3},
        )
        gen = ServerGenerator(url, sampling, pad_id=PAD, vocab_size=32)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        t = GRPOTrainer(model, gen, TokenSetScorer(range(2, 10)), prompts(4), cfg)
        t.generator.sync_weights(t.policy)  # what train() does first; this test drives train_step itself
        return t

    t = trainer(overlap=False)
    steps = [t.train_step() for _ in range(2)]
    assert all(m["is/abs_logp_diff_max"] < 1e-3 for m in steps), [m["is/abs_logp_diff_max"] for m in steps]
    assert not torch.equal(t.policy.model.norm.weight, tiny_llama(seed=4).model.norm.weight)  # it trained

    t = trainer(overlap=True)
    first = t.train_step()
    t.step += 1
    second = t.train_step()  # sampled with the weights from before the first update
    assert first["is/abs_logp_diff_max"] < 1e-3
    assert second["is/abs_logp_diff_mean"] > 10 * first["is/abs_logp_diff_mean"]
