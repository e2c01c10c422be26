"""grpo.reference_dtype / reference_device: where the frozen KL reference lives and what that costs in accuracy."""

from __future__ import annotations

import copy

import pytest
import torch

from grpo.config import GRPOConfig
from grpo.reference import place_reference, reference_placement
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


def test_placement_follows_the_config():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert reference_placement(GRPOConfig(), cpu) == (cpu, torch.float32)
    assert reference_placement(GRPOConfig(), cuda) == (cuda, torch.float32)
    assert reference_placement(GRPOConfig(reference_dtype="bfloat16"), cpu) == (cpu, torch.bfloat16)
    assert reference_placement(GRPOConfig(reference_device="cpu"), cuda) == (cpu, torch.float32)


def test_bf16_reference_halves_its_memory_and_barely_moves_the_kl(tmp_path):
    """Same step, fp32 vs bf16 reference: the KL term's reference log-probs agree to bf16 rounding."""
    initial = tiny_llama(seed=8)
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = training_config(tmp_path / dtype, grpo={"beta": 0.1, "num_iterations": 2, "reference_dtype": dtype})
        ref = place_reference(copy.deepcopy(initial), cfg.grpo, torch.device("cpu"))
        assert all(p.dtype == getattr(torch, dtype) and not p.requires_grad for p in ref.parameters())
        model = copy.deepcopy(initial)
        tr = GRPOTrainer(model, ScriptedGenerator(), TokenSetScorer(range(2, 12)), prompts(6), cfg, ref_model=ref)
        torch.manual_seed(0)
        out[dtype] = (tr.train_step(), sum(p.numel() * p.element_size() for p in ref.parameters()))
    (m32, bytes32), (m16, bytes16) = out["float32"], out["bfloat16"]
    assert bytes16 * 2 == bytes32
    assert m32["loss/last_kl_mean"] > 1e-6  # the second update moved away from the reference
    assert m16["loss/last_kl_mean"] == pytest.approx(m32["loss/last_kl_mean"], rel=0.2, abs=1e-4)
    assert m16["loss/last_kl_mean"] != m32["loss/last_kl_mean"]  # it really ran in bf16
