"""``llasa-grpo``: one installed command, a subcommand per program.

    llasa-grpo train --config small.toml [--set grpo.beta=0.04] [--print-config]
    llasa-grpo evaluate --config small.toml --checkpoints base=... grpo=runs/x/checkpoint-100 --data ... --out ...
    llasa-grpo score --config small.toml --language de --text "..." clip.wav
    llasa-grpo serve --model <model.path>                  # the generation server (vllm_server backend)
    llasa-grpo transcribe-serve --model large-v3 --device cuda:1

Each subcommand is the program's own ``main(argv)``, imported only when it runs, so ``llasa-grpo --help`` is
instant and a program's heavy imports (torch, vLLM, faster-whisper) load only for that program. From a checkout
the same programs run as ``python train.py``, ``python evaluate.py``, ``python -m reward score``,
``python -m grpo.serve`` and ``python -m reward.service``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence

# subcommand → ("module:function", one line for --help). The function takes (argv, prog=...) and returns an exit
# status (None counts as 0); a function without a ``prog`` parameter is called with the program name in sys.argv[0],
# which is where argparse looks for it.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("llasa_grpo.train:main", "GRPO training (--print-config shows the resolved config)"),
    "evaluate": ("llasa_grpo.evaluate:main", "compare checkpoints on one evaluation set: report, metrics, plots"),
    "score": ("reward.__main__:score_main", "score recordings with the training reward, one JSON line per clip"),
    "serve": ("grpo.serve:main", 'the generation server for generation.backend = "vllm_server"'),
    "transcribe-serve": ("reward.service:main", 'the transcription service for transcriber.backend = "http"'),
    "push": ("llasa_grpo.push:main", "upload a checkpoint folder (weights, tokenizer, model card) to the Hub"),
}
PROG = "llasa-grpo"


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def load(target: str) -> Callable[..., int | None]:
    """``"package.module:function"`` → the function (imported now, not before)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"{PROG}: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    prog = f"{PROG} {name}"
    fn = load(SUBCOMMANDS[name][0])
    if "prog" in inspect.signature(fn).parameters:
        status = fn(rest, prog=prog)
    else:
        saved, sys.argv = sys.argv, [prog, *rest]
        try:
            status = fn(rest)
        finally:
            sys.argv = saved
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
