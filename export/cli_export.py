"""``clumpdet export``: a checkpoint to one ONNX file with the post-processing chain fused in.

Example::

    clumpdet export --preset popp2024 --checkpoint popp2024.pth --out popp2024.onnx
    clumpdet export --checkpoint runs/native.safetensors --out native.onnx --proposals 300

The checkpoint is either the published format (a ``.pth`` state dict saved from
``nn.DataParallel``, keys prefixed ``module.``; read without unpickling objects) or
ours (``.safetensors`` plus its ``.json`` config, which names the preset).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``clumpdet export``."""
    parser.add_argument("--preset", help="preset name (default: the one stored with our checkpoints; popp2024 for .pth)")
    parser.add_argument("--checkpoint", required=True, help="published .pth or our .safetensors checkpoint")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument(
        "--proposals",
        type=int,
        default=None,
        help="proposals per image after the RPN (rpn_post_nms_top_n_test); default: the preset's",
    )
    parser.add_argument("--training-data", default="", help="free-text description written to the metadata")
    parser.add_argument(
        "--reference-metrics", default=None, help="JSON file of reference metrics to write to the metadata"
    )


def run(args: argparse.Namespace) -> int:
    """Export; print the output path, its size and the graph's op count. Returns 0."""
    import onnx

    from clumpdet.export.checks import op_counts
    from clumpdet.export.onnx_export import OPSET, export_onnx
    from clumpdet.train.checkpoints import load_model, sha256_file
    from clumpdet.train.presets import get_preset

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        msg = f"cli_export.py: checkpoint {str(checkpoint)!r} does not exist"
        raise FileNotFoundError(msg)
    preset = get_preset(args.preset) if args.preset else None
    model, preset = load_model(checkpoint, preset)
    metrics = json.loads(Path(args.reference_metrics).read_text()) if args.reference_metrics else None
    weights = checkpoint.with_suffix(".safetensors") if checkpoint.suffix == ".json" else checkpoint
    out = export_onnx(
        model,
        preset,
        args.out,
        proposals=args.proposals,
        checkpoint_sha256=sha256_file(weights),
        training_data=args.training_data,
        reference_metrics=metrics,
    )
    counts = op_counts(onnx.load(str(out), load_external_data=False))
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, opset {OPSET}, {sum(counts.values())} nodes; preset {preset.name})")
    return 0
