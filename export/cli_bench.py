"""``clumpdet bench``: the benchmark harness, which lives in the repository's ``benchmarks/``.

Benchmarks are scripts, not installed (DESIGN §1). This subcommand finds them
when run from a checkout (``benchmarks/bench.py`` under the current directory,
or already importable) and delegates to ``benchmarks.bench``; elsewhere it
says to run ``python -m benchmarks.bench`` from a clumpdet checkout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

HINT = ("clumpdet bench: the benchmark harness lives in the clumpdet repository (benchmarks/, not installed); "
        "run 'clumpdet bench' or 'python -m benchmarks.bench' from the root of a checkout")


def _bench_module() -> ModuleType | None:
    """``benchmarks.bench`` if importable (the current directory is tried as a checkout root)."""
    try:
        return importlib.import_module("benchmarks.bench")
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", "benchmarks.bench"):
            raise
    cwd = os.getcwd()
    if os.path.isfile(os.path.join(cwd, "benchmarks", "bench.py")) and cwd not in sys.path:
        sys.path.insert(0, cwd)
        sys.modules.pop("benchmarks", None)
        try:
            return importlib.import_module("benchmarks.bench")
        except ModuleNotFoundError as err:
            if err.name not in ("benchmarks", "benchmarks.bench"):
                raise
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's own options, or a catch-all when it is not reachable (``run`` explains)."""
    module = _bench_module()
    if module is None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Delegate to ``benchmarks.bench.run``; exit status 2 with a hint outside a checkout."""
    module = _bench_module()
    if module is None:
        print(HINT, file=sys.stderr)
        return 2
    args.command_line = "clumpdet bench " + " ".join(sys.argv[2:])
    return int(module.run(args) or 0)
