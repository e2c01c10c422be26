"""Where the frozen KL reference lives, and in which precision (``grpo.reference_dtype``, ``grpo.reference_device``).

The reference model is never updated, so it needs no float32 master copy: in bfloat16 it takes half the memory
(at SmolKartoffel's shape 329 MB instead of 657 MB; at Llasa-1B 2.6 GB instead of 5.2 GB). Its log-probs enter
the loss only through the k3 KL term, weighted by β. ``bench/step.py --model smollm2`` measured them against
the float32 reference on the same batch (CPU, the real SmolLM2 weights): mean |Δ log p| 0.035, max 0.74 nats,
from bf16 rounding of the hidden states over 30 layers (the output head runs in float32 either way). That is
not negligible next to the per-token KL early in training, so float32 stays the default and bfloat16 is the
memory option. On a GPU under bf16 autocast the policy's matmuls run in bf16 too; ``bench/gpu_check.py``
measures the gap there (random weights), but it has not been run yet.
"""

from __future__ import annotations

import torch
from torch import nn

from grpo.config import GRPOConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def reference_placement(cfg: GRPOConfig, policy_device: torch.device) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the reference: ``grpo.reference_device`` (default: the policy's) and ``reference_dtype``."""
    device = torch.device(cfg.reference_device) if cfg.reference_device else policy_device
    return device, _DTYPES[cfg.reference_dtype]


def place_reference(model: nn.Module, cfg: GRPOConfig, policy_device: torch.device) -> nn.Module:
    """Freeze ``model`` (a fresh copy of the initial policy) and move it where ``cfg`` says."""
    device, dtype = reference_placement(cfg, policy_device)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
