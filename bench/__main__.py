"""`python -m bench NAME [ARGS...]`: run one benchmark (or `all` with defaults)."""
from __future__ import annotations

import importlib
import sys

NAMES = ["quality", "memory", "speed", "variant", "sampler", "decoder", "draw", "search", "official", "supernet_frontier",
         "allocator", "serve_load", "wheel", "edit", "finetune"]
NOT_IN_ALL = ("official", "supernet_frontier", "allocator", "serve_load", "finetune")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in NAMES + ["all"]:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(f"usage: python -m bench {{{','.join(NAMES)},all}} [ARGS...]\n"
              "each benchmark prints a table and writes JSON/markdown/PNG to bench/results/; "
              "`python -m bench NAME --help` lists its options", file=sys.stdout if asked else sys.stderr)
        if not asked and argv:
            print(f"error: unknown benchmark {argv[0]!r}", file=sys.stderr)
        return 0 if asked else 2
    names = [n for n in NAMES if n not in NOT_IN_ALL] if argv[0] == "all" else [argv[0]]
    for name in names:
        importlib.import_module(f"bench.{name}").main(argv[1:] if argv[0] != "all" else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
