from __future__ import annotations

import copy
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from grpo.advantages import group_advantages
from grpo.generation import HFGenerator
from grpo.logprobs import token_logprobs
from grpo.loss import grpo_loss
from grpo.rollouts import Rollouts, Scores
from grpo.trainer import GRPOTrainer, PromptSampler, lr_lambda
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

pytestmark = pytest.mark.usefixtures("one_thread")

SCORER_TARGET = range(2, 12)


def _trainer(tmp_path, model=None, generator=None, scorer=None, ref=None, n_prompts=6, **sections):
    model = model or tiny_llama()
    cfg = training_config(tmp_path, **sections)
    return GRPOTrainer(
        model,
        generator or ScriptedGenerator(),
        scorer or TokenSetScorer(SCORER_TARGET),
        prompts(n_prompts),
        cfg,
        ref_model=ref,
    )


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_accumulated_gradient_equals_full_batch_gradient(tmp_path, aggregation):
    """Micro-batches of 3 (the last one short) with the step's normaliser give the full batch's gradient."""
    initial = tiny_llama(seed=5)
    tr = _trainer(
        tmp_path,
        model=copy.deepcopy(initial),
        grpo={"micro_batch_size": 3, "batch_size": 8, "loss_aggregation": aggregation, "advantage_scale": "batch"},
        optim={"max_grad_norm": 0.0},  # no clipping: the optimizer sees the raw gradient
    )
    seen: dict[str, torch.Tensor] = {}  # the gradients as the optimizer step receives them (freed after it)
    tr.optimizer.register_step_pre_hook(
        lambda *_: seen.update({n: p.grad.clone() for n, p in tr.policy.named_parameters()})
    )
    tr.train_step()
    assert all(p.grad is None for p in tr.policy.parameters())  # not held through the next generation
    r = tr.last_rollouts
    rewards = TokenSetScorer(SCORER_TARGET).score(r).rewards
    adv = group_advantages(rewards, r.group_size, "batch")
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    logps = token_logprobs(initial.train(), ids, mask, r.completion_ids.shape[1])
    loss, _ = grpo_loss(
        logps, logps.detach(), adv, r.completion_mask.float(), aggregation=aggregation, max_completion_length=8
    )
    loss.backward()
    assert adv.abs().sum() > 0
    for (name, _), q in zip(tr.policy.named_parameters(), initial.parameters(), strict=True):
        torch.testing.assert_close(seen[name], q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_activation_checkpointing_changes_memory_not_the_update(tmp_path):
    initial = tiny_llama(seed=6)
    plain = _trainer(tmp_path / "a", model=copy.deepcopy(initial))
    ckpt = _trainer(tmp_path / "b", model=copy.deepcopy(initial), run={"gradient_checkpointing": True})
    assert ckpt.policy.model.gradient_checkpointing and not plain.policy.model.gradient_checkpointing
    plain.train_step()
    ckpt.train_step()
    for (name, p), q in zip(plain.policy.named_parameters(), ckpt.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_multiple_iterations_and_kl_to_reference(tmp_path):
    model = tiny_llama(seed=2)
    tr = _trainer(
        tmp_path, model=model, ref=copy.deepcopy(model), grpo={"num_iterations": 3, "beta": 0.1}, optim={"lr": 3e-2}
    )
    m1 = tr.train_step()
    assert "time/old_logps" in m1 and "time/ref_logps" in m1
    # First update: π = π_old = π_ref, so the ratio is exactly 1 and the k3 KL exactly 0.
    assert m1["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m1["loss/clip_frac"] == 0.0
    assert m1["loss/kl_mean"] == pytest.approx(0.0, abs=1e-7)
    # The third update sees a policy two updates away from the sampler: ratios move, and so does the KL.
    assert abs(m1["loss/last_ratio_mean"] - 1.0) > 1e-4
    assert m1["loss/last_kl_mean"] > 1e-6
    m2 = tr.train_step()
    assert m2["loss/kl_mean"] > 1e-6
    assert tr.scheduler.last_epoch == 6  # one scheduler step per optimizer update


def test_metrics_cover_the_step(tmp_path):
    gen_model = tiny_llama(seed=4)
    tr = _trainer(
        tmp_path,
        model=gen_model,
        generator=HFGenerator(gen_model, training_config(tmp_path).generation, pad_id=PAD, stop_ids=[STOP]),
    )
    m = tr.train_step()
    for key in [
        "reward/mean", "reward/std", "reward/zero_spread", "reward/in_set", "completion/tokens",
        "completion/finished", "loss", "loss/clip_frac", "loss/clip_low_frac", "loss/clip_high_frac",
        "policy/entropy", "grad_norm", "lr", "time/generate", "time/score", "time/update", "time/step",
    ]:  # fmt: skip
        assert key in m, key
    assert "time/old_logps" not in m and "loss/kl_mean" not in m  # μ = 1 and β = 0: neither is computed
    assert 0 < m["policy/entropy"] <= torch.log(torch.tensor(32.0)).item() + 1e-5
    assert m["lr"] == pytest.approx(1e-2) and m["grad_norm"] > 0
    assert tr.ref_model is None


def test_schedules():
    warm = lr_lambda(total=10, warmup=4, schedule="constant", min_ratio=0.0)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = lr_lambda(total=10, warmup=0, schedule="cosine", min_ratio=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(5) == pytest.approx(0.55) and cos(10) == pytest.approx(0.1)


def test_prompt_sampler_covers_each_epoch_and_resumes():
    a = PromptSampler(5, seed=1)
    first = a.take(5)
    assert sorted(first) == list(range(5))
    a.take(2)
    b = PromptSampler(5, seed=1)
    b.load_state_dict(a.state_dict())
    assert a.take(6) == b.take(6)


def test_beta_needs_reference(tmp_path):
    with pytest.raises(ValueError, match=r"grpo.beta=0.1 needs a reference model"):
        _trainer(tmp_path, grpo={"beta": 0.1})


class _SignalAtCall(TokenSetScorer):
    """Scores like TokenSetScorer; sends this process SIGTERM during its n-th call and writes samples."""

    def __init__(self, n: int) -> None:
        super().__init__(SCORER_TARGET)
        self.n, self.calls, self.samples = n, 0, []

    def score(self, rollouts: Rollouts) -> Scores:
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(rollouts)

    def write_samples(self, rollouts: Rollouts, scores: Scores, directory: Path, limit: int) -> None:
        self.samples.append(directory.name)
        (directory / "samples.json").write_text(json.dumps(scores.rewards[:limit].tolist()))


def test_sigterm_finishes_the_step_and_checkpoints(tmp_path):
    scorer = _SignalAtCall(n=3)
    tr = _trainer(tmp_path, scorer=scorer, run={"max_steps": 6, "sample_every": 2, "num_samples": 3})
    previous = signal.getsignal(signal.SIGTERM)
    result = tr.train()
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert result.interrupted and result.step == 3 and scorer.calls == 3
    assert result.checkpoint == tmp_path / "checkpoint-3" and (result.checkpoint / "model.safetensors").is_file()
    assert scorer.samples == ["step-000001", "step-000002"]  # step 1: the starting policy
    assert len(json.loads((tmp_path / "samples" / "step-000002" / "samples.json").read_text())) == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_train_cli_refuses_unreachable_models_naming_the_key(monkeypatch, capsys):
    import huggingface_hub.constants

    import train

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rc = train.main(["--config", "small.toml", "--set", "model.path=nobody/not-a-model"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "small.toml: cannot start" in err and "model.path='nobody/not-a-model'" in err and "data.path=" in err
    rc = train.main(["--config", "small.toml", "--set", "grpo.group_size=1"])
    assert rc == 2 and "grpo.group_size=1: GRPO needs at least 2" in capsys.readouterr().err


@pytest.mark.slow
def test_train_cli_tiny_run_and_resume(tmp_path, capsys):
    """tiny.toml end to end (tiny Llasa, tiny codec, real Whisper base), 1 step, then --resume auto for a 2nd."""
    import train

    args = ["--config", "tiny.toml", "--set", f"run.output_dir={tmp_path}", "--set", "generation.max_new_tokens=20",
            "--set", "grpo.batch_size=4", "--set", "run.max_steps=2", "--set", "run.save_every=1"]  # fmt: skip
    assert train.main([*args, "--set", "run.max_steps=1"]) == 0  # a later --set wins: stop after step 1
    assert train.main(args) == 2 and "holds a previous run" in capsys.readouterr().err
    assert train.main([*args, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "finished at step 2 (1 steps this session" in out and "reward/total" in out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("asr/wer" in r for r in rows)
    assert (tmp_path / "config.resolved.toml").is_file() and (tmp_path / "checkpoint-2" / "model.safetensors").is_file()


class _SigtermAt(TokenSetScorer):
    """Sends this process SIGTERM while scoring call ``n`` (the run then stops as a user's would)."""

    def __init__(self, n: int | None) -> None:
        super().__init__(SCORER_TARGET)
        self.n, self.calls = n, 0

    def score(self, rollouts):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(rollouts)


class _RecordingGenerator(ScriptedGenerator):
    """Scripted data (independent of the weights) that records which prompts it was asked for, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[tuple[int, ...]]] = []

    def generate(self, prompt_ids, group_size):
        self.asked.append([tuple(p) for p in prompt_ids])
        return super().generate(prompt_ids, group_size)


def test_overlap_prefetches_the_next_step_and_resumes_without_skipping_data(tmp_path):
    """With overlap the next step is generated while this one trains; with data that do not depend on the
    weights the updates equal the sequential run's, and a checkpoint taken with a prefetch in flight resumes
    at the prefetched prompts (they are generated again) rather than after them."""
    overlap = {"backend": "vllm_server", "overlap": True}

    def run(out, generation, resume=None, stop_at_score=None):
        gen = _RecordingGenerator()
        trainer = _trainer(
            out,
            model=tiny_llama(seed=3),
            generator=gen,
            scorer=_SigtermAt(stop_at_score),
            generation=generation,
            run={"max_steps": 4, "save_every": 0, "seed": 5},
        )
        result = trainer.train(resume=resume)
        return trainer, gen, result

    sequential, seq_gen, _ = run(tmp_path / "seq", {})
    overlapped, ovl_gen, _ = run(tmp_path / "ovl", overlap)
    assert ovl_gen.asked == seq_gen.asked  # same prompts, same order, nothing fetched past the last step
    for p, q in zip(sequential.policy.parameters(), overlapped.policy.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)

    # SIGTERM while step 2 is scored: step 3's prompts are already being generated when checkpoint-2 is written.
    _, first_gen, first = run(tmp_path / "res", overlap, stop_at_score=2)
    assert first.interrupted and first.step == 2 and len(first_gen.asked) == 3
    _, resumed_gen, _ = run(tmp_path / "res", overlap, resume=first.checkpoint)
    assert first_gen.asked[:2] + resumed_gen.asked == seq_gen.asked  # step 3's prompts generated again


def test_an_interrupted_overlap_run_releases_its_threads_and_can_train_again(tmp_path):
    """SIGTERM with a prefetch in flight: train() shuts its thread pool down (no idle threads left behind) and a
    second train() call on the same trainer continues with fresh threads, from the prefetched prompts."""
    generator = _RecordingGenerator()
    trainer = _trainer(
        tmp_path,
        generator=generator,
        scorer=_SigtermAt(1),
        generation={"backend": "vllm_server", "overlap": True},
        run={"max_steps": 3, "save_every": 0},
    )
    before = set(threading.enumerate())
    first = trainer.train()
    assert first.interrupted and first.step == 1
    for thread in set(threading.enumerate()) - before:  # the prefetch and scoring workers end with their work
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert trainer.train().step == 3
    # Step 2's prompts (maybe prefetched before the interrupt, maybe cancelled) are generated for step 2.
    assert generator.asked[-2] == generator.asked[1] != generator.asked[-1]


def test_scoring_time_does_not_wait_for_the_training_kernels(tmp_path, monkeypatch):
    """With overlap the scorer runs in another thread while this one trains: its timer must not synchronise
    the device (it would wait for, and be charged with, the training kernels)."""
    from grpo.trainer import _Timer

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    trainer = _trainer(tmp_path)
    timer = _Timer(torch.device("cuda"))
    trainer._score(ScriptedGenerator().generate([p.ids for p in prompts(2)], 4), timer)
    assert synced == [] and timer.times["score"] > 0
    with timer("update"):  # device phases still synchronise
        pass
    assert len(synced) == 1
