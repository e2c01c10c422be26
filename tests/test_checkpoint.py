from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from grpo.checkpoint import (
    checkpoint_dirs,
    find_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from grpo.generation import HFGenerator
from grpo.trainer import GRPOTrainer
from tests.grpo_fixtures import (
    PAD,
    STOP,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _StopAfter(TokenSetScorer):
    """TokenSetScorer that sends this process SIGTERM while scoring step ``n``: the run stops as a user's would."""

    def __init__(self, n: int | None) -> None:
        super().__init__(range(2, 12))
        self.n, self.calls = n, 0

    def score(self, rollouts):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(rollouts)


def _trainer(run_dir, initial, max_steps=4, save_every=3, stop_after=None, keep_last=2):
    """Real sampling (HFGenerator), μ = 2, KL to a reference, warm-up: every piece of state matters."""
    cfg = training_config(
        run_dir,
        grpo={"num_iterations": 2, "beta": 0.05},
        optim={"warmup_ratio": 0.5, "weight_decay": 0.1},
        run={"max_steps": max_steps, "save_every": save_every, "keep_last": keep_last, "seed": 7},
    )
    model = copy.deepcopy(initial)
    gen = HFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP])
    return GRPOTrainer(model, gen, _StopAfter(stop_after), prompts(5), cfg, ref_model=copy.deepcopy(initial))


def test_two_steps_resume_two_steps_equals_four_steps(tmp_path):
    initial = tiny_llama(seed=11)
    straight = _trainer(tmp_path / "a", initial)
    straight.train()

    first = _trainer(tmp_path / "b", initial, stop_after=2)  # same config; SIGTERM during step 2
    assert first.train().interrupted
    torch.manual_seed(12345)  # disturb every generator: resuming must restore them
    random.seed(1)
    np.random.seed(1)
    resumed = _trainer(tmp_path / "b", initial)
    result = resumed.train(resume=find_checkpoint("auto", tmp_path / "b"))
    assert result.start_step == 2 and result.step == 4

    for (name, p), q in zip(straight.policy.named_parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(straight.policy.model.norm.weight, initial.model.norm.weight)  # it did train
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_checkpoint_is_a_transformers_model_folder_and_old_ones_are_pruned(tmp_path):
    tr = _trainer(tmp_path, tiny_llama(seed=3), max_steps=3, save_every=1)
    tr.train()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-3"]  # keep_last = 2
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "checkpoint-3")
    for (name, p), q in zip(tr.policy.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q), name
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["data"] == {"epoch": 1, "position": 1}  # 3 steps × 2 prompts of 5
    assert find_checkpoint(str(tmp_path), "unused") == tmp_path / "checkpoint-3"  # a run folder → newest
    assert find_checkpoint(str(tmp_path / "checkpoint-2"), "unused") == tmp_path / "checkpoint-2"
    assert find_checkpoint("auto", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no checkpoint-<step> folder"):
        find_checkpoint(str(tmp_path / "empty"), "unused")


def test_resuming_an_older_checkpoint_drops_the_abandoned_later_ones(tmp_path, capsys):
    """Resumed at step 1 of a run that reached 3: checkpoints 2 and 3 are the abandoned continuation. Left,
    `--resume auto` would pick it, and pruning (keep_last) would delete the new steps before it."""
    initial = tiny_llama(seed=2)
    _trainer(tmp_path, initial, max_steps=3, save_every=1, keep_last=3).train()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    capsys.readouterr()

    resumed = _trainer(tmp_path, initial, max_steps=3, save_every=1, stop_after=1, keep_last=3)
    result = resumed.train(resume=tmp_path / "checkpoint-1")  # SIGTERM during its first step (step 2)
    assert result.interrupted and result.step == 2
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    assert find_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-2"
    assert "resumed at step 1: removed later checkpoints checkpoint-2, checkpoint-3" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    # Resuming a run that is already finished trains nothing and reports the checkpoint it resumed from.
    done = _trainer(tmp_path, initial, max_steps=2).train(resume=tmp_path / "checkpoint-2")
    assert (done.step, done.start_step, done.checkpoint) == (2, 2, tmp_path / "checkpoint-2")


def test_saving_a_step_again_never_leaves_it_broken(tmp_path, monkeypatch):
    """The old copy of a step saved again is renamed away before the new one takes its name, so a crash while
    it is deleted leaves the new copy whole (deleting first would leave a weightless checkpoint-1 that still
    looks complete)."""
    model = tiny_llama(seed=1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    save = lambda: save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, state={})  # noqa: E731
    save()
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    real_rmtree = shutil.rmtree

    def killed_while_deleting(path, *args, **kwargs):
        weights = Path(path) / "model.safetensors"
        if weights.is_file():
            weights.unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr("grpo.checkpoint.shutil.rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        save()
    monkeypatch.undo()
    assert checkpoint_dirs(tmp_path) == [tmp_path / "checkpoint-1"]
    loaded = tiny_llama(seed=5)
    load_model_weights(loaded, tmp_path / "checkpoint-1")
    assert torch.equal(loaded.model.norm.weight, model.model.norm.weight)  # the new weights
    save()  # the next save clears what the crash left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_rng_state_round_trip(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
