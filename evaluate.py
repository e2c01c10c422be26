"""Compare checkpoints on one evaluation set, run from a checkout: ``python evaluate.py --config ... --help``.

The program is ``llasa_grpo.evaluate`` (installed: ``llasa-grpo evaluate``).
"""

import sys

from llasa_grpo.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
