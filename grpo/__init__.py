"""GRPO in plain PyTorch. Knows nothing of speech: it trains any causal LM against any ``Scorer``.

The interfaces are in ``grpo.rollouts`` (``Generator``, ``Rollouts``, ``Scorer``, ``Scores``) and the loop in
``grpo.trainer``. Importing the package imports nothing else, so its torch-free helpers (``grpo.http``) stay light.
"""
