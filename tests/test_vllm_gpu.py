"""GPU-only checks of the colocated vLLM backend; skipped where CUDA or vLLM is missing (the CPU suite).

Run on a CUDA machine with vLLM installed: `pytest -q tests/test_vllm_gpu.py` (and `python bench/generate.py`).
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs CUDA and vLLM"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny Llasa tokenizer with a Llama of head_dim 64 (vLLM's attention kernels want common head sizes)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tts.tiny import tiny_assets

    src, out = tiny_assets()[0], tmp_path_factory.mktemp("vllm-model")
    for f in src.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            shutil.copy(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _trainer_logps(model, rollouts, temperature):
    from grpo.logprobs import token_logprobs

    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1).cuda()
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], dim=1).cuda()
    with torch.no_grad():
        logps = token_logprobs(model, ids, mask, rollouts.completion_ids.shape[1], temperature=temperature)
    return logps.cpu() * rollouts.completion_mask


def test_colocated_logprobs_match_the_trainer_and_weight_sync_takes_effect(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.engine import Sampling, VLLMEngine, VLLMSettings
    from grpo.engine_generation import EngineGenerator
    from tts.llasa import PromptFormat, SpeechVocab, build_prompt_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = SpeechVocab.from_tokenizer(tok)
    temperature = 0.9
    engine = VLLMEngine(VLLMSettings(model=str(model_dir), gpu_memory_utilization=0.2, dtype="float32"))
    sampling = Sampling(max_new_tokens=48, temperature=temperature, stop_ids=(vocab.stop_id,))
    gen = EngineGenerator(engine, sampling, pad_id=vocab.stop_id)
    prompt = build_prompt_ids(tok, PromptFormat(), "Der Zug fährt um acht Uhr ab.")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()

    r = gen.generate([prompt], 4)
    assert r.sampler_logps is not None and r.completion_mask.sum() > 0
    diff = (_trainer_logps(model, r, temperature) - r.sampler_logps * r.completion_mask).abs().max().item()
    assert diff < 2e-2, f"vLLM and trainer log-probs differ by {diff}"

    with torch.no_grad():  # a different policy: only a real weight sync makes vLLM sample from it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen.sync_weights(model)
    r2 = gen.generate([prompt], 4)
    diff2 = (_trainer_logps(model, r2, temperature) - r2.sampler_logps * r2.completion_mask).abs().max().item()
    assert diff2 < 2e-2, f"after sync_weights, vLLM and trainer log-probs differ by {diff2}"
