"""A model against the classical ``sep`` baseline on a held-out simulated set, at equal purity.

Run as ``python -m benchmarks.model_vs_sep MODEL.onnx SET_DIR [--json OUT] [--md OUT] [--plot OUT]``
on a directory written by ``clumpdet simulate`` (FITS + ``annotations.json``).

1. The model runs through the engine (:class:`clumpdet.engine.detector.Detector`) on the
   set's FITS cutouts, at its own final score threshold (from its metadata).
2. ``sep`` runs as in :mod:`benchmarks.sep_baseline`; its operating point is the *lowest* S/N
   cut at which its class-agnostic purity is at least the model's, i.e. sep's best
   completeness at equal or better purity.
3. Completeness per clump flux-fraction bin for both (class-agnostic, centre rule, DESIGN §6),
   with bootstrap 68% intervals; overall completeness and purity; class-aware figures for the
   model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import sep_baseline
from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import Detections, completeness_in_bins, evaluate, format_markdown_table

BINS = sep_baseline.BINS


def model_detections(detector: Detector, set_dir: Path, images: list[dict[str, Any]],
                     batch_size: int) -> list[Detections]:
    """The engine's detections per image (boxes in the cutout's pixels), in ``images`` order."""
    paths = [str(set_dir / im["fits_file"]) for im in images]
    out = []
    for result in detector.detect_files(paths, batch_size=batch_size):
        if result.error is not None:
            msg = f"{result.source}: {result.error}"
            raise RuntimeError(msg)
        det = result.detections
        dx, dy = result.cutout.offset
        shift = np.array([dx, dy, dx, dy], dtype=det.boxes.dtype)
        out.append(Detections(det.boxes + shift, det.scores, det.labels))
    return out


def sep_at_purity(preds: list[Detections], truths: list, target_purity: float, n_boot: int) -> tuple[float, Any]:
    """Lowest sep score threshold whose class-agnostic purity is ``>= target_purity``."""
    scores = np.unique(np.concatenate([p.scores for p in preds] + [np.zeros(1)]))
    for thresh in scores:  # ascending: the first that qualifies keeps the most detections
        res = evaluate(preds, truths, score_thresh=float(thresh), class_aware=False, n_boot=0)
        if np.isfinite(res.purity) and res.purity >= target_purity:
            return float(thresh), evaluate(preds, truths, score_thresh=float(thresh), n_boot=n_boot)
    return float("inf"), None


def compare(model: Path, set_dir: Path, *, batch_size: int = 8, n_boot: int = 200,
            max_images: int | None = None) -> dict[str, Any]:
    """Run both detectors on (the first ``max_images`` of) a set and score them; JSON-ready dict."""
    images, truths = sep_baseline.load_truth(set_dir)
    images, truths = images[:max_images], truths[:max_images]
    detector = Detector(model)
    model_preds = model_detections(detector, set_dir, images, batch_size)
    thresh = float(detector.score_threshold)
    model_overall = evaluate(model_preds, truths, score_thresh=thresh, n_boot=n_boot)
    model_aware = evaluate(model_preds, truths, score_thresh=thresh, class_aware=True, n_boot=n_boot)
    sep_preds = [sep_baseline.detect(set_dir / im["fits_file"])[0] for im in images]
    sep_thresh, sep_overall = sep_at_purity(sep_preds, truths, model_overall.purity, n_boot)
    model_bins = completeness_in_bins(model_preds, truths, key="flux_fraction", bins=list(BINS),
                                      score_thresh=thresh, n_boot=n_boot)
    sep_bins = completeness_in_bins(sep_preds, truths, key="flux_fraction", bins=list(BINS),
                                    score_thresh=sep_thresh, n_boot=n_boot) if sep_overall else []
    rows = []
    for i, mb in enumerate(model_bins):
        sb = sep_bins[i] if sep_bins else {}
        rows.append({
            "flux_fraction": f"{mb['lo']:.0%}-{mb['hi']:.0%}", "n_clumps": mb["n_true"],
            "model_completeness": mb["completeness"], "model_ci": (mb["ci_low"], mb["ci_high"]),
            "sep_completeness": sb.get("completeness", float("nan")),
            "sep_ci": (sb.get("ci_low", float("nan")), sb.get("ci_high", float("nan"))),
            "model_better": bool(sb) and mb["completeness"] > sb["completeness"],
        })
    return {
        "model": str(model), "set": str(set_dir), "n_images": len(images),
        "model_score_thresh": thresh, "sep_score_thresh": sep_thresh,
        "sep_min_snr": sep_thresh / (1.0 - sep_thresh) if sep_thresh < 1 else float("inf"),
        "model_overall": asdict(model_overall), "model_class_aware": asdict(model_aware),
        "sep_overall": asdict(sep_overall) if sep_overall else None,
        "by_flux_fraction": rows,
    }


def format_report(res: dict[str, Any]) -> str:
    """Markdown: overall figures and the per-bin table."""
    m, s = res["model_overall"], res["sep_overall"]
    lines = [
        f"Held-out set `{res['set']}` ({res['n_images']} cutouts), centre-rule matching, class-agnostic.",
        "",
        f"- model (score >= {res['model_score_thresh']:.2f}): completeness {m['completeness']:.3f}, "
        f"purity {m['purity']:.3f} ({m['n_pred']} detections, {m['n_true']} true objects)",
        f"- model, class-aware: completeness {res['model_class_aware']['completeness']:.3f}, "
        f"purity {res['model_class_aware']['purity']:.3f}",
    ]
    if s:
        lines.append(f"- sep at equal or better purity (S/N >= {res['sep_min_snr']:.2f}): completeness "
                     f"{s['completeness']:.3f}, purity {s['purity']:.3f}")
    else:
        lines.append("- sep never reaches the model's purity at any S/N cut")
    return "\n".join(lines + ["", format_markdown_table(res["by_flux_fraction"], digits=3)])


def plot(res: dict[str, Any], path: Path) -> None:
    """Completeness vs flux fraction for the model and sep, with 68% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["by_flux_fraction"]
    centres = [np.sqrt(lo * hi) for lo, hi in zip(BINS[:-1], BINS[1:])]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, name in (("model", "model"), ("sep", "sep (equal purity)")):
        y = np.array([r[f"{key}_completeness"] for r in rows])
        ci = np.array([r[f"{key}_ci"] for r in rows], dtype=float)
        ax.errorbar(centres, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(list(BINS), [f"{b:.0%}" for b in BINS])
    ax.minorticks_off()
    ax.set_xlabel("clump flux fraction (r band; bin edges)")
    ax.set_ylabel("completeness")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--max-images", type=int, default=None, help="use the first N cutouts only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    res = compare(args.model, args.set_dir, batch_size=args.batch_size, n_boot=args.n_boot,
                  max_images=args.max_images)
    report = format_report(res)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    if args.md:
        args.md.write_text(report + "\n")
    if args.plot:
        plot(res, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
