"""The fast decode loop (grpo/decode.py): same distribution as ``model.generate``, per-row stops, left padding."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import Tensor
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from grpo.config import GenerationConfig, RunConfig, TrainingConfig
from grpo.decode import FastHFGenerator, decode, process_logits, sample
from grpo.generation import HFGenerator, left_pad
from grpo.logprobs import token_logprobs
from grpo.trainer import GRPOTrainer
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
from tomlconfig import FieldError

pytestmark = pytest.mark.usefixtures("one_thread")


def _greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Reference: unpadded, cache-free argmax decoding."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt == STOP:
                break
    return out


def _stop_likely(seed: int):
    model = tiny_llama(seed=seed)
    with torch.no_grad():  # so that some completions stop and some run out of budget
        model.lm_head.weight[STOP] += 0.5 * model.model.norm(model.model.embed_tokens.weight).mean(0)
    return model


def test_left_padded_greedy_matches_unpadded_decoding():
    """top_k=1 makes sampling greedy: padding, positions and the static cache must not change any token."""
    model = _stop_likely(seed=3)
    gen = FastHFGenerator(model, GenerationConfig(max_new_tokens=12, top_k=1), pad_id=PAD, stop_ids=[STOP])
    rows = [[5, 9, 11, 3, 7], [4], [20, 21, 22], [30, 2]]
    r = gen.generate(rows, group_size=2)
    assert r.prompt_ids[2].tolist() == [PAD] * 4 + [4]
    expected = [_greedy(model, rows[i // 2], 12) for i in range(len(r))]
    assert r.completion_lists() == expected
    assert 0 < int(r.finished.sum()) < len(r)  # both kinds of row in one batch
    assert r.finished.tolist() == [e[-1] == STOP for e in expected]


def test_same_seed_same_tokens_as_generate_with_its_sampling_method():
    """``sampling='multinomial'`` is generate's own draw: with the same seed, the same tokens, masks and stops."""
    model = _stop_likely(seed=1)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.3)
    rows = [[3, 4], [5], [6, 7, 8]]
    torch.manual_seed(7)
    a = HFGenerator(model, cfg, pad_id=PAD, stop_ids=[STOP]).generate(rows, group_size=3)
    torch.manual_seed(7)
    b = FastHFGenerator(model, cfg, pad_id=PAD, stop_ids=[STOP], sampling="multinomial").generate(rows, group_size=3)
    assert 0 < int(a.finished.sum()) < len(a)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert b.sampler_logps is None  # temperature only: the trainer's log-probs are the sampler's


def test_each_distinct_prompt_is_prefilled_once():
    """A group's rows share their prompt: the prefill runs on the distinct prompts (here 2 of 6 rows, one of them
    asked for twice), then every step on all rows; the tokens are those of generate (the test above)."""
    model = tiny_llama(seed=4)
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    gen = FastHFGenerator(model, GenerationConfig(max_new_tokens=3), pad_id=PAD, stop_ids=[STOP])
    r = gen.generate([[3, 4], [5], [3, 4]], 2)
    assert shapes[0] == (2, 2) and set(shapes[1:]) <= {(6, 1)} and r.completion_ids.shape[0] == 6


def test_stops_per_row_and_pads_after_the_stop():
    model = _stop_likely(seed=2)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.3, batch_size=6)  # 6 → two calls of 2 groups
    torch.manual_seed(0)
    model.train()
    r = FastHFGenerator(model, cfg, pad_id=PAD, stop_ids=[STOP, 9]).generate([[3, 4], [5], [6, 7, 8], [9]], 3)
    assert model.training  # decoded in eval mode, mode restored
    lengths = r.completion_mask.sum(1)
    assert 0 < int(r.finished.sum()) < len(r)
    for row, n, fin in zip(r.completion_ids, lengths, r.finished, strict=True):
        stops = torch.isin(row[:n], torch.tensor([STOP, 9])).nonzero().flatten().tolist()
        assert stops == ([int(n) - 1] if fin else [])  # the mask ends at the first stop, and only there
        assert (row[n:] == PAD).all()
        assert fin or n == 10


def test_all_rows_stopped_ends_the_loop_early():
    """Greedy rows that stop at different steps: the loop runs until the last stop, not to the budget."""
    model = tiny_llama(seed=3)
    rows = [[5, 9, 11, 3, 7], [20, 21, 22]]
    free = [_greedy(model, r, 12) for r in rows]  # no STOP in 12 greedy steps of these rows (checked below)
    stops = [free[0][1], free[1][3]]
    first = [next(t for t, tok in enumerate(f) if tok in stops) for f in free]
    assert STOP not in free[0] + free[1] and max(first) < 11
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    ids, mask = left_pad(rows, PAD)
    d = decode(model, ids, mask, GenerationConfig(max_new_tokens=50, top_k=1), stop_ids=stops, pad_id=PAD)
    assert d.tokens.shape == (2, max(first) + 1) and d.finished.all()
    assert len(calls) == max(first) + 1  # the prefill and one forward per further token
    assert d.mask.sum(1).tolist() == [f + 1 for f in first]


def _hf_processed_logprobs(logits: torch.Tensor, cfg: GenerationConfig, seen_ids: torch.Tensor) -> torch.Tensor:
    """transformers' own processors, in generate's order: the reference distribution."""
    procs = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    procs.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        procs.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        procs.append(TopPLogitsWarper(cfg.top_p))
    return procs(seen_ids, logits.clone()).log_softmax(-1)


@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=1, temperature=0.7),
        GenerationConfig(max_new_tokens=1, temperature=1.3, top_k=6),
        GenerationConfig(max_new_tokens=1, temperature=1.0, top_p=0.8, repetition_penalty=1.5),
    ],
    ids=["temperature", "top_k", "top_p+repetition"],
)
def test_first_token_frequencies_match_the_processed_softmax(cfg):
    """4,000 first tokens from one prompt: each token's frequency within 4.5 standard errors of transformers'
    processed probability, masked tokens never drawn, and the returned log-probs equal that distribution's."""
    model = tiny_llama(seed=4)
    prompt = [5, 9, 11, 5, 7]
    n = 4000
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1].float()  # [1, V]
    expected = _hf_processed_logprobs(logits, cfg, torch.tensor([prompt]))[0]  # [V]
    ids, mask = left_pad([prompt] * n, PAD)
    torch.manual_seed(0)
    d = decode(model, ids, mask, cfg, stop_ids=[STOP], pad_id=PAD)
    counts = torch.bincount(d.tokens[:, 0], minlength=VOCAB).double()
    p = expected.exp().double()
    se = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() <= 4.5 * se + 1e-12).all(), (counts / n - p).abs().max()
    assert (counts[p == 0] == 0).all()
    if cfg.top_k or cfg.top_p < 1:
        assert (p == 0).sum() > 0  # the case really masks tokens
    torch.testing.assert_close(d.logps[:, 0], expected[d.tokens[:, 0]], atol=1e-5, rtol=0)


def test_inverse_cdf_sampler_matches_softmax_on_a_peaked_distribution():
    """A draw per row from very uneven logits (mass spread over 10⁻⁶ .. 0.5): frequencies match softmax."""
    torch.manual_seed(1)
    v, n = 50, 200_000
    z = torch.randn(1, v) * 4
    tokens, logps = sample(z.expand(n, v).contiguous())
    p = z.softmax(-1)[0].double()
    freq = torch.bincount(tokens, minlength=v).double() / n
    assert ((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt() + 1e-12).all()
    torch.testing.assert_close(logps, z.log_softmax(-1)[0][tokens], atol=1e-5, rtol=0)


def test_process_logits_equals_transformers_processors():
    torch.manual_seed(2)
    logits = torch.randn(3, VOCAB) * 3
    seen_ids = torch.randint(0, VOCAB, (3, 7))
    seen = torch.zeros(3, VOCAB, dtype=torch.bool).scatter_(1, seen_ids, True)
    cfg = GenerationConfig(temperature=0.8, top_k=10, top_p=0.7, repetition_penalty=1.3)
    ours = process_logits(logits.clone(), cfg, seen).log_softmax(-1)
    torch.testing.assert_close(ours, _hf_processed_logprobs(logits, cfg, seen_ids))


def test_processed_sampling_returns_the_samplers_logprobs():
    """With top-k / top-p / repetition penalty the trainer's temperature-only log-probs are not the sampler's:
    the generator returns the sampler's, so the trainer reweights (the issue-13 case of the hf backend)."""
    model = tiny_llama(seed=5)
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_k=4)
    torch.manual_seed(0)
    r = FastHFGenerator(model, cfg, pad_id=PAD, stop_ids=[STOP]).generate([[3, 4], [5, 6, 7]], 2)
    assert r.sampler_logps is not None and r.sampler_logps.shape == r.completion_ids.shape
    assert (r.sampler_logps[r.completion_mask == 0] == 0).all()
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    full = token_logprobs(model, ids, mask, r.completion_ids.shape[1], temperature=1.0)
    m = r.completion_mask.bool()
    assert (r.sampler_logps[m] >= full[m] - 1e-5).all()  # truncation only moves mass onto the kept tokens
    assert (r.sampler_logps[m] - full[m]).abs().max() > 1e-3


def test_trainer_with_the_fast_generator_equals_today_when_seeded_the_same(tmp_path):
    """Same seed, generate's sampling method: the same rollouts, hence the same parameters after 2 steps.
    The default (inverse-CDF) sampler draws the same distribution with other random numbers: it trains too."""
    initial = tiny_llama(seed=6)
    runs = {}
    for name in ("generate", "multinomial", "inverse_cdf"):
        model = copy.deepcopy(initial)
        cfg = training_config(tmp_path / name, generation={"max_new_tokens": 8, "temperature": 1.2})
        gen = (
            HFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP])
            if name == "generate"
            else FastHFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP], sampling=name)
        )
        tr = GRPOTrainer(model, gen, TokenSetScorer(range(2, 12)), prompts(6), cfg)
        torch.manual_seed(11)
        metrics = [tr.train_step() for _ in range(2)]
        runs[name] = (tr, metrics)
    (a, ma), (b, mb), (c, mc) = runs["generate"], runs["multinomial"], runs["inverse_cdf"]
    assert torch.equal(a.last_rollouts.completion_ids, b.last_rollouts.completion_ids)
    for (name, p), q in zip(a.policy.named_parameters(), b.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert ma[1]["loss"] == pytest.approx(mb[1]["loss"], abs=1e-6)
    assert "time/old_logps" not in mc[0]  # no extra pass: temperature-only sampling returns no sampler log-probs
    assert not torch.equal(a.last_rollouts.completion_ids, c.last_rollouts.completion_ids)
    assert any((p - q).abs().max() > 0 for p, q in zip(c.policy.parameters(), initial.parameters(), strict=True))


def test_fast_generator_is_the_hf_backend_default():
    assert GenerationConfig().hf_decoder == "loop"
    assert dataclasses.replace(GenerationConfig(), hf_decoder="generate").hf_decoder == "generate"


def test_bfloat16_sampler_weights_follow_the_policy_and_return_their_logprobs():
    """generation.hf_sampler_weights = "bfloat16": a frozen copy whose parameters are cast from the policy for each
    generate (tied weights stay tied, RoPE's buffers stay float32) and hold no memory between generations; its
    log-probs come back for the importance weights."""
    model = tiny_llama(seed=7)
    gen = FastHFGenerator(
        model, GenerationConfig(max_new_tokens=6), pad_id=PAD, stop_ids=[STOP], sampler_dtype=torch.bfloat16
    )
    s = gen.sampler
    assert s is not model and s.lm_head.weight is s.model.embed_tokens.weight
    assert all(p.numel() == 0 and not p.requires_grad for p in s.parameters())
    assert all(p.dtype == torch.float32 and p.numel() > 0 and p.requires_grad for p in model.parameters())
    assert all(b.dtype == torch.float32 for b in s.buffers() if b.is_floating_point())
    with gen.sampler_weights() as sampler:
        assert sampler is s
        for q, p in zip(s.parameters(), model.parameters(), strict=True):
            assert torch.equal(q, p.detach().bfloat16())

    def gap() -> Tensor:
        r = gen.generate([[3, 4], [5, 6, 7]], 2)
        assert r.sampler_logps is not None and r.sampler_logps.shape == r.completion_ids.shape
        ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
        mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
        full = token_logprobs(model, ids, mask, r.completion_ids.shape[1])
        m = r.completion_mask.bool()
        return (r.sampler_logps[m] - full[m]).abs()

    torch.manual_seed(0)
    assert 0 < gap().max() < 0.05  # another precision of the same distribution: close, not equal
    assert all(p.numel() == 0 for p in s.parameters())
    with torch.no_grad():  # a changed policy is what the next generation samples
        model.model.layers[0].mlp.up_proj.weight.mul_(-3.0)
    assert gap().max() < 0.05


def test_trainer_with_a_bfloat16_sampler_reweights_without_an_extra_pass(tmp_path):
    """With μ = 1 the importance weights read π_old from the update's own forward: no old-log-prob pass, and the
    logged mismatch is that of the sampler's log-probs against the policy that sampled (small, not zero)."""
    model = tiny_llama(seed=8)
    cfg = training_config(tmp_path, generation={"max_new_tokens": 8, "hf_sampler_weights": "bfloat16"})
    gen = FastHFGenerator(model, cfg.generation, pad_id=PAD, stop_ids=[STOP], sampler_dtype=torch.bfloat16)
    tr = GRPOTrainer(model, gen, TokenSetScorer(range(2, 12)), prompts(6), cfg)
    torch.manual_seed(3)
    m = tr.train_step()
    assert "time/old_logps" not in m
    assert 0 < m["is/abs_logp_diff_mean"] < 0.02 and m["is/ratio_mean"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("generation", "parallel"),
    [({"hf_decoder": "generate"}, "replicate"), ({"backend": "vllm_colocate"}, "replicate"), ({}, "fsdp")],
)
def test_bfloat16_sampler_weights_need_the_loop(generation, parallel):
    with pytest.raises(FieldError, match="hf_sampler_weights"):
        gen = GenerationConfig(**generation, hf_sampler_weights="bfloat16")
        TrainingConfig(generation=gen, run=RunConfig(parallel=parallel))
