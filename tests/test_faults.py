"""Faults and hostile input (issue 13): each case ends in a named error, a refusal or a safe recovery."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from grpo.config import GenerationConfig, TrainingConfig
from grpo.generation import HFGenerator
from grpo.importance import importance_weights
from grpo.loss import grpo_loss
from grpo.trainer import GRPOTrainer, NonFiniteError
from tests.grpo_fixtures import (
    PAD,
    STOP,
    ScriptedGenerator,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)
from tomlconfig import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(run_dir, scorer=None, generator=None, **sections) -> GRPOTrainer:
    cfg = training_config(run_dir, **sections)
    return GRPOTrainer(
        tiny_llama(seed=3),
        generator or ScriptedGenerator(),
        scorer or TokenSetScorer(range(2, 12)),
        prompts(6),
        cfg,
    )


# --------------------------------------------------------------------------------------------------------------
# 1. Numerics: no NaN through the importance mask or the ratio; non-finite steps and saves are refused


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_importance_mask_of_a_huge_mismatch_is_zero_not_nan(level):
    old = torch.zeros(2, 4)
    sampler = torch.tensor([[-100.0, 0, 0, 0], [-3.0, -3.0, -3.0, 0]])  # 100 nats at a token; 3 nats/token
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    w, stats = importance_weights(old, sampler, mask, level=level, cap=3.0, mode="mask")
    assert torch.isfinite(w).all(), w
    assert w[0, 0] == 0 and w[0, 3] == 0  # beyond the cap, and padding
    if level == "sequence":
        assert (w[1] == 0).all()  # exp(9) > 3: the whole sequence drops out
    assert all(math.isfinite(v) for v in stats.values()), stats
    w_trunc, _ = importance_weights(old, sampler, mask, level=level, cap=3.0, mode="truncate")
    assert torch.isfinite(w_trunc).all() and w_trunc.max() <= 3.0


def test_loss_ratio_is_clamped_so_a_huge_log_ratio_gives_a_finite_loss_and_gradient():
    logps = torch.tensor([[100.0, 0.0], [-100.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    ref = torch.full((2, 2), 100.0)
    loss, stats = grpo_loss(logps, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2), ref_logps=ref, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert all(torch.isfinite(v) for v in stats.values()), stats


class _NaNSamplerGenerator(ScriptedGenerator):
    """An engine that reports a NaN log-prob for one sampled token (a broken kernel, a bad weight push)."""

    def generate(self, prompt_ids, group_size):
        r = super().generate(prompt_ids, group_size)
        logps = torch.full(r.completion_ids.shape, -1.0)
        logps[0, 0] = float("nan")
        return dataclasses.replace(r, sampler_logps=logps)


def test_a_non_finite_step_is_refused_before_it_touches_the_weights(tmp_path):
    tr = _trainer(tmp_path, generator=_NaNSamplerGenerator())
    before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()}
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite loss=nan, grad_norm=nan"):
        tr.train()
    for n, p in tr.policy.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not list(tmp_path.glob("checkpoint-*"))  # nothing was saved


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    tr = _trainer(tmp_path)
    with torch.no_grad():
        tr.policy.model.norm.weight[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"parameter model.norm.weight is not finite"):
        tr.save()
    assert not list(tmp_path.glob("*checkpoint-*"))


# --------------------------------------------------------------------------------------------------------------
# 2. hf backend + processed sampling: refused at config load (no uncorrected off-policy sampling)


@pytest.mark.parametrize("setting", ["top_p = 0.5", "top_k = 20", "repetition_penalty = 1.2"])
def test_hf_backend_refuses_processed_sampling_at_config_load(tmp_path, setting):
    path = tmp_path / "c.toml"
    path.write_text(f'[generation]\nbackend = "hf"\nhf_decoder = "generate"\n{setting}\n')
    key = setting.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"c.toml: generation.{key}=.*returns no sampler log-probs"):
        load_config(TrainingConfig, path)
    path.write_text(f'[generation]\nbackend = "hf"\n{setting}\n[run]\nparallel = "fsdp"\n')  # generate under FSDP
    with pytest.raises(ConfigError, match=rf"c.toml: generation.{key}=.*returns no sampler log-probs"):
        load_config(TrainingConfig, path)
    path.write_text(f'[generation]\nbackend = "hf"\n{setting}\n')  # the loop returns the processed log-probs
    assert load_config(TrainingConfig, path).generation.hf_decoder == "loop"
    path.write_text(f'[generation]\nbackend = "vllm_server"\n{setting}\n')  # processed log-probs: corrected
    assert load_config(TrainingConfig, path).generation.backend == "vllm_server"
    GenerationConfig(backend="hf", top_p=0.5)  # sampling alone (evaluation) stays allowed


def test_train_refuses_hf_with_top_p_before_loading_models(capsys):
    from llasa_grpo import train

    argv = ["--config", "tiny.toml", "--set", "generation.top_p=0.5", "--set", "generation.hf_decoder=generate"]
    assert train.main(argv) == 2
    assert "tiny.toml: generation.top_p=0.5: generation.backend = 'hf'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# 7. A step that raises: the last completed step is saved (exactly resumable); bad languages refused at load


class _FailingScorer(TokenSetScorer):
    """Scores like TokenSetScorer; the ``fail_at``-th call raises as a vanished transcription service does."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(range(2, 12))
        self.fail_at, self.calls = fail_at, 0

    def score(self, rollouts):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("transcription service at http://127.0.0.1:8765 is gone")
        return super().score(rollouts)


def _sampling_trainer(run_dir, initial, fail_at=None, max_steps=4):
    cfg = training_config(run_dir, run={"max_steps": max_steps, "save_every": 0, "seed": 7})
    model = copy.deepcopy(initial)
    gen = HFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP])
    return GRPOTrainer(model, gen, _FailingScorer(fail_at), prompts(5), cfg)


def test_an_exception_mid_run_saves_the_last_completed_step_which_resumes_exactly(tmp_path, capsys):
    initial = tiny_llama(seed=11)
    straight = _sampling_trainer(tmp_path / "a", initial)
    straight.train()

    failing = _sampling_trainer(tmp_path / "b", initial, fail_at=3)  # save_every = 0: nothing saved on main
    with pytest.raises(ConnectionError):
        failing.train()
    assert failing.failure_checkpoint == tmp_path / "b" / "checkpoint-2"
    assert "step 3 failed (ConnectionError): saved step 2" in capsys.readouterr().out
    state = json.loads((tmp_path / "b" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data"] == {"epoch": 0, "position": 4}  # not past step 3's prompts

    resumed = _sampling_trainer(tmp_path / "b", initial)
    result = resumed.train(resume=tmp_path / "b" / "checkpoint-2")
    assert (result.start_step, result.step) == (2, 4)
    for (name, p), q in zip(straight.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_a_failure_at_the_first_step_or_after_an_update_saves_nothing(tmp_path):
    initial = tiny_llama(seed=1)
    with pytest.raises(ConnectionError):
        _sampling_trainer(tmp_path / "a", initial, fail_at=1).train()
    assert not list((tmp_path / "a").glob("*checkpoint-*"))
    tr = _sampling_trainer(tmp_path / "b", initial)
    tr.train_step()
    tr.step = 1
    tr._updated_this_step = True  # as if the second of μ updates had raised
    tr._save_after_failure(RuntimeError("x"), print)
    assert tr.failure_checkpoint is None and not list((tmp_path / "b").glob("*checkpoint-*"))


def test_an_unknown_language_is_refused_at_data_load_with_its_line():
    import types

    from llasa_grpo import recipe

    if not recipe.whisper_languages():
        pytest.skip("faster-whisper is not installed")
    cfg = recipe.load("tiny.toml")
    row = types.SimpleNamespace(language="xx", line=7)
    with pytest.raises(ConfigError, match=r"data/tiny.jsonl' line 7: language 'xx': not a language the Whisper"):
        recipe.example_language(cfg, row)
    assert recipe.example_language(cfg, types.SimpleNamespace(language="de", line=1)) == "de"


# --------------------------------------------------------------------------------------------------------------
# 3, 10, 11, 12. The generation server: bounded requests, validated weight files, checked request fields


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-served")
    tiny_llama(seed=21).save_pretrained(path)
    return path


@pytest.fixture
def hf_served(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from grpo.engine import HFEngine
    from grpo.serve import create_app

    engine = HFEngine(str(tiny_model_dir))
    weights_dir = tmp_path / "shm"
    weights_dir.mkdir()
    return engine, TestClient(create_app(engine, weights_dir=weights_dir)), weights_dir


def test_hf_engine_keeps_only_the_chosen_tokens_logprobs_and_they_are_the_processed_ones(tiny_model_dir, monkeypatch):
    from grpo.engine import HFEngine, Sampling
    from grpo.generation import hf_sampling_config, left_pad

    engine = HFEngine(str(tiny_model_dir))
    sampling = Sampling(max_new_tokens=6, temperature=0.7, top_p=0.8, top_k=5, repetition_penalty=1.3, seed=3)
    sampling = dataclasses.replace(sampling, stop_ids=(STOP,))
    real_generate = engine.model.generate
    kwargs_seen = []

    def generate(**kwargs):
        kwargs_seen.append(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(engine.model, "generate", generate)
    prompts_ = [[4, 5, 6], [7, 8]]
    samples = engine.generate(prompts_, 3, sampling)
    assert not kwargs_seen[0].get("output_scores") and not kwargs_seen[0].get("return_dict_in_generate")
    monkeypatch.undo()

    # Reference: transformers' own processed scores of the same sampling (what the engine kept before, [N, T, V]).
    ids, mask = left_pad([p for p in prompts_ for _ in range(3)], STOP)
    torch.manual_seed(3)
    out = engine.model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=hf_sampling_config(sampling, STOP),
        output_scores=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :]
    ref = torch.stack(out.scores, 1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
    flat = [s for g in samples for s in g]
    for i, s in enumerate(flat):
        k = len(s.token_ids)
        assert list(s.token_ids) == new[i, :k].tolist()
        torch.testing.assert_close(torch.tensor(s.logprobs), ref[i, :k], atol=1e-5, rtol=0)
    assert any(lp < -1e-3 for s in flat for lp in s.logprobs)


def test_server_bounds_prompts_times_n_times_max_new_tokens():
    from fastapi.testclient import TestClient

    from grpo.serve import create_app
    from tests.test_vllm_backends import FakeEngine

    engine = FakeEngine()
    client = TestClient(create_app(engine, max_request_tokens=100))
    body = {"prompt_ids": [[1], [2]], "n": 10, "sampling": {"max_new_tokens": 6}}
    reply = client.post("/generate", json=body)
    assert reply.status_code == 422 and "2 × 10 × 6 = 120 exceeds" in reply.json()["detail"]
    assert "--max-request-tokens" in reply.json()["detail"] and engine.calls == []
    body["sampling"]["max_new_tokens"] = 5
    assert client.post("/generate", json=body).status_code == 200


def _push(client, path, version):
    return client.post("/update_weights", json={"path": str(path), "version": version})


def test_bad_weight_files_are_refused_before_the_served_model_changes(hf_served, tmp_path):
    from safetensors.torch import save_file

    engine, client, shm = hf_served
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    good = {k: torch.zeros_like(v) for k, v in before.items() if k != "lm_head.weight"}
    cases = {
        "shape": {**good, "model.norm.weight": torch.zeros(7)},
        "name": {**good, "model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)},
        "dtype": {**good, "model.norm.weight": torch.zeros(32, dtype=torch.float16)},
        "nan": {**good, "model.norm.weight": torch.full((32,), float("nan"))},
    }
    expected = {"shape": "has shape (7,)", "name": "unexpected", "dtype": "float16", "nan": "NaN or inf"}
    for case, tensors in cases.items():
        save_file(tensors, str(shm / f"{case}.safetensors"))
        reply = _push(client, shm / f"{case}.safetensors", 1)
        assert reply.status_code == 400 and expected[case] in reply.json()["detail"], (case, reply.json())
        for k, v in engine.model.state_dict().items():
            assert torch.equal(v, before[k]), (case, k)
    assert client.get("/info").json()["weights_version"] == 0
    save_file(good, str(shm / "good.safetensors"))
    assert _push(client, shm / "good.safetensors", 1).status_code == 200
    assert (engine.model.model.norm.weight == 0).all()
    assert _push(client, shm / "good.safetensors", 2).status_code == 200
    reply = _push(client, shm / "good.safetensors", 2)  # a version that does not increase
    assert reply.status_code == 409 and client.get("/info").json()["weights_version"] == 2


def test_update_weights_loads_only_files_inside_the_weights_folder(hf_served, tmp_path):
    from safetensors.torch import save_file

    engine, client, shm = hf_served
    outside = tmp_path / "elsewhere.safetensors"
    save_file({k: v.clone() for k, v in engine.model.state_dict().items() if k != "lm_head.weight"}, str(outside))
    (shm / "link.safetensors").symlink_to(outside)
    for path in (outside, shm / "link.safetensors", shm / ".." / "elsewhere.safetensors"):
        reply = _push(client, path, 1)
        assert reply.status_code == 403 and "outside the server's weights folder" in reply.json()["detail"], path
    assert client.get("/info").json()["weights_version"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt_ids": [[1, 32]], "n": 2, "sampling": {"max_new_tokens": 2}}, "prompt_ids[0]: token id 32"),
        ({"prompt_ids": [[-1]], "n": 2, "sampling": {"max_new_tokens": 2}}, "prompt_ids"),
        ({"prompt_ids": [[1]], "n": 2, "sampling": {"max_new_tokens": 2, "temperature": 0}}, "temperature"),
        ({"prompt_ids": [[1]], "n": 2, "sampling": {"max_new_tokens": 2, "top_p": 5}}, "top_p"),
        ({"prompt_ids": [[1]], "n": "2", "sampling": {"max_new_tokens": 2}}, '"n"'),
        ({"prompt_ids": "abc", "n": 2, "sampling": {"max_new_tokens": 2}}, "prompt_ids"),
        ({"prompt_ids": [[1]], "n": 2, "sampling": {"max_new_tokens": 2, "stop_ids": [99]}}, "stop_ids: token id 99"),
    ],
)
def test_generate_requests_are_validated_naming_the_field(body, field):
    from fastapi.testclient import TestClient

    from grpo.serve import create_app
    from tests.test_vllm_backends import FakeEngine

    engine = FakeEngine(vocab_size=32)
    reply = TestClient(create_app(engine), raise_server_exceptions=False).post("/generate", json=body)
    assert reply.status_code == 422, reply.text
    assert field in reply.text and engine.calls == []


# --------------------------------------------------------------------------------------------------------------
# 4. Resuming with changed settings: applied (and printed, recorded) or refused, per field


def test_a_resumed_run_applies_the_new_optimizer_settings(tmp_path):
    first = _trainer(tmp_path, run={"max_steps": 2, "save_every": 2}, optim={"lr": 1e-2, "max_grad_norm": 1.0})
    first.train()
    resumed = _trainer(
        tmp_path, run={"max_steps": 4}, optim={"lr": 0.05, "betas": (0.8, 0.9), "weight_decay": 0.1, "adam_eps": 1e-6}
    )
    resumed.load(tmp_path / "checkpoint-2")
    groups = resumed.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.05, 0.05] and resumed.scheduler.base_lrs == [0.05, 0.05]
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # 1-D parameters keep no decay
    assert resumed.train_step()["lr"] == 0.05


def _recorded_checkpoint(run_dir, cfg) -> Path:
    from grpo.checkpoint import save_checkpoint
    from tomlconfig import to_dict

    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    state = {"data": {"epoch": 0, "position": 2}, "config": json.loads(json.dumps(to_dict(cfg)))}
    return save_checkpoint(run_dir, 3, model=model, optimizer=opt, scheduler=sched, state=state)


def test_resume_prints_and_records_applied_changes_and_refuses_fixed_ones(tmp_path, capsys):
    from llasa_grpo import recipe, train

    ckpt = _recorded_checkpoint(tmp_path, recipe.load("tiny.toml"))
    changed = recipe.load("tiny.toml", ["optim.lr=0.05", "run.max_steps=9"])
    changes = train.check_resume_config(ckpt, tmp_path, changed)
    assert [(k, a, b) for k, a, b, _ in changes] == [("optim.lr", 1e-3, 0.05), ("run.max_steps", 6, 9)]
    out = capsys.readouterr().out
    assert "with changed settings (applied): optim.lr 0.001 → 0.05, run.max_steps 6 → 9" in out
    log = [json.loads(x) for x in (tmp_path / "resumes.jsonl").read_text().splitlines()]
    assert log[0]["changes"]["optim.lr"] == {"from": 0.001, "to": 0.05} and log[0]["checkpoint"] == str(ckpt)

    for override, key in [("grpo.group_size=8", "grpo.group_size"), ("model.path='other'", "model.path")]:
        with pytest.raises(ConfigError, match=rf"{key} .* cannot change when resuming"):
            train.check_resume_config(ckpt, tmp_path, recipe.load("tiny.toml", [override]))


# --------------------------------------------------------------------------------------------------------------
# 5, 6. Checkpoints are validated; --resume auto takes the newest valid one; completeness is one marker


def _save(run_dir, step, keep_last=5):
    from grpo.checkpoint import save_checkpoint

    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    state = {"data": {"epoch": 0, "position": 0}}
    return save_checkpoint(run_dir, step, model=model, optimizer=opt, scheduler=sched, state=state, keep_last=keep_last)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate_weights", r"model.safetensors: \d+ bytes, \d+ when written \(truncated"),
        ("empty_optimizer", r"optimizer.pt: 0 bytes"),
        ("bad_json", r"trainer_state.json: "),
        ("wrong_step", r"trainer_state.json: step 2 disagrees with the folder checkpoint-6"),
        ("no_marker", r"checkpoint.complete: missing: the checkpoint is incomplete"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_auto_resume_skips_it(tmp_path, damage, message, capsys):
    from grpo.checkpoint import CheckpointError, find_checkpoint, validate_checkpoint

    _save(tmp_path, 1)
    bad = _save(tmp_path, 2)
    if damage == "truncate_weights":
        w = bad / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "empty_optimizer":
        (bad / "optimizer.pt").write_bytes(b"")
    elif damage == "bad_json":
        (bad / "trainer_state.json").write_text("{not json", encoding="utf-8")
    elif damage == "wrong_step":
        bad = bad.rename(tmp_path / "checkpoint-6")
    else:
        (bad / "checkpoint.complete").unlink()
    with pytest.raises(CheckpointError, match=message):
        validate_checkpoint(bad)
    with pytest.raises(CheckpointError, match=message):
        find_checkpoint(str(bad), tmp_path)  # an explicit --resume DIR fails, naming the file
    capsys.readouterr()
    assert find_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-1"
    out = capsys.readouterr().out
    assert f"skipping {bad.name}: " in out and "resuming from" in out and "checkpoint-1" in out
    tr = _trainer(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        tr.load(bad)


def test_a_data_file_that_shrank_resumes_at_the_next_epoch(tmp_path, capsys):
    tr = _trainer(tmp_path, run={"max_steps": 2, "save_every": 2})  # 6 prompts, 2 per step: position 4
    tr.train()
    cfg = training_config(tmp_path, run={"max_steps": 3})
    shrunk = GRPOTrainer(tiny_llama(seed=3), ScriptedGenerator(), TokenSetScorer(range(2, 12)), prompts(3), cfg)
    shrunk.load(tmp_path / "checkpoint-2")
    assert "data position 4 is past the 3 prompts" in capsys.readouterr().out
    assert shrunk.sampler.state_dict() == {"epoch": 1, "position": 0}
    shrunk.train_step()  # no IndexError


def test_pruning_killed_half_way_leaves_nothing_that_counts_as_a_checkpoint(tmp_path, monkeypatch):
    import shutil

    from grpo.checkpoint import checkpoint_dirs, find_checkpoint

    _save(tmp_path, 1, keep_last=2)
    _save(tmp_path, 2, keep_last=2)
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        if Path(path).name == "checkpoint-1":  # the prune: scheduler.pt goes first, then the kill
            (Path(path) / "scheduler.pt").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr("grpo.checkpoint.shutil.rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 3, keep_last=2)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()  # the state file survived the kill
    assert checkpoint_dirs(tmp_path) == [tmp_path / "checkpoint-2", tmp_path / "checkpoint-3"]
    assert find_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-3"


# --------------------------------------------------------------------------------------------------------------
# 8, 9. One run per folder (a lock naming the PID); a writable folder checked first; clear write failures


def test_a_second_run_in_the_same_folder_is_refused_with_the_pid(tmp_path):
    import subprocess
    import sys

    from grpo.checkpoint import RunDirError, lock_run_dir

    held = lock_run_dir(tmp_path / "run")
    with pytest.raises(RunDirError, match=rf"in use by another run \(PID {os.getpid()}, lock .*\.lock\)"):
        lock_run_dir(tmp_path / "run")
    code = "import sys; from grpo.checkpoint import lock_run_dir; lock_run_dir(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert other.returncode != 0 and f"PID {os.getpid()}" in other.stderr

    from llasa_grpo import train

    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    train.prepare_run_dir(tmp_path / "run", None, overwrite=True)  # --overwrite keeps the lock it holds
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]
    with pytest.raises(RunDirError):
        lock_run_dir(tmp_path / "run")
    held.close()
    lock_run_dir(tmp_path / "run").close()  # released with its file (and by the kernel when a process dies)


def test_an_unwritable_run_folder_fails_in_the_preflight(tmp_path, monkeypatch, capsys):
    import errno

    from grpo.checkpoint import RunDirError, check_writable

    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"is not a folder: not writable"):
        check_writable(tmp_path / "file" / "run")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("grpo.checkpoint.tempfile.TemporaryFile", refused)
    with pytest.raises(RunDirError, match=rf"not writable: {tmp_path}"):
        check_writable(tmp_path / "new" / "run")
    monkeypatch.undo()

    from llasa_grpo import train

    rc = train.main(["--config", "tiny.toml", "--set", f"run.output_dir={json.dumps(str(tmp_path / 'file' / 'r'))}"])
    assert rc == 2 and "is not a folder: not writable" in capsys.readouterr().err


def test_a_full_disk_is_named_and_the_partial_checkpoint_removed(tmp_path, monkeypatch):
    import collections
    import errno

    from grpo.checkpoint import RunDirError, checkpoint_dirs, validate_checkpoint

    _save(tmp_path, 1)
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("grpo.checkpoint.torch.save", full)
    monkeypatch.setattr("grpo.checkpoint.shutil.disk_usage", lambda _p: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(RunDirError, match=r"cannot write checkpoint .*\.tmp-checkpoint-2: no space left on device"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".tmp-*")) and checkpoint_dirs(tmp_path) == [tmp_path / "checkpoint-1"]
    validate_checkpoint(tmp_path / "checkpoint-1")

    def enospc(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("grpo.checkpoint.torch.save", enospc)
    with pytest.raises(RunDirError, match=r"no space left on device"):
        _save(tmp_path, 3)


# --------------------------------------------------------------------------------------------------------------
# 13, 14. reward.service bounds every request; both services warn when bound beyond localhost


class _CountingTranscriber:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def transcribe(self, audios, language):
        from reward.asr.transcript import Transcript

        self.calls.append(len(audios))
        return [Transcript(text="x", avg_logprob=0.0, no_speech_prob=0.0, silent=False, raw_text="x") for _ in audios]


def test_transcription_service_bounds_clips_seconds_and_body_naming_the_key():
    import numpy as np
    from fastapi.testclient import TestClient

    from reward.asr.http import encode_audio
    from reward.config import TranscriberConfig
    from reward.service import create_app

    model = _CountingTranscriber()
    limits = TranscriberConfig(max_clips=4, max_audio_s=3.0, max_request_mb=0.5)
    client = TestClient(create_app(model, "stub", limits))
    second = encode_audio(np.zeros(16000))
    many = {"languages": ["en"] * 5, "audios": [""] * 5}
    reply = client.post("/transcribe", json=many)
    assert reply.status_code == 413 and "transcriber.max_clips=4 (reward.service --max-clips)" in reply.text
    long = {"languages": ["en"] * 2, "audios": [second, encode_audio(np.zeros(40000))]}
    reply = client.post("/transcribe", json=long)
    assert reply.status_code == 413 and "4 s of audio exceed transcriber.max_audio_s=3.0" in reply.text
    big = {"languages": ["en"], "audios": ["A" * (1 << 20)]}
    reply = client.post("/transcribe", json=big)
    assert reply.status_code == 413 and "exceeds transcriber.max_request_mb=0.5" in reply.text
    assert model.calls == []  # none of them reached the model
    ok = client.post("/transcribe", json={"languages": ["en"] * 2, "audios": [second, second]})
    assert ok.status_code == 200 and model.calls == [2]


def test_http_client_splits_its_batches_to_fit_the_service_bounds():
    import numpy as np
    from fastapi.testclient import TestClient

    from reward.asr.http import HTTPTranscriber
    from reward.config import TranscriberConfig
    from reward.service import create_app

    model = _CountingTranscriber()
    limits = TranscriberConfig(backend="http", url="http://test", max_clips=3, max_audio_s=2.5)
    client = HTTPTranscriber(limits, client=TestClient(create_app(model, "stub", limits)))
    out = client.transcribe([np.zeros(16000)] * 7, "en")
    assert len(out) == 7 and model.calls == [2, 2, 2, 1]  # 2.5 s per request: two 1-s clips each


def test_services_warn_when_bound_beyond_localhost(monkeypatch, capsys):
    import uvicorn

    import grpo.serve
    import reward.service
    from tests.test_vllm_backends import FakeEngine

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(grpo.serve, "HFEngine", lambda *a, **k: FakeEngine())
    monkeypatch.setattr(reward.service, "WhisperTranscriber", lambda *a, **k: _CountingTranscriber())
    grpo.serve.main(["--model", "m", "--engine", "hf", "--host", "127.0.0.1"])
    reward.service.main(["--host", "127.0.0.1"])
    assert "warning" not in capsys.readouterr().err
    grpo.serve.main(["--model", "m", "--engine", "hf", "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert "listening on 0.0.0.0: this service has no authentication" in err and "replace the served weights" in err
    reward.service.main(["--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert "reward.service has no authentication" in err and "arbitrary audio" in err


# --------------------------------------------------------------------------------------------------------------
# 16, 17. Input files: manifest rows, non-finite audio, lone surrogates and too-long prompts, each file:line


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": "a", "audio": "a.wav", "finished": "no"}', "field 'finished' must be true or false, got 'no'"),
        ('{"text": "a", "audio": "a.wav", "codes": [1, 70000]}', r"field 'codes'\[1\] = 70000: codes are integers"),
        ('{"text": "a", "audio": "a.wav", "codes": [-1]}', r"codes'\[0\] = -1"),
        ('{"text": "a", "audio": "a.wav", "codes": "1 2"}', "field 'codes' must be an array of integers"),
        ('{"text": 5, "audio": "a.wav"}', "field 'text' must be a non-empty string, got 5"),
        ('{"text": "a", "audio": "a.wav", "language": 1}', "field 'language' must be a string"),
        ('{"text": "a", "audio": ', "invalid JSON"),
        ('["a", "b"]', "expected an object"),
    ],
)
def test_manifest_rows_are_validated_with_file_and_line(tmp_path, line, reason):
    from reward.__main__ import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "ok", "audio": "a.wav", "finished": true, "codes": [0, 65535]}\n\n' + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["score", "--manifest", str(manifest), "--language", "en"])
    assert str(e.value).startswith(f"[reward] {manifest}:3: ")
    assert re.search(reason, str(e.value)), str(e.value)


def test_audio_with_nan_or_inf_samples_is_refused_naming_the_file(tmp_path):
    import numpy as np
    import soundfile as sf

    from tts.audio import load_audio

    wav = np.zeros(1600, dtype=np.float32)
    wav[[3, 9]] = [np.nan, np.inf]
    sf.write(tmp_path / "bad.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=rf"audio file {tmp_path / 'bad.wav'}: 2 of 1600 samples are NaN or inf"):
        load_audio(tmp_path / "bad.wav")
    sf.write(tmp_path / "good.wav", np.zeros(1600, dtype=np.float32), 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "good.wav").shape == (1600,)


def test_a_lone_surrogate_in_a_data_row_is_named_with_its_line(tmp_path):
    from tts.data import DataError, load_examples

    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'text' holds a lone surrogate '\\ud800' at character 4"):
        load_examples(path)


def test_a_prompt_too_long_for_the_model_is_refused_at_data_load(tmp_path):
    from transformers import AutoTokenizer

    from llasa_grpo import recipe
    from tts.data import load_examples
    from tts.llasa import SpeechVocab
    from tts.tiny import tiny_assets

    rows = [{"text": "Kurz.", "language": "de"}, {"text": "Lang " * 2000, "language": "de"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = recipe.load("tiny.toml", [f"data.path={json.dumps(str(tmp_path / 'd.jsonl'))}", "data.allowed_chars='*'"])
    model_dir = tiny_assets()[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    limit = recipe.model_max_positions(str(model_dir))
    assert limit == 4096
    with pytest.raises(ConfigError, match=r"line 2: prompt too long for the model: \d+ prompt tokens \+ generation"):
        recipe.build_prompts(cfg, load_examples(cfg.data.path), tokenizer, vocab, max_positions=limit)
    assert len(recipe.build_prompts(cfg, load_examples(cfg.data.path)[:1], tokenizer, vocab, max_positions=limit)) == 1
