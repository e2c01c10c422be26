"""Proof that the loop learns: GRPO must move a reward that a random policy does not already max out."""

from __future__ import annotations

import pytest
import torch

from grpo.generation import HFGenerator
from grpo.rollouts import Rollouts, Scores
from grpo.trainer import GRPOTrainer, Prompt
from tests.grpo_fixtures import (
    PAD,
    STOP,
    VOCAB,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = range(2, 10)  # 8 of the 30 non-special ids: a random policy scores about 0.27


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_llama_learns_a_token_set_reward(tmp_path, seed):
    cfg = training_config(
        tmp_path,
        generation={"max_new_tokens": 8},
        grpo={"group_size": 8, "batch_size": 32, "micro_batch_size": 16},
        optim={"lr": 1e-2},
        run={"max_steps": 20, "seed": seed},
    )
    model = tiny_llama(seed=seed)
    gen = HFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP])
    tr = GRPOTrainer(model, gen, TokenSetScorer(TARGET), prompts(16, seed=seed), cfg)
    rewards = [tr.train_step()["reward/mean"] for _ in range(cfg.run.max_steps)]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"seed {seed}: reward {start:.2f} → {end:.2f}")
    assert start < 0.45  # not solved at the start: about len(TARGET) / (VOCAB - 2)
    assert end > 0.8 and end - start > 0.4
    # The policy itself moved: the target tokens' total probability after a prompt rose well above chance.
    with torch.no_grad():
        probs = model(torch.tensor([list(prompts(1, seed=99)[0].ids)])).logits[0, -1].softmax(-1)
    assert probs[list(TARGET)].sum() > 2 * len(TARGET) / VOCAB


class _SpeechCodeSetScorer:
    """reward = share of a completion's speech codes that lie in ``target`` [65536] bool (non-speech: miss)."""

    def __init__(self, first_id: int, target: torch.Tensor) -> None:
        self.first_id, self.target = first_id, target

    def score(self, rollouts: Rollouts) -> Scores:
        codes = rollouts.completion_ids - self.first_id
        speech = (codes >= 0) & (codes < self.target.numel()) & rollouts.completion_mask.bool()
        hit = speech & self.target[codes.clamp(0, self.target.numel() - 1)]
        rewards = hit.sum(1).float() / rollouts.completion_mask.sum(1).clamp(min=1).float()
        return Scores(rewards=rewards)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_llasa_learns_a_synthetic_speech_code_reward(tmp_path, seed):
    """The tiny Llasa-layout model (65,536 speech tokens, real chat-template prompts) under the same loop.

    The rewarded codes are the quarter whose (tied) output embeddings point most along one fixed random
    direction: a set the policy can reach by moving its hidden state, as real speech preferences are. A
    random subset of 16,384 of 65,536 ids would need each id learnt on its own, far beyond a few steps.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tts.llasa import PromptFormat, SpeechVocab, build_prompt_ids
    from tts.tiny import tiny_assets

    model_dir, _ = tiny_assets()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    emb = model.get_output_embeddings().weight.detach()[vocab.first_id : vocab.first_id + vocab.num_codes]
    projection = emb @ torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
    target = projection > projection.quantile(0.75)
    texts = ["The quick brown fox.", "Guten Morgen!", "Please call Stella.", "Ich möchte Kaffee."]
    prompts_ = [Prompt(tuple(build_prompt_ids(tokenizer, PromptFormat(), t)), {"text": t}) for t in texts]
    cfg = training_config(
        tmp_path,
        generation={"max_new_tokens": 8},
        grpo={"group_size": 8, "batch_size": 16, "micro_batch_size": 16},
        optim={"lr": 5e-2},
        run={"max_steps": 18, "seed": seed},
    )
    pad = vocab.pad_id if vocab.pad_id is not None else vocab.stop_id
    gen = HFGenerator(model, cfg.generation, pad_id=pad, stop_ids=[vocab.stop_id])
    tr = GRPOTrainer(model, gen, _SpeechCodeSetScorer(vocab.first_id, target), prompts_, cfg)
    rewards = [tr.train_step()["reward/mean"] for _ in range(cfg.run.max_steps)]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"tiny Llasa seed {seed}: reward {start:.2f} → {end:.2f}")
    assert start < 0.4  # chance is 0.25
    assert end > 0.7
