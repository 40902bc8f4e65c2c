"""The ``clumpdet`` command: the one place that composes the parts (DESIGN §1).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the subcommand being run is imported,
so ``clumpdet detect`` never imports torch, and a subcommand whose extra is
missing says which one to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clumpdet.engine import __version__

#: name -> (module, extra it needs or None, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str | None, str]] = {
    "detect": ("clumpdet.engine.cli_detect", None, "run an exported model on FITS/PNG cutouts"),
    "simulate": ("clumpdet.train.cli_simulate", "train", "write synthetic cutouts with known truth"),
    "predict": ("clumpdet.train.cli_predict", "train", "run the PyTorch reference detector"),
    "export": ("clumpdet.export.cli_export", "export", "export a checkpoint to ONNX/TensorRT"),
    "train": ("clumpdet.train.cli_train", "train", "train a detector"),
    "bench": ("clumpdet.export.cli_bench", "export", "benchmark every backend against the PyTorch reference (from a checkout)"),
    "serve": ("clumpdet.engine.cli_serve", "serve", "serve a model over the Open Inference Protocol (KServe v2)"),
}


#: Top-level modules that only extras install; a subcommand missing one names its extra.
OPTIONAL_MODULES = frozenset(
    {"torch", "torchvision", "timm", "onnx", "onnxscript", "scipy", "safetensors", "starlette", "uvicorn", "ray"}
)


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="clumpdet",
        description=f"clumpdet {__version__}: find giant star-forming clumps in galaxy cutouts.",
        epilog=f"subcommands:\n{lines}\n\nRun 'clumpdet <subcommand> --help' for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clumpdet {__version__}")
    parser.add_argument("subcommand", choices=sorted(SUBCOMMANDS), metavar="subcommand")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv)  # prints help / a usage error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, extra, help_ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"clumpdet {name}", description=help_)
        module.add_arguments(parser)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except ModuleNotFoundError as err:
        # A subcommand's module imports its extra lazily (at import or when it runs).
        if err.name and err.name.split(".")[0] in OPTIONAL_MODULES:
            hint = f"pip install 'clumpdet[{extra}]'" if extra else "reinstall clumpdet"
            print(f"clumpdet {name}: needs {err.name!r}, which is not installed; {hint}", file=sys.stderr)
            return 2
        raise

if __name__ == "__main__":
    sys.exit(main())
