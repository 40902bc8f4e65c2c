"""``clumpdet export``: a checkpoint to one ONNX file with the post-processing chain fused in.

Example::

    clumpdet export --preset popp2024 --checkpoint popp2024.pth --out popp2024.onnx
    clumpdet export --checkpoint runs/native.safetensors --out native.onnx --proposals 300
    clumpdet export --checkpoint runs/native.safetensors --out native.onnx --int8 data/sim1000/png --tensorrt fp16

The checkpoint is either the published format (a ``.pth`` state dict saved from
``nn.DataParallel``, keys prefixed ``module.``; read without unpickling objects) or
ours (``.safetensors`` plus its ``.json`` config, which names the preset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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
    parser.add_argument(
        "--final-score-thresh", type=float, default=None,
        help="operating point: the chain's last score cut (default: the preset's); recorded in the metadata",
    )
    parser.add_argument(
        "--triton-repo", metavar="DIR", default=None,
        help="also write a Triton model repository DIR/<name>/{config.pbtxt,1/model.onnx} (export/triton_repo.py)",
    )
    parser.add_argument("--int8", metavar="CALIB", default=None,
                        help="also write an int8 (QDQ backbone+FPN+RPN conv) copy calibrated on these cutouts "
                        "(dir, glob, @list)")
    parser.add_argument("--int8-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                        help="activation calibration for --int8 (default minmax)")
    parser.add_argument("--int8-images", type=int, default=32, help="calibration images for --int8 (default 32)")
    parser.add_argument("--int8-out", default=None, help="int8 output path (default <out>.int8.onnx)")
    parser.add_argument("--int8-backbone-only", action="store_true",
                        help="quantise only backbone+FPN (default: also the RPN's 3x3 convolution)")
    parser.add_argument("--tensorrt", choices=("fp16", "int8"), default=None,
                        help="also build a TensorRT plan (needs tensorrt>=10; int8 needs --int8); else prints trtexec")
    parser.add_argument("--plan", default=None, help="TensorRT plan path (default <out>.<precision>.plan)")


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
    if args.tensorrt == "int8" and not args.int8:
        msg = "cli_export.py: --tensorrt int8 needs calibration images (--int8 CALIB)"
        raise ValueError(msg)
    preset = get_preset(args.preset) if args.preset else None
    model, preset = load_model(checkpoint, preset)
    metrics = json.loads(Path(args.reference_metrics).read_text()) if args.reference_metrics else None
    weights = checkpoint.with_suffix(".safetensors") if checkpoint.suffix == ".json" else checkpoint
    postprocess = None
    if args.final_score_thresh is not None:
        postprocess = dataclasses.replace(preset.postprocess, final_score_thresh=args.final_score_thresh)
    out = export_onnx(
        model,
        preset,
        args.out,
        postprocess=postprocess,
        proposals=args.proposals,
        checkpoint_sha256=sha256_file(weights),
        training_data=args.training_data,
        reference_metrics=metrics,
    )
    counts = op_counts(onnx.load(str(out), load_external_data=False))
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, opset {OPSET}, {sum(counts.values())} nodes; preset {preset.name})")
    if args.triton_repo:
        from clumpdet.export.triton_repo import write_triton_repo

        print(f"wrote Triton model repository {write_triton_repo(out, args.triton_repo)}")
    if args.int8:
        from clumpdet.export.quantize import RECOMMENDED_ALSO, quantize_backbone

        also = () if args.int8_backbone_only else RECOMMENDED_ALSO
        int8_out = quantize_backbone(out, args.int8_out or out.with_suffix(".int8.onnx"), [args.int8],
                                     method=args.int8_method, num_images=args.int8_images, also=also)
        print(f"wrote {int8_out} (int8 QDQ backbone+FPN{' + ' + ', '.join(also) if also else ''}, "
              f"{args.int8_method} calibration)")
    if args.tensorrt:
        from clumpdet.export.tensorrt_build import TensorRTUnavailableError, build_engine

        plan = Path(args.plan or out.with_suffix(f".{args.tensorrt}.plan"))
        try:
            build_engine(out, plan, args.tensorrt, calibration=[args.int8] if args.int8 else None,
                         calibration_images=args.int8_images, calibration_method=args.int8_method)
        except TensorRTUnavailableError as err:
            print(err, file=sys.stderr)
            return 3
        print(f"wrote {plan} and its metadata {plan}.json")
    return 0
