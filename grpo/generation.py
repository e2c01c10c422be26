"""The Hugging Face ``generate`` backend of the ``Generator`` interface (the CPU and debugging path).

Each prompt is repeated ``group_size`` times, prompts are left-padded so every completion starts at the same
column, and ``model.generate`` samples with the configured parameters until a stop token or the length budget.
A completion's mask covers its tokens up to and including the first stop token; ``finished`` says whether it
stopped rather than ran out of budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig as HFGenerationConfig

from grpo import distributed as dist
from grpo.config import GenerationConfig
from grpo.rollouts import Rollouts


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows of ids → (ids [N, L], mask [N, L]) padded on the left with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def completion_mask(completion_ids: Tensor, stop_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask [N, C] over tokens up to and including the first stop token, and ``finished`` [N].

    Found from the first stop position, not from padding, so it is right even when pad id == stop id.
    """
    is_stop = torch.isin(completion_ids, torch.as_tensor(list(stop_ids), device=completion_ids.device))
    finished = is_stop.any(dim=1)
    cols = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    first = torch.where(finished, is_stop.float().argmax(dim=1), completion_ids.shape[1] - 1)  # last kept column
    return (cols[None, :] <= first[:, None]).long(), finished


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters of every backend (from the ``[generation]`` section), with the stop ids; the
    generation server receives them as ``to_dict()``."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    @classmethod
    def from_config(cls, cfg: GenerationConfig, stop_ids: Sequence[int], seed: int | None = None) -> Sampling:
        return cls(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            repetition_penalty=cfg.repetition_penalty,
            stop_ids=tuple(stop_ids),
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hf_sampling_config(sampling: Sampling, pad_id: int) -> HFGenerationConfig:
    """transformers' sampling configuration for ``sampling``, stopping at its ``stop_ids`` only."""
    return HFGenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,  # explicit: transformers' default would be 50
        repetition_penalty=sampling.repetition_penalty,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=list(sampling.stop_ids) or None,
        pad_token_id=pad_id,
        use_cache=True,
    )


class HFGenerator:
    """``Generator`` that samples from the policy itself with ``model.generate`` (so ``sync_weights`` is a no-op).

    ``autocast`` is a factory for the precision context the trainer uses (e.g. bf16 autocast), if any.
    """

    def __init__(
        self,
        model: nn.Module,
        config: GenerationConfig,
        *,
        pad_id: int,
        stop_ids: Sequence[int],
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        if not stop_ids:
            raise ValueError("[grpo] HFGenerator needs at least one stop token id")
        self.model, self.config, self.pad_id, self.stop_ids = model, config, pad_id, list(stop_ids)
        self.autocast = autocast
        self.sampling = hf_sampling_config(Sampling.from_config(config, self.stop_ids), pad_id)

    def sync_weights(self, model: nn.Module) -> None:
        """The sampler *is* the policy: nothing to copy."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        rows = [list(p) for p in prompt_ids for _ in range(group_size)]  # group by group
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("[grpo] HFGenerator.generate: every prompt needs at least one token")
        parts = [self._generate(chunk) for chunk in self._chunks(rows, group_size)]
        prompt, pmask = left_pad([r for p in parts for r in p[0]], self.pad_id)
        width = max(p[1].shape[1] for p in parts)
        comp = torch.cat([nn.functional.pad(p[1], (0, width - p[1].shape[1]), value=self.pad_id) for p in parts])
        cmask = torch.cat([nn.functional.pad(p[2], (0, width - p[2].shape[1]), value=0) for p in parts])
        finished = torch.cat([p[3] for p in parts])
        return Rollouts(
            prompt_ids=prompt,
            prompt_mask=pmask,
            completion_ids=comp,
            completion_mask=cmask,
            group_size=group_size,
            finished=finished,
        )

    def _chunks(self, rows: list[list[int]], group_size: int) -> Iterator[list[list[int]]]:
        """Whole groups per call, at most ``config.batch_size`` sequences (0: all at once)."""
        size = len(rows) if self.config.batch_size == 0 else max(group_size, self.config.batch_size)
        size -= size % group_size
        for s in range(0, len(rows), size):
            yield rows[s : s + size]

    @torch.no_grad()
    def _generate(self, rows: list[list[int]]) -> tuple[list[list[int]], Tensor, Tensor, Tensor]:
        device = next(self.model.parameters()).device
        ids, mask = left_pad(rows, self.pad_id)
        was_training = self.model.training
        # Eval mode: no dropout, and transformers only uses the KV cache with gradient checkpointing off in eval.
        self.model.eval()
        # FSDP: every forward all-gathers each layer on all ranks together, so a rank whose sequences have all
        # stopped keeps stepping (transformers' synced_gpus) until every rank's have.
        synced = dist.is_distributed() and dist.is_sharded(self.model)
        try:
            with self.autocast():
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=self.sampling,
                    synced_gpus=synced,
                )
        finally:
            self.model.train(was_training)
        comp = out[:, ids.shape[1] :].cpu()  # [n, C'] (C' ≤ max_new_tokens; pad after a stop)
        cmask, finished = completion_mask(comp, self.stop_ids)
        comp = comp.masked_fill(cmask == 0, self.pad_id)
        return rows, comp, cmask, finished
