import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from grpo.logprobs import selective_entropy, selective_logprobs, token_logprobs


def naive_logprobs(hidden, weight, targets, bias=None, temperature=1.0):
    """The reference: full float32 logits, log_softmax, gather."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def leaf(shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(shape) * scale).to(dtype).requires_grad_()


def grads_of(fn, inputs, upstream):
    """Value of fn(*inputs) and d(Σ upstream·fn)/d inputs (None for inputs without grad)."""
    for t in inputs:
        if t is not None:
            t.grad = None
    out = fn(*inputs)
    (out * upstream).sum().backward()
    return out.detach(), [None if t is None or t.grad is None else t.grad.clone() for t in inputs]


CASES = [  # lead shape, vocab, hidden, chunk, temperature, bias, hidden dtype, weight dtype
    ((3, 7), 11, 8, 4, 1.0, False, torch.float32, torch.float32),
    ((2, 3, 5), 50, 16, 7, 0.7, True, torch.float32, torch.float32),
    ((1, 13), 5, 4, 1024, 1.3, True, torch.float32, torch.float32),
    ((2, 9), 40, 16, 5, 0.9, False, torch.bfloat16, torch.bfloat16),
    ((2, 9), 40, 16, 5, 0.9, True, torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize(("lead", "vocab", "h", "chunk", "temperature", "with_bias", "hdtype", "wdtype"), CASES)
def test_values_and_grads_equal_naive_log_softmax(lead, vocab, h, chunk, temperature, with_bias, hdtype, wdtype):
    torch.manual_seed(0)
    hidden, weight = leaf((*lead, h), hdtype, 2.0), leaf((vocab, h), wdtype)
    bias = leaf((vocab,), wdtype) if with_bias else None
    targets = torch.randint(vocab, lead)
    pad = torch.rand(lead) < 0.3  # padded positions: upstream gradient 0, as under a loss mask
    upstream = torch.randn(lead).masked_fill(pad, 0.0)

    def ours(hd, w, b):
        return selective_logprobs(hd, w, targets, bias=b, temperature=temperature, chunk_tokens=chunk)

    def naive(hd, w, b):
        return naive_logprobs(hd, w, targets, b, temperature)

    out, grads = grads_of(ours, [hidden, weight, bias], upstream)
    ref_out, ref_grads = grads_of(naive, [hidden, weight, bias], upstream)
    assert out.dtype == torch.float32 and out.shape == lead
    torch.testing.assert_close(out, ref_out)  # float32 tolerance even for bf16 inputs: the head runs in float32
    for g, ref_g, t in zip(grads, ref_grads, [hidden, weight, bias], strict=True):
        if t is None:
            continue
        assert g.dtype == t.dtype
        if t.dtype == torch.float32:
            torch.testing.assert_close(g, ref_g)
        else:  # the naive gradient reaches a bf16 leaf rounded to bf16 too: at most one bf16 step apart
            torch.testing.assert_close(g.float(), ref_g.float(), rtol=1e-2, atol=1e-3)
    assert grads[0][pad].abs().max() == 0


def test_frozen_head_gives_no_weight_grad_and_right_hidden_grad():
    torch.manual_seed(1)
    hidden, weight, targets = leaf((4, 6, 8)), torch.randn(30, 8), torch.randint(30, (4, 6))
    upstream = torch.randn(4, 6)
    (selective_logprobs(hidden, weight, targets, chunk_tokens=5) * upstream).sum().backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    (naive_logprobs(hidden, weight, targets) * upstream).sum().backward()
    torch.testing.assert_close(ours, hidden.grad)
    assert weight.grad is None


def test_head_stays_float32_under_autocast():
    torch.manual_seed(2)
    hidden, weight, targets = torch.randn(2, 8, 16) * 3, torch.randn(64, 16), torch.randint(64, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = selective_logprobs(hidden, weight, targets, chunk_tokens=3)
    torch.testing.assert_close(ours, naive_logprobs(hidden, weight, targets))


def test_entropy_equals_naive():
    torch.manual_seed(3)
    hidden, weight, bias = leaf((2, 5, 8), torch.bfloat16), torch.randn(33, 8), torch.randn(33)
    ours = selective_entropy(hidden, weight, bias=bias, temperature=0.8, chunk_tokens=3)
    logp = torch.log_softmax((hidden.float() @ weight.T + bias) / 0.8, dim=-1)
    torch.testing.assert_close(ours, -(logp.exp() * logp).sum(-1))
    assert not ours.requires_grad and ours.shape == (2, 5)


def test_entropy_needs_no_second_logits_buffer():
    """The module's memory claim: one chunk's [c, V] logits at a time. Entropy works inside that buffer (plus
    blocks of rows that are a sixteenth of it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from grpo.logprobs import _entropy_

    class LargeOutputs(TorchDispatchMode):
        def __init__(self, z: torch.Tensor) -> None:
            super().__init__()
            self.z, self.fresh = z, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.numel() >= self.z.numel() and t.data_ptr() != self.z.data_ptr():
                    self.fresh.append(str(func))
            return out

    torch.manual_seed(5)
    z = torch.randn(4, 300) * 3
    expected = -(z.log_softmax(-1).exp() * z.log_softmax(-1)).sum(-1)
    with LargeOutputs(z) as mode:
        entropy = _entropy_(z)
    assert mode.fresh == []  # no op produced another [c, V] tensor
    torch.testing.assert_close(entropy, expected)


@pytest.mark.parametrize(
    ("hidden_shape", "target_shape", "target", "kwargs", "msg"),
    [
        ((2, 5, 8), (2, 4), 1, {}, "disagree"),
        ((2, 5, 7), (2, 5), 1, {}, "need"),
        ((2, 5, 8), (2, 5), -100, {}, "not −100"),
        ((2, 5, 8), (2, 5), 1, {"temperature": 0.0}, "temperature"),
        ((2, 5, 8), (2, 5), 1, {"chunk_tokens": 0}, "chunk_tokens"),
    ],
)
def test_bad_inputs_raise(hidden_shape, target_shape, target, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        selective_logprobs(torch.randn(hidden_shape), torch.randn(20, 8), torch.full(target_shape, target), **kwargs)


# ---- token_logprobs through a real (tiny) transformers model ----


def tiny_gpt2() -> GPT2LMHeadModel:
    """Absolute position embeddings: the one kind of model where wrong position_ids change the numbers
    (RoPE only sees position differences, so a Llama is blind to a constant shift from left padding)."""
    torch.manual_seed(4)
    config = GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def tiny_model(kind: str) -> PreTrainedModel:
    return tiny_gpt2() if kind == "gpt2" else tiny_llama(tie=kind == "llama-tied")


def tiny_llama(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def left_padded_batch(prompt_lengths, width, num_completion, vocab, pad_id=0):
    """[left-padded prompt | completion] ids and attention mask."""
    rows, masks = [], []
    for n in prompt_lengths:
        prompt = torch.randint(1, vocab, (n,))
        completion = torch.randint(1, vocab, (num_completion,))
        rows.append(torch.cat([torch.full((width - n,), pad_id), prompt, completion]))
        masks.append(torch.cat([torch.zeros(width - n), torch.ones(n + num_completion)]))
    return torch.stack(rows), torch.stack(masks).long()


@pytest.mark.parametrize("kind", ["llama-tied", "llama-untied", "gpt2"])
def test_token_logprobs_match_unpadded_full_logits(kind):
    model = tiny_model(kind)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (kind != "llama-untied")
    c, temperature = 4, 0.9
    ids, mask = left_padded_batch([5, 2, 1], width=5, num_completion=c, vocab=61)
    logps, entropy = token_logprobs(model, ids, mask, c, temperature=temperature, chunk_tokens=5, return_entropy=True)
    assert logps.shape == entropy.shape == (3, c)
    for b in range(3):  # each row alone, without padding, default positions, the model's own lm_head
        row = ids[b, mask[b].bool()][None]
        logp = torch.log_softmax(model(row).logits[0, -c - 1 : -1] / temperature, dim=-1)
        torch.testing.assert_close(logps[b], logp.gather(-1, row[0, -c:, None]).squeeze(-1).detach())
        torch.testing.assert_close(entropy[b], -(logp.exp() * logp).sum(-1).detach())


@pytest.mark.parametrize("tie", [True, False])
def test_token_logprobs_gradients_match_full_logits(tie):
    model = tiny_llama(tie)
    c, temperature = 3, 0.7
    ids, mask = left_padded_batch([4, 1], width=4, num_completion=c, vocab=61)
    upstream = torch.randn(2, c)

    (token_logprobs(model, ids, mask, c, temperature=temperature, chunk_tokens=2) * upstream).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(ids, attention_mask=mask, position_ids=positions).logits[:, -c - 1 : -1]
    naive = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[:, -c:, None]).squeeze(-1)
    (naive * upstream).sum().backward()
    head = "model.embed_tokens.weight" if tie else "lm_head.weight"
    assert ours[head].abs().sum() > 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_token_logprobs_rejects_bad_completion_length():
    model = tiny_llama(True)
    ids, mask = left_padded_batch([2], width=2, num_completion=2, vocab=61)
    with pytest.raises(ValueError, match="num_completion_tokens=4"):
        token_logprobs(model, ids, mask, 4)
