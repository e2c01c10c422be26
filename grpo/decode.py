"""The project's own decode loop for the ``hf`` backend: a static KV cache and a sampler that is cheap at V ≈ 10⁵.

``model.generate`` spends most of a decode step at Llasa's vocabulary outside the matrix work: its per-step
bookkeeping (logits processors, stopping criteria, input preparation, a growing cache) and a full-vocabulary
``softmax`` + ``multinomial`` per step. This loop keeps only what sampling needs:

* one ``StaticCache`` allocated for prompt + budget, a preallocated attention mask, explicit position ids
  (left padding: a row's positions count its real tokens only, as ``generate`` does);
* the prompt prefilled once per distinct prompt, not once per row (a group's G completions share it), its
  keys and values then copied to every row of the group;
* the processed distribution built like transformers' processors, in their order (repetition penalty, then
  temperature, top-k, top-p), only the parts that are switched on;
* **inverse-CDF sampling**: one uniform number per row against the cumulative sum of ``exp(z - max z)``.
  That is exactly the categorical distribution of ``softmax(z)`` (up to float32 rounding of the cumulative
  sum: each token's probability moves by at most 2⁻²⁴ of the total), and it costs one ``exp`` and one
  ``cumsum`` over the vocabulary, where ``softmax`` + ``multinomial`` makes several passes and a Gumbel /
  exponential race needs V random numbers per row;
* per-row stop on any stop id (finished rows are fed the pad id and their tokens are not kept) and an early
  exit when every row has stopped;
* the sampler's log-probs of the processed distribution at the sampled tokens, for free from the same sums.

``sampling="multinomial"`` draws with ``torch.multinomial(softmax(z))`` exactly as ``generate`` does, so with the
same seed it reproduces ``HFGenerator``'s tokens (tested); it exists to prove that equivalence, not for speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import StaticCache

from grpo import distributed as dist
from grpo.config import GenerationConfig
from grpo.generation import HFGenerator, Sampling, completion_mask, left_pad
from grpo.rollouts import Rollouts

SamplerMethod = Literal["inverse_cdf", "multinomial"]  # how a token is drawn; Sampling is what it is drawn from


def processes_beyond_temperature(params: GenerationConfig | Sampling) -> bool:
    """True when the sampled distribution is not just softmax(logits / T): top-k, top-p or a repetition penalty.

    Then the trainer's log-probs (temperature only) are not the sampler's, and the loss needs the sampler's
    log-probs for its importance weights.
    """
    return params.top_k > 0 or params.top_p < 1.0 or params.repetition_penalty != 1.0


def process_logits(logits: Tensor, params: GenerationConfig | Sampling, seen: Tensor | None) -> Tensor:
    """transformers' sampling processors on float32 ``logits`` [n, V], in ``generate``'s order; returns z [n, V].

    ``seen`` [n, V] bool marks the tokens the repetition penalty applies to (needed when it is not 1).
    """
    z = logits
    if params.repetition_penalty != 1.0:
        assert seen is not None
        p = params.repetition_penalty
        z = torch.where(seen, torch.where(z < 0, z * p, z / p), z)
    if params.temperature != 1.0:
        z = z / params.temperature
    if 0 < params.top_k < z.shape[-1]:  # keep every token tied with the k-th largest, as TopKLogitsWarper does
        kth = torch.topk(z, params.top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -float("inf"))
    if params.top_p < 1.0:  # TopPLogitsWarper: drop the smallest tokens whose total mass is ≤ 1 - top_p
        sorted_z, order = torch.sort(z, dim=-1)
        drop_sorted = sorted_z.softmax(-1).cumsum(-1) <= 1 - params.top_p
        drop_sorted[:, -1] = False  # always keep the most likely token
        z = z.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -float("inf"))
    return z


def sample(z: Tensor, method: SamplerMethod = "inverse_cdf") -> tuple[Tensor, Tensor]:
    """One token per row from softmax(z) [n, V] and its log-prob: (tokens [n] long, logps [n] float32)."""
    m = z.amax(-1, keepdim=True)  # [n, 1]
    if method == "multinomial":  # generate's own draw, same RNG stream
        tokens = torch.multinomial(z.softmax(-1), num_samples=1)  # [n, 1]
        logps = z.gather(1, tokens) - torch.logsumexp(z, -1, keepdim=True)
        return tokens[:, 0], logps[:, 0]
    cdf = (z - m).exp_().cumsum_(-1)  # [n, V], unnormalised
    total = cdf[:, -1:]
    # u < total strictly, so the first cdf entry above u has positive width (never a masked token)
    u = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, u, right=True)  # [n, 1]
    logps = z.gather(1, tokens) - m - total.log()
    return tokens[:, 0], logps[:, 0]


@dataclass(frozen=True)
class Decoded:
    tokens: Tensor  # [n, C] long: sampled ids, pad after a row's stop (C ≤ max_new_tokens)
    mask: Tensor  # [n, C] long: 1 up to and including the first stop
    finished: Tensor  # [n] bool
    logps: Tensor  # [n, C] float32: log-probs of the processed distribution, 0 on padding


@torch.no_grad()
def decode(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    params: GenerationConfig | Sampling,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    sampling: SamplerMethod = "inverse_cdf",
) -> Decoded:
    """Sample up to ``params.max_new_tokens`` after left-padded ``ids`` / ``mask`` [n, P] (on the model's device)."""
    n, width = ids.shape
    budget = params.max_new_tokens
    device = ids.device
    cache = StaticCache(config=model.config, max_cache_len=width + budget)
    attn = torch.zeros((n, width + budget), dtype=torch.long, device=device)
    attn[:, :width] = mask
    lengths = mask.sum(1)  # [n]: the next position of each row
    positions = (mask.cumsum(1) - 1).clamp_(min=0)  # pads get position 0; they are masked anyway
    stops = torch.as_tensor(list(stop_ids), device=device)
    tokens = torch.full((n, budget), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((n, budget), dtype=torch.float32, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    # Asking whether every row has stopped is a host sync: on a GPU it would stall the queue of launched
    # kernels each step, so there it is asked every 8 steps (the extra steps' tokens fall after the stops).
    check_every = 8 if device.type == "cuda" else 1
    # A group's G rows share one prompt: prefill each distinct row once, then copy its cache to the others
    # (what vLLM's prefix cache does). rep[k] is a row of distinct prompt k, inverse[i] the prompt of row i.
    _, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    rep = torch.empty(int(inverse.max()) + 1, dtype=torch.long, device=device).scatter_(
        0, inverse, torch.arange(n, device=device)
    )
    out = model(
        input_ids=ids[rep], attention_mask=attn[rep, :width], position_ids=positions[rep], cache=cache, logits_to_keep=1
    )
    logits = out.logits[inverse, -1]  # [n, V]
    cache.reorder_cache(inverse)  # every row's own copy of its prompt's keys and values
    seen = None
    if params.repetition_penalty != 1.0:  # the penalty covers the prompt's real tokens and everything sampled
        # scatter_add, not scatter: a pad id that is also a real prompt token must stay marked
        counts = torch.zeros((n, logits.shape[-1]), dtype=torch.long, device=device)
        seen = counts.scatter_add_(1, ids, mask.long()) > 0
    steps = 0
    for t in range(budget):
        z = process_logits(logits.float(), params, seen)
        tok, logp = sample(z, sampling)
        tokens[:, t] = tok.masked_fill(done, pad_id)
        logps[:, t] = logp.masked_fill(done, 0.0)
        done |= torch.isin(tok, stops)
        steps = t + 1
        if t == budget - 1 or (steps % check_every == 0 and bool(done.all())):
            break
        if seen is not None:
            seen.scatter_(1, tok[:, None], True)
        attn[:, width + t] = 1
        logits = model(
            input_ids=tok[:, None],
            attention_mask=attn[:, : width + t + 1],
            position_ids=(lengths + t)[:, None],
            cache=cache,
            logits_to_keep=1,
        ).logits[:, -1]
    tokens, logps = tokens[:, :steps], logps[:, :steps]
    keep, finished = completion_mask(tokens, stop_ids)
    return Decoded(tokens.masked_fill(keep == 0, pad_id), keep, finished, logps * keep)


class FastHFGenerator(HFGenerator):
    """``HFGenerator`` with ``decode`` in place of ``model.generate``: the same distribution, faster.

    It returns the sampler's log-probs only when they differ from the trainer's (top-k, top-p or repetition
    penalty; see ``processes_beyond_temperature``; or bfloat16 sampler weights): then the trainer reweights by
    π_old / π_sampler as for vLLM. With plain temperature sampling from the policy's own weights the sampler
    *is* the policy and the loss is the on-policy one, exactly as with ``HFGenerator``. Under FSDP it falls back
    to ``model.generate`` (``synced_gpus``).

    ``sampler_dtype = torch.bfloat16`` samples with a copy of the policy whose parameters are bfloat16 (buffers
    such as RoPE's frequencies stay as they are). At a few rows a decode step streams every weight once per token,
    so half the bytes is most of the time saved. The copy's parameters are cast from the policy at the start of
    every ``generate`` (so it always samples the current weights, no sync needed) and freed at its end, so they
    cost memory only while generating, when the update's activations are not there.
    """

    def __init__(
        self,
        model: nn.Module,
        config: GenerationConfig,
        *,
        pad_id: int,
        stop_ids: Sequence[int],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        sampling: SamplerMethod = "inverse_cdf",
        sampler_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, config, pad_id=pad_id, stop_ids=stop_ids, autocast=autocast)
        self.sampling_method: SamplerMethod = sampling
        self.sampler_dtype = sampler_dtype
        self.sampler = model if sampler_dtype is None else _empty_copy(model)
        self.return_logps = sampler_dtype is not None or processes_beyond_temperature(config)
        self._logps: list[Tensor] = []

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        self._logps = []
        with self.sampler_weights():
            rollouts = super().generate(prompt_ids, group_size)
        if not self.return_logps or not self._logps:
            return rollouts
        width = rollouts.completion_ids.shape[1]
        logps = torch.cat([nn.functional.pad(x, (0, width - x.shape[1])) for x in self._logps])
        return dataclasses.replace(rollouts, sampler_logps=logps)

    @contextlib.contextmanager
    @torch.no_grad()
    def sampler_weights(self) -> Iterator[nn.Module]:
        """The module that samples: the policy, or the copy with the policy's parameters cast to
        ``sampler_dtype`` for the duration (one ``generate``), freed after it."""
        if self.sampler is self.model:
            yield self.model
            return
        pairs = list(zip(self.sampler.parameters(), self.model.parameters(), strict=True))
        try:
            for dst, src in pairs:
                dst.data = src.detach().to(self.sampler_dtype if src.is_floating_point() else src.dtype)
            yield self.sampler
        finally:
            for dst, _ in pairs:
                dst.data = dst.data.new_empty(0)

    @torch.no_grad()
    def _generate(self, rows: list[list[int]]) -> tuple[list[list[int]], Tensor, Tensor, Tensor]:
        if dist.is_distributed() and dist.is_sharded(self.model):
            return super()._generate(rows)
        model = self.sampler
        device = next(model.parameters()).device
        ids, mask = left_pad(rows, self.pad_id)
        was_training = model.training
        model.eval()  # no dropout; and transformers skips activation checkpointing in eval mode
        try:
            with self.autocast():
                d = decode(
                    model,
                    ids.to(device),
                    mask.to(device),
                    self.config,
                    stop_ids=self.stop_ids,
                    pad_id=self.pad_id,
                    sampling=self.sampling_method,
                )
        finally:
            model.train(was_training)
        self._logps.append(d.logps.cpu())
        return rows, d.tokens.cpu(), d.mask.cpu(), d.finished.cpu()


def _empty_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model``'s modules and buffers whose parameters hold no data (tied ones stay tied),
    made without ever holding a second copy of the weights."""
    params = list(model.parameters())
    data = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.new_empty(0)
        copy = deepcopy(model)
    finally:
        for p, d in zip(params, data, strict=True):
            p.data = d
    return copy.requires_grad_(False)
