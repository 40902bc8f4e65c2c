"""Test-time proposal budget: the largest cut that keeps the catalogue within |ΔC|, |ΔP| ≤ 0.005.

Run as ``python -m benchmarks.proposal_sweep --checkpoint CKPT --data SET_DIR [--budgets 100 50 25]
[--images 200] [--final-score-thresh T] [--md OUT]``. Each budget (``rpn_post_nms_top_n_test``) is
exported to its own ONNX; all run through the engine on the same FITS cutouts of a simulated set
(truth in ``annotations.json``). Class-agnostic completeness and purity (centre rule, DESIGN §6) are
compared with the preset's own budget; ms/img is the median of repeats interleaved across budgets
in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import sep_baseline
from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import evaluate, format_markdown_table
from clumpdet.engine.readers import read_cutout
from clumpdet.export.onnx_export import export_onnx
from clumpdet.train.checkpoints import load_model

TOLERANCE = 0.005


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 25, 10])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--final-score-thresh", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    model, preset = load_model(args.checkpoint)
    post = preset.postprocess
    if args.final_score_thresh is not None:
        post = dataclasses.replace(post, final_score_thresh=args.final_score_thresh)
    budgets = [preset.rpn_post_nms_top_n_test] + [b for b in args.budgets if b != preset.rpn_post_nms_top_n_test]
    images, truths = sep_baseline.load_truth(args.data)
    images, truths = images[: args.images], truths[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        detectors = {}
        for b in budgets:
            path = export_onnx(model, preset, Path(tmp) / f"p{b}.onnx", postprocess=post, proposals=b)
            detectors[b] = Detector(path)
        spec = detectors[budgets[0]].metadata.input
        batch = np.stack([read_cutout(str(args.data / im["fits_file"]), spec).image for im in images])
        preds = {b: [] for b in budgets}
        times = {b: [] for b in budgets}
        for r in range(args.repeats):
            for b in budgets:
                t0 = time.perf_counter()
                out = [d for i in range(0, len(batch), 8) for d in detectors[b].detect(batch[i:i + 8])]
                times[b].append((time.perf_counter() - t0) * 1000 / len(batch))
                if r == 0:
                    preds[b] = out
    base = evaluate(preds[budgets[0]], truths, score_thresh=post.final_score_thresh, n_boot=0)
    rows = []
    for b in budgets:
        res = evaluate(preds[b], truths, score_thresh=post.final_score_thresh, n_boot=0)
        dc, dp = abs(res.completeness - base.completeness), abs(res.purity - base.purity)
        rows.append({"proposals": b, "completeness": res.completeness, "purity": res.purity, "|dC|": dc,
                     "|dP|": dp, "within_0.005": dc <= TOLERANCE and dp <= TOLERANCE,
                     "ms_per_img": statistics.median(times[b]),
                     "speedup": statistics.median(times[budgets[0]]) / statistics.median(times[b])})
    ok = [r["proposals"] for r in rows if r["within_0.005"]]
    text = (f"Preset {preset.name}, checkpoint {args.checkpoint.name}, {len(images)} cutouts of {args.data}, "
            f"final threshold {post.final_score_thresh}; batch 8, onnxruntime CPU, median of {args.repeats}.\n\n"
            + format_markdown_table(rows, digits=4)
            + f"\n\nsmallest budget within |dC|, |dP| <= {TOLERANCE}: {min(ok)}\n")
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
