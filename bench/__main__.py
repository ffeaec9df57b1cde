"""`python -m bench NAME [ARGS...]`: run one benchmark (or `all` with defaults)."""
from __future__ import annotations

import importlib
import sys

NAMES = ["quality", "memory", "speed", "variant", "sampler", "decoder", "draw", "official", "supernet_frontier", "allocator"]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in NAMES + ["all"]:
        print(f"usage: python -m bench {{{','.join(NAMES)},all}} [ARGS...]\n"
              "each benchmark prints a table and writes JSON/markdown/PNG to bench/results/; "
              "`python -m bench NAME --help` lists its options")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    names = [n for n in NAMES if n not in ("official", "supernet_frontier", "allocator")] if argv[0] == "all" else [argv[0]]
    for name in names:
        importlib.import_module(f"bench.{name}").main(argv[1:] if argv[0] != "all" else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
