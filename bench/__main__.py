"""`python -m bench NAME [--quick] [options]`, or `python -m bench all --quick`.

NAME is a module `bench/bench_NAME.py` exposing `main(argv: list[str]) -> None`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench.harness import run_all


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        print("benchmarks: " + ", ".join(names) + ", all")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        return run_all([f"bench_{n}" for n in names], rest)
    if name not in names:
        print(f"unknown benchmark {name!r}; choose from: {', '.join(names)}, all", file=sys.stderr)
        return 2
    importlib.import_module(f"bench.bench_{name}").main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
