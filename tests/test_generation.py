from __future__ import annotations

import pytest
import torch

from grpo.config import GenerationConfig
from grpo.generation import HFGenerator, completion_mask, left_pad
from grpo.logprobs import token_logprobs
from grpo.trainer import enable_activation_checkpointing
from tests.grpo_fixtures import (
    PAD,
    STOP,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    tiny_llama,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_left_pad_and_completion_mask_with_pad_equal_to_stop():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # pad id == stop id (Llama-style eos-as-pad): the mask comes from the first stop, not from "!= pad".
    comp = torch.tensor([[4, 1, 1, 1], [4, 5, 6, 7], [1, 1, 1, 1]])
    cmask, finished = completion_mask(comp, stop_ids=[1])
    assert cmask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]
    _, finished2 = completion_mask(torch.tensor([[4, 9, 5]]), stop_ids=[1, 9])  # any of several stop ids
    assert finished2.tolist() == [True]


def _greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Reference: unpadded, cache-free argmax decoding."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt == STOP:
                break
    return out


def test_left_padded_batch_matches_unpadded_decoding():
    """top_k=1 makes sampling greedy: padding, position ids and the KV cache must not change any token."""
    model = tiny_llama(seed=3)
    gen = HFGenerator(model, GenerationConfig(max_new_tokens=12, top_k=1), pad_id=PAD, stop_ids=[STOP])
    prompts = [[5, 9, 11, 3, 7], [4], [20, 21, 22]]
    r = gen.generate(prompts, group_size=2)
    assert len(r) == 6 and r.group_size == 2
    assert r.prompt_ids[1].tolist() == [5, 9, 11, 3, 7] and r.prompt_ids[2].tolist() == [PAD] * 4 + [4]
    for i, got in enumerate(r.completion_lists()):
        assert got == _greedy(model, prompts[i // 2], 12)
        assert bool(r.finished[i]) == (got[-1] == STOP)


def test_sampling_masks_stops_restores_mode_and_chunks_by_group():
    torch.manual_seed(0)
    model = tiny_llama(seed=1)
    with torch.no_grad():  # make the stop token likely so that some completions stop, some run out of budget
        model.lm_head.weight[STOP] += 0.5 * model.model.norm(model.model.embed_tokens.weight).mean(0)
    model.train()
    enable_activation_checkpointing(model)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.3, top_p=0.95, batch_size=6)  # 6 → 2 groups per call
    r = HFGenerator(model, cfg, pad_id=PAD, stop_ids=[STOP]).generate([[3, 4], [5], [6, 7, 8]], group_size=3)
    assert model.training  # generation ran in eval mode and put the mode back
    assert r.completion_ids.shape[1] <= 10
    lengths = r.completion_mask.sum(1)
    assert 0 < int(r.finished.sum()) < len(r)
    for row, n, fin in zip(r.completion_ids, lengths, r.finished, strict=True):
        stops = (row[:n] == STOP).nonzero().flatten().tolist()
        assert stops == ([int(n) - 1] if fin else [])  # masked region ends at its first stop, and only there
        assert (row[n:] == PAD).all()
        if not fin:
            assert n == 10
    # Every sampled token has non-negligible probability under the sampling distribution.
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    model.eval()
    logps = token_logprobs(model, ids, mask, r.completion_ids.shape[1], temperature=1.3)
    assert (logps[r.completion_mask.bool()] > -15).all()
