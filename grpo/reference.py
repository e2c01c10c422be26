"""Where the frozen KL reference lives, and in which precision (``grpo.reference_dtype``, ``grpo.reference_device``).

The reference model is never updated, so it needs no float32 master copy: in bfloat16 it takes half the memory
(at SmolKartoffel's shape 345 MB instead of 689 MB; at Llasa-1B 2.6 GB instead of 5.2 GB). Its log-probs enter
the loss only through the k3 KL term, weighted by β; ``bench/step.py --model`` measures their error against a
float32 reference in the same run. The output head still runs in float32 (``grpo.logprobs``), so only the
hidden states carry bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from grpo.config import GRPOConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def reference_placement(cfg: GRPOConfig, policy_device: torch.device) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the reference: ``auto`` is bfloat16 on CUDA and float32 on CPU (measured in bench/)."""
    device = torch.device(cfg.reference_device) if cfg.reference_device else policy_device
    if cfg.reference_dtype != "auto":
        return device, _DTYPES[cfg.reference_dtype]
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def place_reference(model: nn.Module, cfg: GRPOConfig, policy_device: torch.device) -> nn.Module:
    """Freeze ``model`` (a fresh copy of the initial policy) and move it where ``cfg`` says."""
    device, dtype = reference_placement(cfg, policy_device)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
