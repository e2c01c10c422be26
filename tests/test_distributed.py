"""Two CPU processes (gloo) must make exactly the update one process makes on the union of their data."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from grpo import distributed as dist
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

STEPS = 2
SECTIONS = {
    # "batch" scaling needs the std of all ranks' rewards; μ = 2 and β > 0 exercise old and reference log-probs.
    "grpo": {"group_size": 4, "micro_batch_size": 3, "advantage_scale": "batch", "num_iterations": 2, "beta": 0.05},
    "optim": {"lr": 1e-2, "weight_decay": 0.1},
}


def _run(run_dir, batch_size: int, dist_info=None) -> GRPOTrainer:
    sections = {**SECTIONS, "grpo": {**SECTIONS["grpo"], "batch_size": batch_size}}
    cfg = training_config(run_dir, **sections, run={"max_steps": STEPS, "seed": 3})
    # Rank 1 starts from different weights: the trainer must broadcast rank 0's.
    model = tiny_llama(seed=0 if dist_info is None else dist_info.rank)
    ref = tiny_llama(seed=0)
    tr = GRPOTrainer(
        model,
        ScriptedGenerator(),
        TokenSetScorer(range(2, 12)),
        prompts(7),
        cfg,
        ref_model=ref,
        dist_info=dist_info,
    )
    for _ in range(STEPS):
        tr.metrics = tr.train_step()
        tr.step += 1
    return tr


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    try:
        tr = _run(out_dir, batch_size=8, dist_info=info)
        torch.save({"params": dict(tr.policy.named_parameters()), "metrics": tr.metrics}, f"{out_dir}/rank{rank}.pt")
        tr.save()
    finally:
        dist.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_same_data(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _run(tmp_path / "single", batch_size=16)  # both ranks' groups in one process

    for name, p in single.policy.named_parameters():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name  # identical replicas
        # Summation order differs (ranks, buckets): float32 noise, which Adam's m/√v can scale up to ~1e-5 of a
        # parameter that moves by ~lr per update (1e-2 here).
        torch.testing.assert_close(ranks[0]["params"][name], p.detach(), atol=2e-5, rtol=1e-5, msg=name)
    moved = (single.policy.model.norm.weight - tiny_llama(seed=0).model.norm.weight).abs().max()
    assert moved > 1e-2  # three orders of magnitude above the tolerance
    keys = ("reward/mean", "reward/std", "reward/zero_spread", "loss", "loss/last_loss", "grad_norm", "loss/kl_mean")
    for key in keys:
        torch.testing.assert_close(ranks[0]["metrics"][key], single.metrics[key], atol=1e-5, rtol=1e-4, msg=key)
        assert ranks[0]["metrics"][key] == ranks[1]["metrics"][key], key
    ckpt = tmp_path / f"checkpoint-{STEPS}"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "rng-rank0.pt").is_file()
    assert (ckpt / "rng-rank1.pt").is_file()
