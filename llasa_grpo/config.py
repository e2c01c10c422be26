"""The recipe's root config: one TOML section per concern, each defined next to what it configures.

Imports no torch, so ``train.py --help`` can list every key with its comment at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpo.config import GenerationConfig, GRPOConfig, OptimConfig, RunConfig, TrainingConfig
from reward.config import RewardConfig, TranscriberConfig
from tomlconfig import FieldError, describe, load_config
from tts.config import CodecConfig, DataConfig, ModelConfig, ReferenceConfig


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    transcriber: TranscriberConfig = field(default_factory=TranscriberConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        from reward.terms import resolve_terms

        if not self.data.path:
            raise FieldError("data.path", self.data.path, "set it to a .jsonl or .csv file of rows with 'text'")
        try:  # term names are resolved here, at load time, so a misspelt one fails before any model loads
            resolve_terms(self.reward)
        except FieldError as e:
            raise FieldError(f"reward.{e.key}", e.value, e.message) from None

    @property
    def training(self) -> TrainingConfig:
        return TrainingConfig(generation=self.generation, grpo=self.grpo, optim=self.optim, run=self.run)


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    return load_config(Config, path, overrides)


def keys_help() -> str:
    """Every key with its default and its comment in the dataclass source: the epilog of ``--help``."""
    return "config keys (TOML section.key, or --set section.key=value):\n" + "\n".join(describe(Config))
