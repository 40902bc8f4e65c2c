"""COCO AP/AR through faster-coco-eval on hand-worked cases (DESIGN §6)."""

import math

import numpy as np
import pytest

pytest.importorskip("faster_coco_eval", reason="coco_ap needs the optional faster-coco-eval")

from clumpdet.engine.coco_eval import coco_ap  # noqa: E402
from clumpdet.engine.metrics import Detections, Truth  # noqa: E402

NAMES = ("background", "clump", "odd_clump")
TRUTHS = [
    Truth(np.array([[10, 10, 30, 30], [50, 50, 60, 62]], dtype=float), [1, 2]),
    Truth(np.array([[5, 5, 15, 15], [70, 20, 90, 36]], dtype=float), [1, 1]),
]


def perfect():
    return [Detections(t.boxes, np.linspace(0.9, 0.6, len(t)), t.labels) for t in TRUTHS]


def test_perfect_predictions_score_one():
    out = coco_ap(perfect(), TRUTHS, class_names=NAMES)
    assert set(out) == {"AP", "AP50", "AP75", "AR100"}
    assert out == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR100": 1.0})


def test_missing_box_lowers_ap_and_recall():
    preds = perfect()
    preds[1] = Detections(preds[1].boxes[:1], preds[1].scores[:1], preds[1].labels[:1])  # drop one clump
    out = coco_ap(preds, TRUTHS, class_names=NAMES, per_class=True)
    # clump: 2 of 3 found at precision 1 -> 67 of 101 recall points; odd_clump: perfect.
    assert out["AP/clump"] == pytest.approx(67 / 101)
    assert out["AP/odd_clump"] == pytest.approx(1.0)
    assert out["AP"] == pytest.approx((67 / 101 + 1) / 2)
    assert out["AR100"] == pytest.approx((2 / 3 + 1) / 2)


def test_shifted_boxes_pass_ap50_but_fail_ap75():
    # Shift every box by 1/6 of its width: IoU = (5/6) / (7/6) ~ 0.71, between 0.5 and 0.75.
    preds = []
    for t in TRUTHS:
        shift = (t.boxes[:, 2:3] - t.boxes[:, 0:1]) / 6
        preds.append(Detections(t.boxes + np.hstack([shift, 0 * shift, shift, 0 * shift]), [0.9] * len(t), t.labels))
    out = coco_ap(preds, TRUTHS, class_names=NAMES)
    assert out["AP50"] == pytest.approx(1.0)
    assert out["AP75"] == 0.0
    assert 0.0 < out["AP"] < 1.0


def test_empty_cases_and_bad_labels():
    none = [Detections(np.zeros((0, 4)), [], []) for _ in TRUTHS]
    out = coco_ap(none, TRUTHS, class_names=NAMES)
    assert out == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0}
    no_truth = [Truth(np.zeros((0, 4)), []) for _ in TRUTHS]
    assert all(math.isnan(v) for v in coco_ap(perfect(), no_truth, class_names=NAMES).values())
    with pytest.raises(ValueError, match="coco_eval.py: image 0 has prediction labels outside 1..2"):
        coco_ap([Detections(np.array([[0, 0, 1, 1.0]]), [0.5], [3]), none[1]], TRUTHS, class_names=NAMES)
    with pytest.raises(ValueError, match="2 prediction sets but 1 truth sets"):
        coco_ap(perfect(), TRUTHS[:1], class_names=NAMES)
