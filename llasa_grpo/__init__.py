"""The Llasa GRPO recipe: the root config and component builders (``recipe``) and the two programs, ``train``
and ``evaluate`` (run from a checkout as ``python train.py`` / ``python evaluate.py``)."""
