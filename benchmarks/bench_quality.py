"""Validation before timing: backend parity against the reference, and quality against truth.

Parity (DESIGN §6), against the PyTorch reference on the same images:

* detection level: :func:`clumpdet.engine.parity.match_backends_all` (one-to-one
  by IoU >= ``det_iou``, same label, never by index);
* catalogue level (images with truth): ``|Δ completeness|`` and ``|Δ purity|``
  (class-agnostic, centre rule, at the model's final score threshold).

Verdict: fp32 rows need ``matched_fraction >= det_match_min`` *and* the catalogue
deltas within ``tol["fp32"]``; fp16/int8 rows need the deltas within
``tol["int8"]`` (their boxes move, so the detection level is reported only).
Without truth, fp16/int8 fall back to the detection level with ``det_match_min_lowp``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from clumpdet.engine.metrics import Detections, Truth, completeness_in_bins, evaluate
from clumpdet.engine.parity import match_backends_all

#: Clump flux-fraction bins (as the sep baseline).
BINS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)
TOL = {"fp32": 0.005, "fp16": 0.01, "int8": 0.01}
DET_IOU = 0.9
DET_MATCH_MIN = 0.99
DET_MATCH_MIN_LOWP = 0.9


def quality(dets: list[Detections], truths: list[Truth], score_thresh: float, n_boot: int) -> dict:
    """Class-agnostic and class-aware completeness/purity, and completeness per flux-fraction bin."""
    agn = evaluate(dets, truths, score_thresh=score_thresh, class_aware=False, n_boot=n_boot)
    awa = evaluate(dets, truths, score_thresh=score_thresh, class_aware=True, n_boot=n_boot)
    return {"completeness": agn.completeness, "purity": agn.purity, "class_agnostic": asdict(agn),
            "class_aware": asdict(awa), "score_thresh": score_thresh,
            "completeness_by_flux_fraction": completeness_in_bins(
                dets, truths, key="flux_fraction", bins=list(BINS), score_thresh=score_thresh, n_boot=n_boot)}


def parity(ref: list[Detections], other: list[Detections], precision: str, ref_quality: dict | None,
           other_quality: dict | None) -> dict:
    """Detection- and catalogue-level parity of ``other`` against ``ref``, with a PASS/FAIL verdict."""
    det = match_backends_all(ref, other, iou_thresh=DET_IOU)
    out: dict = {"detection": det, "precision": precision, "tolerance": TOL.get(precision, TOL["int8"])}
    reasons = []
    lowp = precision != "fp32"
    if ref_quality is not None and other_quality is not None:
        dc = abs(ref_quality["completeness"] - other_quality["completeness"])
        dp = abs(ref_quality["purity"] - other_quality["purity"])
        out["abs_delta_completeness"], out["abs_delta_purity"] = dc, dp
        for label, v in (("|dC|", dc), ("|dP|", dp)):
            if not np.isfinite(v) and not (np.isnan(ref_quality["purity"]) and np.isnan(other_quality["purity"])):
                reasons.append(f"{label} undefined")
            elif np.isfinite(v) and v > out["tolerance"]:
                reasons.append(f"{label} {v:.4f} > {out['tolerance']}")
    need = DET_MATCH_MIN_LOWP if lowp else DET_MATCH_MIN
    if (not lowp or ref_quality is None) and det["matched_fraction"] < need:
        reasons.append(f"detection match {det['matched_fraction']:.3f} < {need}")
    out["verdict"] = "FAIL" if reasons else "PASS"
    out["reasons"] = reasons
    return out


def sep_quality(fits_paths: list[str], truths: list[Truth], n_boot: int, plot_min_snr: float = 5.0) -> dict:
    """The ``sep`` baseline (:mod:`benchmarks.sep_baseline`) on the same images: its three operating points."""
    from benchmarks.sep_baseline import MIN_SNRS, _score_thresh, detect

    preds = [detect(p)[0] for p in fits_paths]
    points = []
    for s in MIN_SNRS:
        r = evaluate(preds, truths, score_thresh=_score_thresh(s), class_aware=False, n_boot=n_boot)
        points.append({"min_snr": s, "completeness": r.completeness, "purity": r.purity, "detail": asdict(r)})
    bins = completeness_in_bins(preds, truths, key="flux_fraction", bins=list(BINS),
                                score_thresh=_score_thresh(plot_min_snr), n_boot=n_boot)
    return {"operating_points": points, "plot_min_snr": plot_min_snr, "completeness_by_flux_fraction": bins}
