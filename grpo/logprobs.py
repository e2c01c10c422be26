"""Per-token log-probabilities of sampled tokens without materialising the [tokens, vocab] logits.

For a final hidden state h_t ∈ R^H, output head W ∈ R^{V×H} (bias b), sampling temperature τ and token y_t:

    z_t            = (W h_t + b) / τ                      logits of the distribution that sampled y_t
    log π(y_t)     = z_t[y_t] − logsumexp(z_t)            what GRPO needs, one number per token
    ∂log π(y_t)/∂z = onehot(y_t) − softmax(z_t)           so ∂/∂(W h_t + b) = (onehot − softmax) / τ

Llasa's vocabulary has V = 193,800 entries: float32 logits of 8 × 2,048 tokens take 12.7 GB, and autograd keeps
two or three such tensors. Here the forward pass walks the tokens in chunks and keeps only logsumexp(z_t) per
token; the backward pass recomputes each chunk's logits and turns them, in place, into the gradient above. Peak
memory is one chunk's logits, [chunk_tokens, V] float32, plus the head's own weight gradient.

The head runs in float32 whatever the model's dtype: low-precision logits are a known source of mismatch
between the sampler's and the trainer's probabilities (MiniMax-M1 traced theirs to the LM head's precision),
and the ratio π/π_old amplifies it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


def _no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """Autocast would run the head matmul in bf16/fp16 again; the point is float32."""
    return torch.autocast(t.device.type, enabled=False)


def _head_logits(h: Tensor, w32: Tensor, b32: Tensor | None, temperature: float) -> Tensor:
    """z = (W h + b) / τ = W (h/τ) + b/τ for a chunk h [c, H], in float32: [c, V].

    Dividing the [c, H] input rather than the [c, V] logits saves a pass over the largest tensor.
    """
    h32 = h.float() / temperature if temperature != 1.0 else h.float()
    return h32 @ w32.T if b32 is None else torch.addmm(b32 / temperature, h32, w32.T)


def _blocks(z: Tensor) -> list[slice]:
    """Row blocks for the element-wise passes over a chunk's logits z [c, V]. On a CPU each block is about 4 MB,
    so the successive passes (max, subtract, exp, sum) find it in cache instead of streaming the whole chunk
    through memory each time (bench/entropy.py times the entropy pass); on a GPU, whose passes are single
    kernels, 16 blocks keep the launches few. Either way a block is at most 1/16 of the chunk: temporaries per
    block stay small.
    """
    c, v = z.shape
    rows = max(1, c // 16 if z.is_cuda else min(c // 16, 2**20 // v))
    return [slice(s, s + rows) for s in range(0, c, rows)]


def _logsumexp_(z: Tensor) -> Tensor:
    """logsumexp over the last dim, overwriting z (torch.logsumexp would allocate a second [c, V] buffer)."""
    out = z.new_empty(z.shape[0])
    for b in _blocks(z):
        m = z[b].amax(dim=-1)
        out[b] = z[b].sub_(m[:, None]).exp_().sum(dim=-1).log_().add_(m)
    return out


def _chunk_logprobs(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(log π(y), logsumexp(z)) for a chunk's logits z [c, V], which it overwrites."""
    picked = z.gather(1, targets[:, None]).squeeze(1)  # z[y]
    lse = _logsumexp_(z)
    return picked - lse, lse


def _grad_logits_(z: Tensor, targets: Tensor, lse: Tensor, g: Tensor) -> Tensor:
    """g ⊙ (onehot(y) − softmax(z)), built in z's buffer: softmax(z) = exp(z − logsumexp(z))."""
    for b in _blocks(z):
        z[b].sub_(lse[b, None]).exp_().mul_(-g[b, None])
    return z.scatter_add_(1, targets[:, None], g[:, None])


def _entropy_(z: Tensor) -> Tensor:
    """H = −Σ_v π(v) log π(v) for a chunk's logits z [c, V], which it overwrites (z − max z).

    With z' = z − max z, e = exp(z') and S = Σ_v e_v: log π = z' − log S, so H = log S − (Σ_v e_v z'_v) / S: one
    exp and one product per entry, no log (bench/entropy.py: 2.4-3x faster than −Σ π log π on a CPU). e is a
    temporary of one row block (``_blocks``), so no second [c, V] buffer exists.
    """
    entropy = z.new_empty(z.shape[0])
    for b in _blocks(z):
        zb = z[b].sub_(z[b].amax(dim=-1, keepdim=True))
        e = zb.exp()
        total = e.sum(dim=-1)
        entropy[b] = total.log() - e.mul_(zb).sum(dim=-1) / total
    return entropy


class _SelectiveLogProbs(torch.autograd.Function):
    """log π(y_t) for flattened hidden [M, H] and targets [M]; backward recomputes each chunk's logits.

    Each chunk's [c, V] buffer is deleted before the next chunk allocates its own: peak memory holds one chunk,
    not two. A bf16 head costs one float32 copy of W (and of its gradient in backward) per call.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_tokens):  # type: ignore[override]
        with _no_autocast(hidden):
            w32, b32 = weight.float(), None if bias is None else bias.float()
            logps = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
            lse = torch.empty_like(logps)  # logsumexp(z_t): all the backward pass needs besides the inputs
            for s in range(0, hidden.shape[0], chunk_tokens):
                e = s + chunk_tokens
                z = _head_logits(hidden[s:e], w32, b32, temperature)
                logps[s:e], lse[s:e] = _chunk_logprobs(z, targets[s:e])
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        return logps

    @staticmethod
    def backward(ctx, grad_logps):  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with _no_autocast(hidden):
            w32, b32 = weight.float(), None if bias is None else bias.float()
            g = grad_logps.float() / ctx.temperature  # upstream gradient times ∂z/∂(W h + b) = 1/τ
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(w32) if need_w else None  # accumulated in float32 over chunks
            grad_b = torch.zeros_like(b32) if need_b else None
            for s in range(0, hidden.shape[0], ctx.chunk_tokens):
                e = s + ctx.chunk_tokens
                z = _head_logits(hidden[s:e], w32, b32, ctx.temperature)  # recomputed
                dz = _grad_logits_(z, targets[s:e], lse[s:e], g[s:e])  # ∂/∂(W h + b), in z's buffer
                if need_h:
                    grad_h[s:e] = dz @ w32  # ∂/∂h = Wᵀ dz
                if need_w:
                    grad_w.addmm_(dz.T, hidden[s:e].float())  # ∂/∂W = Σ_t dz_t h_tᵀ
                if need_b:
                    grad_b += dz.sum(dim=0)
                del z, dz
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def _check_head_inputs(hidden: Tensor, weight: Tensor, temperature: float, chunk_tokens: int) -> None:
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"[grpo] hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)}: need [..., H], [V, H]"
        )
    if temperature <= 0:
        raise ValueError(f"[grpo] temperature={temperature}: must be > 0 (use the sampler's temperature)")
    if chunk_tokens < 1:
        raise ValueError(f"[grpo] chunk_tokens={chunk_tokens}: must be ≥ 1")


def selective_logprobs(
    hidden: Tensor,  # [..., T, H]
    weight: Tensor,  # [V, H]
    target_ids: Tensor,  # [..., T]
    *,
    bias: Tensor | None = None,  # [V]
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
) -> Tensor:  # [..., T] float32
    """log softmax((W h + b) / τ)[y] per token, in float32, differentiable w.r.t. hidden, weight and bias.

    Same values and gradients as the naive ``log_softmax((h.float() @ W.float().T + b) / τ).gather(-1, y)``,
    with peak memory of one chunk of ``chunk_tokens`` tokens' logits. Every target must be a valid id: fill
    padding with any real id (the loss mask removes it), not −100.
    """
    _check_head_inputs(hidden, weight, temperature, chunk_tokens)
    if hidden.shape[:-1] != target_ids.shape:
        raise ValueError(f"[grpo] hidden {tuple(hidden.shape)} and target_ids {tuple(target_ids.shape)} disagree")
    if target_ids.numel() and (target_ids.min() < 0 or target_ids.max() >= weight.shape[0]):
        raise ValueError(f"[grpo] target_ids outside [0, {weight.shape[0]}): fill padding with a real id, not −100")
    flat = _SelectiveLogProbs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, target_ids.reshape(-1).long(), temperature, chunk_tokens
    )
    return flat.view(target_ids.shape)


@torch.no_grad()
def selective_entropy(
    hidden: Tensor,  # [..., T, H]
    weight: Tensor,  # [V, H]
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
) -> Tensor:  # [..., T] float32
    """Entropy H(π_t) = −Σ_v π_t(v) log π_t(v) of the sampling distribution at every position; no gradient."""
    _check_head_inputs(hidden, weight, temperature, chunk_tokens)
    flat = hidden.reshape(-1, hidden.shape[-1])
    entropy = flat.new_empty(flat.shape[0], dtype=torch.float32)
    with _no_autocast(hidden):
        w32, b32 = weight.float(), None if bias is None else bias.float()
        for s in range(0, flat.shape[0], chunk_tokens):
            entropy[s : s + chunk_tokens] = _entropy_(_head_logits(flat[s : s + chunk_tokens], w32, b32, temperature))
    return entropy.view(hidden.shape[:-1])


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,  # [B, L]: left-padded prompt, then the completion in the last C columns
    attention_mask: Tensor,  # [B, L]
    num_completion_tokens: int,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """log π(y_t | prompt, y_<t) [B, C] of the completion tokens under a Hugging Face causal LM.

    Completion token t sits at column L − C + t and is predicted by the hidden state at column L − C + t − 1.
    Runs the model's body (``get_decoder()``) once, keeps only those C hidden states, and applies the output
    head (``get_output_embeddings()``, tied or not) chunk by chunk through ``selective_logprobs``. Assumes a
    plain linear head (Llama, Qwen, SmolLM2); heads with logit soft-capping or scaling are not handled.
    With ``return_entropy`` also returns the per-token entropy [B, C] (no gradient).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"[grpo] input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    length, c = input_ids.shape[1], num_completion_tokens
    if not 0 < c < length:
        raise ValueError(f"[grpo] num_completion_tokens={c}: need 0 < C < sequence length {length}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"[grpo] attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    # Positions count real tokens only, so a left-padded prompt gets the positions it would have unpadded.
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    body = model.get_decoder()
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, length - c - 1 : length - 1]  # [B, C, H]
    head = model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    targets = input_ids[:, length - c :]  # [B, C]
    logps = selective_logprobs(
        hidden, head.weight, targets, bias=bias, temperature=temperature, chunk_tokens=chunk_tokens
    )
    if not return_entropy:
        return logps
    entropy = selective_entropy(hidden, head.weight, bias=bias, temperature=temperature, chunk_tokens=chunk_tokens)
    return logps, entropy
