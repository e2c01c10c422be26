"""GRPO in plain PyTorch. Knows nothing of speech: it trains any causal LM against any `Scorer`."""

from grpo.rollouts import Generator, Rollouts, Scorer, Scores

__all__ = ["Generator", "Rollouts", "Scorer", "Scores"]
