"""Small real parts for testing the GRPO loop without speech: a tiny Llama, synthetic scorers and generators."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo.config import GenerationConfig, GRPOConfig, OptimConfig, RunConfig, TrainingConfig
from grpo.generation import completion_mask, left_pad
from grpo.rollouts import Rollouts, Scores
from grpo.trainer import Prompt

PAD, STOP, VOCAB = 0, 1, 32


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models are overhead-bound: one intra-op thread is faster, and far steadier on a shared 2-core
    machine (measured: 20 steps of the learning test 0.5 s with 1 thread, 9-18 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(seed: int = 0, vocab: int = VOCAB, tied: bool = True) -> LlamaForCausalLM:
    """A 2-layer Llama (≈ 30 k parameters) with real transformers code paths (generate, checkpointing, saving)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        pad_token_id=PAD,
        bos_token_id=2,
        eos_token_id=STOP,
    )
    return LlamaForCausalLM(cfg).eval()


def prompts(n: int, length: int = 4, seed: int = 0) -> list[Prompt]:
    """n prompts of varying length (so left padding is exercised) over ids 2..VOCAB-1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = length - (i % 2)
        ids = torch.randint(2, VOCAB, (k,), generator=g).tolist()
        out.append(Prompt(ids=tuple(ids), meta={"index": i}))
    return out


class TokenSetScorer:
    """reward = share of a completion's tokens (stop excluded) that lie in ``target``: a random policy gets about
    |target| / |vocab|; the optimum, 1, needs the policy to move."""

    def __init__(self, target: Sequence[int]) -> None:
        self.target = torch.tensor(sorted(target))

    def score(self, rollouts: Rollouts) -> Scores:
        ids, mask = rollouts.completion_ids, rollouts.completion_mask.bool() & (rollouts.completion_ids != STOP)
        hit = torch.isin(ids, self.target) & mask
        rewards = hit.sum(1).float() / mask.sum(1).clamp(min=1).float()
        return Scores(rewards=rewards, metrics={"reward/in_set": rewards.mean().item()})


class ScriptedGenerator:
    """Deterministic completions: a fixed function of the prompt and the sample index, so that any process
    split produces the same data. Lengths vary and some stop early."""

    def __init__(self, length: int = 6) -> None:
        self.length = length

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        rows = [list(p) for p in prompt_ids for _ in range(group_size)]
        comps = []
        for i, p in enumerate(rows):
            j = i % group_size
            seq = [(sum(p) * 7 + j * 13 + t * (j + 3)) % (VOCAB - 2) + 2 for t in range(self.length)]
            stop_at = (sum(p) + j) % (self.length + 2)  # ≥ length: no stop token (unfinished)
            if stop_at < self.length:
                seq = [*seq[:stop_at], STOP] + [PAD] * (self.length - stop_at - 1)
            comps.append(seq)
        comp = torch.tensor(comps)
        cmask, finished = completion_mask(comp, [STOP])
        ids, mask = left_pad(rows, PAD)
        return Rollouts(ids, mask, comp.masked_fill(cmask == 0, PAD), cmask, group_size, finished)

    def sync_weights(self, model: torch.nn.Module) -> None:
        pass


def training_config(tmp_path, **sections) -> TrainingConfig:
    """A small TrainingConfig; ``sections`` maps section name → dict of overrides."""
    base = TrainingConfig(
        generation=GenerationConfig(max_new_tokens=8, temperature=1.0),
        grpo=GRPOConfig(group_size=4, batch_size=8, micro_batch_size=3),
        optim=OptimConfig(lr=1e-2, max_grad_norm=1.0),
        run=RunConfig(output_dir=str(tmp_path), max_steps=4, save_every=0, sample_every=0),
    )
    return dataclasses.replace(base, **{k: dataclasses.replace(getattr(base, k), **v) for k, v in sections.items()})
