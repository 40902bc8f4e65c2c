"""Detection-level parity of a backend against a reference (DESIGN §6). numpy only.

Detections are matched by IoU, never by index: NMS order is unstable on ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from clumpdet.engine.metrics import Detections, Truth, match_all


def match_backends_all(refs: Sequence[Detections], others: Sequence[Detections], *,
                       iou_thresh: float = 0.99) -> dict:
    """Detection-level parity of another backend against a reference, over many images.

    Each image's ``other`` detections are matched one-to-one to the reference ones by IoU
    (``>= iou_thresh``, highest first), greedily by descending *reference* score, same label
    required; never by index (NMS order is unstable on ties).

    Returns
    -------
    dict
        ``n_ref``, ``n_other``, ``n_matched``; ``matched_fraction`` =
        ``n_matched / max(n_ref, n_other)`` (1.0 when both are empty); ``max_box_diff``
        (largest absolute coordinate difference, px) and ``max_score_diff`` over matched pairs:
        0.0 when both sides are empty, ``nan`` when nothing matched otherwise.
    """
    as_truth = [Truth(d.boxes, d.labels) for d in others]
    matches = match_all(refs, as_truth, rule="iou", iou_thresh=iou_thresh, class_aware=True)
    n_ref, n_other = sum(map(len, refs)), sum(map(len, others))
    box_diff, score_diff, n_matched = 0.0, 0.0, 0
    for ref, other, m in zip(refs, others, matches):
        hit = m >= 0
        if hit.any():
            n_matched += int(hit.sum())
            box_diff = max(box_diff, float(np.abs(ref.boxes[hit] - other.boxes[m[hit]]).max()))
            score_diff = max(score_diff, float(np.abs(ref.scores[hit] - other.scores[m[hit]]).max()))
    if n_matched == 0 and max(n_ref, n_other) > 0:
        box_diff = score_diff = math.nan
    return {"n_ref": n_ref, "n_other": n_other, "n_matched": n_matched,
            "matched_fraction": n_matched / max(n_ref, n_other) if max(n_ref, n_other) else 1.0,
            "max_box_diff": box_diff, "max_score_diff": score_diff}


def match_backends(ref: Detections, other: Detections, *, iou_thresh: float = 0.99) -> dict:
    """:func:`match_backends_all` for one image (same keys)."""
    return match_backends_all([ref], [other], iou_thresh=iou_thresh)
