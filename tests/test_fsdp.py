"""run.parallel = "fsdp": two CPU processes (gloo) with sharded decoder layers must train, checkpoint and resume
exactly like one process on the union of their data."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from grpo import distributed as dist
from grpo.config import RunConfig
from grpo.engine import named_weights
from grpo.generation import HFGenerator
from grpo.trainer import GRPOTrainer
from tests.grpo_fixtures import (
    PAD,
    STOP,
    VOCAB,
    ScriptedGenerator,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)
from tomlconfig import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = {
    # μ = 2 and β > 0 exercise old and (sharded) reference log-probs; micro-batches of 3 accumulate gradients;
    # max_grad_norm = 0.1 makes the clipping act, so the global norm over sharded and replicated grads matters.
    "grpo": {"group_size": 4, "micro_batch_size": 3, "advantage_scale": "batch", "num_iterations": 2, "beta": 0.05},
    "optim": {"lr": 1e-2, "weight_decay": 0.1, "max_grad_norm": 0.1},
}


def _trainer(run_dir, batch_size: int, parallel: str, dist_info=None) -> GRPOTrainer:
    sections = {**SECTIONS, "grpo": {**SECTIONS["grpo"], "batch_size": batch_size}}
    cfg = training_config(run_dir, **sections, run={"max_steps": 4, "seed": 3, "parallel": parallel})
    # Rank 1 starts from different weights: the trainer must broadcast rank 0's before sharding.
    model = tiny_llama(seed=0 if dist_info is None else dist_info.rank)
    gen, scorer = ScriptedGenerator(), TokenSetScorer(range(2, 12))
    return GRPOTrainer(model, gen, scorer, prompts(7), cfg, ref_model=tiny_llama(0), dist_info=dist_info)


def _steps(tr: GRPOTrainer, n: int) -> dict[str, torch.Tensor]:
    for _ in range(n):
        tr.metrics = tr.train_step()
        tr.step += 1
    return {k: v.clone() for k, v in named_weights(tr.policy)}  # gathered: collective


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    try:
        tr = _trainer(out_dir, 8, "fsdp", info)
        q = tr.policy.model.layers[0].self_attn.q_proj.weight
        assert isinstance(q, DTensor) and q.to_local().shape[0] == q.shape[0] // world  # really sharded
        after2 = _steps(tr, 2)
        for model in (tr.policy, tr.ref_model):  # resharded after forward (the ref model never runs backward)
            assert all(isinstance(p, DTensor) for p in model.model.layers[1].parameters())
        metrics2 = tr.metrics
        checkpoint = tr.save()
        after4 = _steps(tr, 2)
        resumed = _trainer(out_dir, 8, "fsdp", info)
        resumed.load(checkpoint)
        after4_resumed = _steps(resumed, 2)
        # Sampling through the sharded layers. Rank 1 stops at once (every id is a stop), rank 0 runs on: the
        # finished rank must keep stepping with the other (synced_gpus), or the layers' all-gathers hang.
        stop_ids = [STOP] if rank == 0 else list(range(VOCAB))
        hf = HFGenerator(tr.policy, tr.cfg.generation, pad_id=PAD, stop_ids=stop_ids)
        rollouts = hf.generate([p.ids for p in prompts(2, seed=rank)], 2)
        result = {"after2": after2, "after4": after4, "after4_resumed": after4_resumed, "metrics2": metrics2}
        torch.save({**result, "generated": rollouts.completion_mask}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_fsdp_two_processes_match_one_process_checkpoint_and_resume(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _trainer(tmp_path / "single", 16, "replicate")  # both ranks' groups in one process
    after2_single = _steps(single, 2)

    fsdp = ranks[0]["after2"]
    assert fsdp.keys() == after2_single.keys()
    for name, p in after2_single.items():
        assert torch.equal(fsdp[name], ranks[1]["after2"][name]), name  # both ranks gather the same model
        # Summation order differs (ranks, reduce-scatter, micro-batches): float32 noise that Adam's m/√v can scale
        # up to ~1e-5 of a parameter moving by ~lr (1e-2) per update.
        torch.testing.assert_close(fsdp[name], p, atol=2e-5, rtol=1e-5, msg=name)
    moved = after2_single["model.layers.1.mlp.down_proj.weight"] - tiny_llama(0).model.layers[1].mlp.down_proj.weight
    assert moved.abs().max() > 1e-2  # the sharded layers moved, by far more than the tolerance
    # (Not loss/kl_mean: a per-rank token mean averaged over ranks, in replicate mode as well.)
    for key in ("grad_norm", "loss", "loss/last_loss", "reward/std"):
        torch.testing.assert_close(ranks[0]["metrics2"][key], single.metrics[key], atol=1e-5, rtol=1e-4, msg=key)
    assert single.metrics["grad_norm"] > 0.1  # the clipping acted (max_grad_norm = 0.1)

    # The checkpoint is a plain transformers folder holding the gathered weights.
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2")
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, fsdp[name]), name

    # Resuming from step 2 (whole optimizer state re-sharded) continues as the straight run did.
    for name, p in ranks[0]["after4"].items():
        torch.testing.assert_close(ranks[0]["after4_resumed"][name], p, atol=1e-6, rtol=1e-6, msg=name)
    assert not torch.equal(ranks[0]["after4"]["model.norm.weight"], fsdp["model.norm.weight"])
    assert ranks[0]["generated"].sum(1).max() > 1 and ranks[1]["generated"].sum(1).max() == 1


def test_parallel_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"parallel: expected one of 'replicate', 'fsdp'"):
        from_dict(RunConfig, {"parallel": "ddp"})  # a Literal field: checked by the loader
    one = _trainer(tmp_path, 8, "fsdp")  # a single process: nothing to shard over, the model stays whole
    assert not any(isinstance(p, DTensor) for p in one.policy.parameters())
    with pytest.raises(ValueError, match=r"run.parallel='fsdp' needs torch.distributed"):
        dist.shard_model(one.policy)  # called directly without a process group
