"""INT8 (QDQ backbone + FPN) versus float32 on CPU: catalogue-level quality and speed.

Validates first, then times (STYLE 11):

1. exports the float32 model (``clumpdet export``) unless ``--onnx`` is given;
2. quantises it with :func:`clumpdet.export.quantize.quantize_backbone`, calibrated on
   the first ``--calib-images`` PNG cutouts of ``--data`` (read by the engine's readers);
3. runs both models through :class:`clumpdet.engine.detector.Detector` on
   ``--eval-images`` *other* cutouts and scores each against the simulator's truth
   (``annotations.json``, boxes clipped to the model's crop window as in training
   validation) with :func:`clumpdet.engine.metrics.evaluate` at the model's
   ``final_score_thresh``; prints completeness, purity and |Δ| (target <= 0.01), and
   the detection-level agreement of int8 with float32;
4. times batch-1 inference, float32 and int8 interleaved in one process, and reports
   the median over repeats of the mean ms/image.

Example::

    .venv/bin/python benchmarks/int8_check.py --checkpoint runs/native-sim/best.safetensors \\
        --data data/sim1000 --out benchmarks/results/int8_native_$(date +%F).md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _truths(data: Path, names: list[str], meta) -> list:
    from clumpdet.engine.metrics import Truth
    from clumpdet.train.data.coco import coco_boxes_labels, load_coco
    from clumpdet.train.data.crop import clip_boxes, crop_window

    coco = load_coco(data / "annotations.json")
    by_id = coco_boxes_labels(coco, meta.class_names)
    ids = {Path(im["file_name"]).name: im["id"] for im in coco["images"]}
    window = crop_window(meta.input)
    out = []
    for name in names:
        boxes, labels = by_id[ids[name]]
        boxes, labels, _ = clip_boxes(boxes, labels, window)
        out.append(Truth(boxes=boxes.astype(np.float64), labels=labels))
    return out


def _time(detectors: dict, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of the mean ms per image; the models alternate within each repeat."""
    for det in detectors.values():  # warm-up
        det.detect(batches[0])
    samples: dict[str, list[float]] = {k: [] for k in detectors}
    for _ in range(repeats):
        for key, det in detectors.items():
            start = time.perf_counter()
            for b in batches:
                det.detect(b)
            samples[key].append(1e3 * (time.perf_counter() - start) / sum(len(b) for b in batches))
    return {k: statistics.median(v) for k, v in samples.items()} | {f"{k}_all": v for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/native-sim/best.safetensors")
    parser.add_argument("--preset", default="native")
    parser.add_argument("--onnx", default=None, help="an existing float32 export (skips the export step)")
    parser.add_argument("--data", default="data/sim1000", help="simulator output: png/ and annotations.json")
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--eval-start", type=int, default=100,
                        help="first evaluation image (after the calibration set)")
    parser.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for both models")
    parser.add_argument("--workdir", default="/tmp/clumpdet-int8-check")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    args = parser.parse_args(argv)

    from clumpdet.engine.cli import main as cli_main
    from clumpdet.engine.detector import Detector
    from clumpdet.engine.metrics import evaluate
    from clumpdet.engine.parity import match_backends_all
    from clumpdet.engine.readers import read_cutout
    from clumpdet.export.quantize import quantize_backbone

    data, work = Path(args.data), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"# INT8 (QDQ backbone+FPN) vs float32 — {args.preset}, {datetime.date.today()}", ""]
    fp32 = Path(args.onnx) if args.onnx else work / f"{args.preset}.onnx"
    if not args.onnx:
        rc = cli_main(["export", "--preset", args.preset, "--checkpoint", args.checkpoint, "--out", str(fp32)])
        if rc:
            return rc
    pngs = sorted((data / "png").glob("*.png"))
    calib = pngs[: args.calib_images]
    evals = pngs[args.eval_start : args.eval_start + args.eval_images]
    if set(calib) & set(evals) or len(evals) < args.eval_images:
        msg = "int8_check.py: calibration and evaluation images overlap or too few images"
        raise ValueError(msg)
    listing = work / "calib.txt"
    listing.write_text("".join(f"{p}\n" for p in calib))
    start = time.perf_counter()
    int8 = quantize_backbone(fp32, work / f"{args.preset}.int8.onnx", [f"@{listing}"], method=args.method,
                             num_images=args.calib_images)
    quant_s = time.perf_counter() - start

    dets = {k: Detector(p, intra_op_threads=args.threads, inter_op_threads=1)
            for k, p in (("fp32", fp32), ("int8", int8))}
    meta = dets["fp32"].metadata
    cutouts = [read_cutout(str(p), meta.input) for p in evals]
    batches = [c.image[None] for c in cutouts]
    truths = _truths(data, [p.name for p in evals], meta)
    preds = {k: [d.detect(b)[0] for b in batches] for k, d in dets.items()}
    if any(c.offset != (0, 0) for c in cutouts):
        msg = "int8_check.py: evaluation cutouts are not at the model's input size; truth frames would differ"
        raise ValueError(msg)
    thresh = meta.postprocess.final_score_thresh
    cp = {k: evaluate(v, truths, score_thresh=thresh, n_boot=0) for k, v in preds.items()}
    agree = match_backends_all(preds["fp32"], preds["int8"], iou_thresh=0.5)
    timing = _time(dets, batches, args.repeats)

    dc = abs(cp["int8"].completeness - cp["fp32"].completeness)
    dp = abs(cp["int8"].purity - cp["fp32"].purity)
    sizes = {k: os.path.getsize(d.model_path) / 1e6 for k, d in dets.items()}
    lines += [
        f"- checkpoint `{args.checkpoint}`{' (export given: ' + str(fp32) + ')' if args.onnx else ''}; "
        f"exporter: `{dets['int8'].metadata.exporter}`",
        f"- calibration: {len(calib)} PNGs `{calib[0].name}`..`{calib[-1].name}`, method {args.method} "
        f"({quant_s:.1f} s); evaluation: {len(evals)} other PNGs `{evals[0].name}`..`{evals[-1].name}`",
        f"- truth: `{data}/annotations.json` clipped to the crop window {meta.input.crop}; "
        f"`evaluate(score_thresh={thresh})`, centre rule, class-agnostic",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, onnxruntime "
        f"{__import__('onnxruntime').__version__}, {args.threads} intra-op thread(s); batch 1; "
        "**noisy: a background training shared the CPU**",
        "",
        "| model | MB | completeness | purity | detections | matched | ms/img (median) | repeats (ms/img) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in ("fp32", "int8"):
        r = cp[k]
        reps = ", ".join(f"{v:.1f}" for v in timing[f"{k}_all"])
        lines.append(f"| {k} | {sizes[k]:.1f} | {r.completeness:.4f} | {r.purity:.4f} | {r.n_pred} | {r.n_matched} "
                     f"| {timing[k]:.1f} | {reps} |")
    verdict = "PASS" if dc <= 0.01 and dp <= 0.01 else "FAIL"
    speed = timing["fp32"] / timing["int8"]
    lines += [
        "",
        f"- |ΔC| = {dc:.4f}, |ΔP| = {dp:.4f} (target <= 0.01): **{verdict}**",
        f"- int8 vs fp32 at detection level (detections with score >= {thresh:g}, IoU >= 0.5, same label): "
        f"matched fraction {agree['matched_fraction']:.4f} "
        f"({agree['n_matched']}/{agree['n_ref']} fp32, {agree['n_other']} int8), max |Δscore| "
        f"{agree['max_score_diff']:.4f}, max |Δbox| {agree['max_box_diff']:.2f} px",
        f"- speed: int8 is {speed:.2f}x the fp32 throughput ("
        + ("faster" if speed > 1 else "**slower**") + " on this CPU)",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
