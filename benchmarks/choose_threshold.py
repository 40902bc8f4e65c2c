"""Choose a model's operating point (final score threshold) on a *validation* set.

Run as ``python -m benchmarks.choose_threshold MODEL.onnx VAL_DIR [--md OUT]`` where
``MODEL.onnx`` was exported with a low final threshold (``clumpdet export ...
--final-score-thresh 0.05``) and ``VAL_DIR`` was written by ``clumpdet simulate`` with a seed
used neither for training nor for the held-out test. It prints class-agnostic completeness,
purity and F1 (centre rule, DESIGN §6) for thresholds 0.05, 0.10, ... 0.95 and the one with the
highest F1; re-export with that value. Never run it on the test set you report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import sep_baseline
from benchmarks.model_vs_sep import model_detections
from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import evaluate, format_markdown_table


def sweep(model: Path, set_dir: Path, thresholds: np.ndarray, batch_size: int = 8) -> list[dict]:
    """One row per threshold: ``threshold, completeness, purity, f1, n_pred``."""
    detector = Detector(model)
    floor = detector.score_threshold
    if thresholds.min() < floor:
        msg = f"{model}: exported with final threshold {floor}; cannot sweep below it"
        raise ValueError(msg)
    images, truths = sep_baseline.load_truth(set_dir)
    preds = model_detections(detector, set_dir, images, batch_size)
    rows = []
    for t in thresholds:
        res = evaluate(preds, truths, score_thresh=float(t), n_boot=0)
        c, p = res.completeness, res.purity
        f1 = 2 * c * p / (c + p) if np.isfinite(p) and c + p > 0 else float("nan")
        rows.append({"threshold": round(float(t), 4), "completeness": c, "purity": p, "f1": f1,
                     "n_pred": res.n_pred})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--md", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    rows = sweep(args.model, args.set_dir, np.arange(0.05, 0.951, 0.05))
    best = max((r for r in rows if np.isfinite(r["f1"])), key=lambda r: r["f1"])
    text = (format_markdown_table(rows, digits=3)
            + f"\n\nhighest F1 {best['f1']:.3f} at threshold {best['threshold']:.2f} on {args.set_dir}\n")
    print(text)
    if args.md:
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
