"""GRPO training of a Llasa-style TTS model, run from a checkout: ``python train.py --config tiny.toml``.

The program is ``llasa_grpo.train`` (installed: ``llasa-grpo train``); ``--help`` lists its options.
"""

import sys

from llasa_grpo.train import main

if __name__ == "__main__":
    sys.exit(main())
