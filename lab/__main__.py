import sys

from lab.build import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["build"]:
        sys.exit("usage: python -m lab build [--out DIR] [--seed N] [--toy] [--stages ...]")
    main(sys.argv[2:])
