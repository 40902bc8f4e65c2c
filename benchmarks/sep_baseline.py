"""Classical baseline: SExtractor-style detection with ``sep`` on a simulated set.

Run as ``python -m benchmarks.sep_baseline DIR [--json OUT.json]`` on a
directory written by ``clumpdet simulate``.

What it does, per cutout (r band, the band the flux fractions are defined in):

1. ``sep.Background`` with sep's/SExtractor's defaults (64x64 px mesh, 3x3
   median filter), subtracted.
2. ``sep.extract`` with SExtractor's default detection settings, untuned:
   threshold 1.5 x the background RMS map, ``minarea`` 5, sep's default 3x3
   smoothing kernel, deblending with 32 levels and ``deblend_cont`` 0.005.
3. Keep sources whose centre lies in the central region (``[100, 300)``).
4. The nucleus rule: the cutout is centred on the galaxy, and the truth holds no
   clump within one truth-box side (``2 x FWHM``) of the nucleus. The single
   source nearest the cutout centre, if it lies within ``2 x`` the PSF FWHM of
   it, is the galaxy/bulge detection and is dropped. Every other source counts
   (a detection of an arm knot, bar end or noise peak costs purity). The JSON
   also reports purity with the nucleus kept.
5. Boxes: squares of side ``2 x max(PSF FWHM, 2.3548 sqrt(a b))`` (the truth
   rule, with sep's second moments standing in for the observed FWHM), centred
   on sep's barycentre; pixel ``i`` spans ``[i, i + 1)``, so ``x_box = x_sep + 0.5``.
6. Score (sep has none): ``snr / (1 + snr)`` with ``snr = flux / (rms sqrt(npix))``,
   a monotonic map of the isophotal S/N to (0, 1). Three operating points are
   reported: every sep detection (``score_thresh = 0``; SExtractor's 1.5 sigma
   per-pixel threshold lets through many noise peaks, hence low purity), and
   isophotal S/N >= 5 and >= 10 (``score_thresh = s / (1 + s)``).

All sources are labelled ``clump`` (1); matching is class-agnostic with
:func:`clumpdet.engine.metrics.evaluate` (centre rule). Completeness per
flux-fraction bin counts clumps only (stars are matched but not binned).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import sep
from astropy.io import fits

from benchmarks.bench_data import coco_truths
from benchmarks.bench_quality import BINS
from clumpdet.engine.metrics import Detections, Truth, completeness_in_bins, evaluate

MIN_SNRS = (0.0, 5.0, 10.0)
SEP_CONFIG = {
    "band": "R", "bw": 64, "bh": 64, "fw": 3, "fh": 3, "thresh_sigma": 1.5, "minarea": 5,
    "deblend_nthresh": 32, "deblend_cont": 0.005, "central": (100, 300),
    "nucleus_radius_fwhm": 2.0, "box_fwhm_factor": 2.0,
}


def detect(path: Path, cfg: dict[str, Any] = SEP_CONFIG) -> tuple[Detections, Detections]:
    """Run sep on one FITS cutout.

    Returns
    -------
    (Detections, Detections)
        Without and with the nucleus detection; boxes ``(P, 4)`` float64
        ``x1, y1, x2, y2`` in image pixels, labels all 1.
    """
    with fits.open(path) as hdul:
        hdu = hdul[cfg["band"]]
        data = np.ascontiguousarray(hdu.data, dtype=np.float64)
        fwhm_psf = float(hdu.header["PSF_FWHM"]) / (abs(float(hdu.header["CDELT2"])) * 3600.0)
    bkg = sep.Background(data, bw=cfg["bw"], bh=cfg["bh"], fw=cfg["fw"], fh=cfg["fh"])
    sub = data - bkg.back()
    objs = sep.extract(sub, cfg["thresh_sigma"], err=bkg.rms(), minarea=cfg["minarea"],
                       deblend_nthresh=cfg["deblend_nthresh"], deblend_cont=cfg["deblend_cont"])
    x, y = objs["x"] + 0.5, objs["y"] + 0.5
    lo, hi = cfg["central"]
    keep = (x >= lo) & (x < hi) & (y >= lo) & (y < hi)
    objs, x, y = objs[keep], x[keep], y[keep]
    snr = objs["flux"] / (bkg.globalrms * np.sqrt(np.maximum(objs["npix"], 1)))
    score = np.clip(snr, 0.0, None) / (1.0 + np.clip(snr, 0.0, None))
    fwhm = np.maximum(fwhm_psf, 2.3548 * np.sqrt(np.clip(objs["a"] * objs["b"], 0.0, None)))
    h = 0.5 * cfg["box_fwhm_factor"] * fwhm
    boxes = np.stack([x - h, y - h, x + h, y + h], axis=1) if len(x) else np.zeros((0, 4))
    full = Detections(boxes, score, np.ones(len(x), dtype=np.int64))
    cx = cy = data.shape[0] / 2.0
    d = np.hypot(x - cx, y - cy)
    drop = np.zeros(len(x), dtype=bool)
    if len(x) and d.min() <= cfg["nucleus_radius_fwhm"] * fwhm_psf:
        drop[int(np.argmin(d))] = True
    no_nuc = Detections(boxes[~drop], score[~drop], full.labels[~drop])
    return no_nuc, full


def load_truth(set_dir: Path) -> tuple[list[dict[str, Any]], list[Truth]]:
    """Images (COCO records) and per-image :class:`Truth` from ``annotations.json``.

    ``values["flux_fraction"]`` is the clump flux fraction, ``nan`` for stars
    (so that per-bin completeness counts clumps only).
    """
    coco = json.loads((set_dir / "annotations.json").read_text())
    _, _, truths = coco_truths(coco, set_dir)
    return coco["images"], truths


def _score_thresh(min_snr: float) -> float:
    return min_snr / (1.0 + min_snr)


def run_baseline(set_dir: str | Path, n_boot: int = 200, min_snrs: tuple[float, ...] = MIN_SNRS) -> dict[str, Any]:
    """Run sep over a simulated set and score it; returns a JSON-ready dict.

    One operating point per ``min_snr`` (score threshold ``min_snr / (1 + min_snr)``);
    ``min_snr = 0`` keeps every sep detection.
    """
    root = Path(set_dir)
    images, truths = load_truth(root)
    preds, preds_nuc = [], []
    for im in images:
        a, b = detect(root / im["fits_file"])
        preds.append(a)
        preds_nuc.append(b)
    points = []
    for min_snr in min_snrs:
        kw = {"score_thresh": _score_thresh(min_snr), "class_aware": False, "n_boot": n_boot}
        points.append({
            "min_snr": min_snr, "score_thresh": kw["score_thresh"],
            "overall": asdict(evaluate(preds, truths, **kw)),
            "overall_nucleus_kept": asdict(evaluate(preds_nuc, truths, **kw)),
            "clump_completeness_by_flux_fraction":
                completeness_in_bins(preds, truths, key="flux_fraction", bins=list(BINS), **kw),
            "clump_completeness_under_over_5pct":
                completeness_in_bins(preds, truths, key="flux_fraction", bins=[0.01, 0.05, 0.5], **kw),
        })
    return {
        "set": str(root), "n_images": len(images), "sep_version": sep.__version__,
        "config": SEP_CONFIG, "score": "snr / (1 + snr), snr = isophotal flux / (rms sqrt(npix))",
        "operating_points": points,
    }


def format_report(res: dict[str, Any]) -> str:
    """Human-readable tables of :func:`run_baseline`'s result."""
    lines = [f"sep {res['sep_version']} baseline on {res['n_images']} cutouts ({res['set']})"]
    for pt in res["operating_points"]:
        lines += ["", f"operating point: isophotal S/N >= {pt['min_snr']:g} (score >= {pt['score_thresh']:.3f})",
                  "| clump flux fraction | n clumps | matched | completeness | 68% CI |", "|---|---|---|---|---|"]
        for r in pt["clump_completeness_by_flux_fraction"] + pt["clump_completeness_under_over_5pct"]:
            lines.append(f"| {100 * r['lo']:.0f}-{100 * r['hi']:.0f}% | {r['n_true']} | {r['n_matched']} | "
                         f"{r['completeness']:.3f} | {r['ci_low']:.3f}-{r['ci_high']:.3f} |")
        for name in ("overall", "overall_nucleus_kept"):
            m = pt[name]
            lines.append(f"{name}: completeness {m['completeness']:.3f} ({m['n_matched']}/{m['n_true']}), "
                         f"purity {m['purity']:.3f} ({m['n_matched']}/{m['n_pred']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_dir", help="directory written by 'clumpdet simulate'")
    parser.add_argument("--json", help="write the full result to this JSON file")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (default 200)")
    args = parser.parse_args(argv)
    res = run_baseline(args.set_dir, n_boot=args.n_boot)
    print(format_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
