"""``clumpdet simulate``: write a synthetic cutout set with known truth (no torch)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``clumpdet simulate``."""
    parser.add_argument("--n", type=int, default=1000, help="number of cutouts (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")


def run(args: argparse.Namespace) -> int:
    """Generate the set; print a one-line JSON summary."""
    from clumpdet.train.simulate import generate

    summary = generate(args.n, args.seed, args.out, workers=args.workers)
    print(json.dumps(summary))
    return 0
