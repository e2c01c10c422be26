"""``python -m lab build [...]`` builds the lab models; ``python -m lab pack BUILD_DIR [LM]`` copies them into the
repo (LM: the build's final ``llasa`` or one of its ``snapshots/<phase>/step-K``)."""

import sys
from pathlib import Path

from lab.build import main, pack_build

USAGE = "usage: python -m lab build [--out DIR] [--seed N] [--toy] [--stages ...] | python -m lab pack BUILD_DIR [LM]"

if __name__ == "__main__":
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "build":
        main(rest)
    elif command == "pack" and len(rest) in (1, 2):
        repo = Path(__file__).resolve().parent.parent
        for name, path in pack_build(Path(rest[0]), repo, llasa=rest[1] if len(rest) == 2 else "llasa").items():
            print(f"[lab] {name}: {path}")
    else:
        sys.exit(USAGE)
