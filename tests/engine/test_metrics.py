"""Matching, completeness/purity, bootstrap and backend parity on hand-worked cases (DESIGN §6)."""

import math

import numpy as np
import pytest

from clumpdet.engine import metrics
from clumpdet.engine.metrics import (
    Detections,
    Truth,
    completeness_in_bins,
    detections_from_batch,
    evaluate,
    format_markdown_table,
    match,
    match_all,
)
from clumpdet.engine.parity import match_backends, match_backends_all

EMPTY_BOXES = np.zeros((0, 4))


def dets(boxes, scores, labels=None):
    labels = [1] * len(scores) if labels is None else labels
    return Detections(np.array(boxes, dtype=float).reshape(-1, 4), scores, labels)


def truth(boxes, labels=None, **values):
    labels = [1] * len(boxes) if labels is None else labels
    return Truth(np.array(boxes, dtype=float).reshape(-1, 4), labels, values)


def reference_match(pred, tru, rule, iou_thresh, class_aware):
    """Plain-Python greedy matcher, written independently of the vectorised one."""
    order = sorted(range(len(pred)), key=lambda i: (-pred.scores[i], i))
    taken, out = set(), [-1] * len(pred)
    for i in order:
        px1, py1, px2, py2 = pred.boxes[i]
        best, best_q = -1, -math.inf
        for j in range(len(tru)):
            if j in taken or (class_aware and pred.labels[i] != tru.labels[j]):
                continue
            tx1, ty1, tx2, ty2 = tru.boxes[j]
            if rule == "centre":
                dx, dy = abs((px1 + px2) / 2 - (tx1 + tx2) / 2), abs((py1 + py2) / 2 - (ty1 + ty2) / 2)
                ok, q = dx <= (tx2 - tx1) / 2 and dy <= (ty2 - ty1) / 2, -math.hypot(dx, dy)
            else:
                inter = max(0, min(px2, tx2) - max(px1, tx1)) * max(0, min(py2, ty2) - max(py1, ty1))
                union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
                q = inter / union
                ok = q >= iou_thresh
            if ok and q > best_q:
                best, best_q = j, q
        if best >= 0:
            taken.add(best)
            out[i] = best
    return np.array(out, dtype=np.int64)


def random_images(n_images, seed, n_truth=20, n_extra=5):
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(n_images):
        t = rng.integers(0, n_truth + 1)
        xy, half = rng.uniform(0, 100, (t, 2)), rng.uniform(2, 6, (t, 1))
        tb = np.hstack([xy - half, xy + half])
        truths.append(Truth(tb, rng.integers(1, 3, t), {"flux_fraction": rng.uniform(0, 0.5, t)}))
        found = tb[rng.random(t) < 0.7]
        xy, half = rng.uniform(0, 100, (n_extra, 2)), rng.uniform(2, 6, (n_extra, 1))
        pb = np.vstack([found + rng.normal(0, 1.5, found.shape), np.hstack([xy - half, xy + half])])
        scores = np.round(rng.uniform(0, 1, len(pb)), 1)  # coarse scores: many ties
        preds.append(Detections(pb, scores, rng.integers(1, 3, len(pb))))
    return preds, truths


def test_no_truth():
    res = evaluate([dets([[0, 0, 4, 4], [5, 5, 9, 9]], [0.9, 0.8])], [truth(EMPTY_BOXES)], score_thresh=0.3)
    assert math.isnan(res.completeness) and res.purity == 0.0
    assert (res.n_true, res.n_pred, res.n_matched) == (0, 2, 0)
    assert all(math.isnan(x) for x in res.completeness_ci) and res.purity_ci == (0.0, 0.0)


def test_no_predictions():
    res = evaluate([dets(EMPTY_BOXES, [])], [truth([[0, 0, 4, 4], [5, 5, 9, 9]])], score_thresh=0.3)
    assert res.completeness == 0.0 and math.isnan(res.purity)
    assert (res.n_true, res.n_pred, res.n_matched) == (2, 0, 0)
    assert match(dets(EMPTY_BOXES, []), truth([[0, 0, 4, 4]])).shape == (0,)


def test_both_empty_and_no_images():
    for preds, truths in (([dets(EMPTY_BOXES, [])], [truth(EMPTY_BOXES)]), ([], [])):
        res = evaluate(preds, truths, score_thresh=0.3)
        assert math.isnan(res.completeness) and math.isnan(res.purity)
        assert (res.n_true, res.n_pred, res.n_matched) == (0, 0, 0)
        assert all(math.isnan(x) for x in res.completeness_ci + res.purity_ci)


def test_duplicate_predictions_on_one_truth():
    pred = dets([[0, 0, 10, 10], [0.5, 0.5, 10.5, 10.5]], [0.8, 0.9])
    tru = truth([[0, 0, 10, 10]])
    for rule in ("centre", "iou"):
        assert match(pred, tru, rule=rule).tolist() == [-1, 0]  # the higher score wins
    res = evaluate([pred], [tru], score_thresh=0.3)
    assert (res.completeness, res.purity, res.n_matched) == (1.0, 0.5, 1)


def test_score_ties_go_to_the_earlier_index_deterministically():
    # A (centre 5, 5) may take t0 (centre 4, 4) or t1 (centre 8, 8) and prefers t0;
    # B (centre 3, 3) may take only t0.  Equal scores: whoever comes first goes first.
    a, b = [3, 3, 7, 7], [1, 1, 5, 5]
    tru = truth([[1, 1, 7, 7], [5, 5, 11, 11]])
    assert match(dets([a, b], [0.5, 0.5]), tru).tolist() == [0, -1]
    assert match(dets([b, a], [0.5, 0.5]), tru).tolist() == [0, 1]
    # Equidistant truths: the lower truth index wins.
    assert match(dets([[4, 4, 6, 6]], [0.5]), truth([[5, 0, 15, 10], [-5, 0, 5, 10]])).tolist() == [0]
    preds, truths = random_images(30, seed=3)
    first = match_all(preds, truths)
    assert all(np.array_equal(x, y) for x, y in zip(first, match_all(preds, truths)))


def test_centre_and_iou_rules_disagree():
    tru = truth([[0, 0, 20, 20], [8.5, 8.5, 12.5, 12.5]])  # centres (10, 10) and (10.5, 10.5)
    pred = dets([[8, 8, 12, 12]], [0.9])  # centre (10, 10); IoU 0.04 with t0, 12.25/19.75 with t1
    assert match(pred, tru, rule="centre").tolist() == [0]  # closest centre
    assert match(pred, tru, rule="iou").tolist() == [1]  # highest IoU
    # Centre on the truth's edge still counts (closed box); IoU 36/208 does not reach 0.5.
    edge = dets([[4, 4, 16, 16]], [0.9])
    one = truth([[0, 0, 10, 10]])
    assert match(edge, one, rule="centre").tolist() == [0]
    assert match(edge, one, rule="iou").tolist() == [-1]
    assert match(edge, one, rule="iou", iou_thresh=0.17).tolist() == [0]
    assert match(dets([[4.01, 4, 16.01, 16]], [0.9]), one, rule="centre").tolist() == [-1]


def test_class_aware_and_agnostic():
    tru = truth([[0, 0, 10, 10], [20, 20, 30, 30]], labels=[1, 2])
    pred = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], labels=[2, 2])
    assert match(pred, tru).tolist() == [0, 1]
    assert match(pred, tru, class_aware=True).tolist() == [-1, 1]
    res = evaluate([pred], [tru], score_thresh=0.3, class_aware=True)
    assert (res.completeness, res.purity) == (0.5, 0.5)


def test_score_thresh_drops_low_scores_first():
    tru = truth([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    pred = dets([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]], [0.29, 0.3, 0.9])
    res = evaluate([pred], [tru], score_thresh=0.3)
    assert (res.n_pred, res.n_matched) == (2, 1)  # 0.3 is kept (>=), 0.29 is not
    assert (res.completeness, res.purity) == pytest.approx((1 / 3, 0.5))
    low = evaluate([pred], [tru], score_thresh=0.0)
    assert (low.n_pred, low.n_matched) == (3, 2)


@pytest.mark.parametrize("rule", ["centre", "iou"])
@pytest.mark.parametrize("class_aware", [False, True])
def test_vectorised_matches_plain_python(rule, class_aware, monkeypatch):
    preds, truths = random_images(60, seed=1)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 2000)  # force many chunks
    got = match_all(preds, truths, rule=rule, iou_thresh=0.3, class_aware=class_aware)
    for p, t, g in zip(preds, truths, got):
        assert np.array_equal(g, reference_match(p, t, rule, 0.3, class_aware))
        assert len(set(g[g >= 0].tolist())) == np.count_nonzero(g >= 0)  # one-to-one


def test_bootstrap_brackets_point_and_is_deterministic_by_seed():
    preds, truths = random_images(80, seed=2)
    res = evaluate(preds, truths, score_thresh=0.3, n_boot=500, seed=7)
    assert res.completeness_ci[0] < res.completeness < res.completeness_ci[1]
    assert res.purity_ci[0] < res.purity < res.purity_ci[1]
    assert res.completeness_ci[1] - res.completeness_ci[0] < 0.2
    assert evaluate(preds, truths, score_thresh=0.3, n_boot=500, seed=7) == res
    other = evaluate(preds, truths, score_thresh=0.3, n_boot=500, seed=8)
    assert other.completeness == res.completeness and other.completeness_ci != res.completeness_ci
    none = evaluate(preds, truths, score_thresh=0.3, n_boot=0)
    assert none.purity == res.purity and all(math.isnan(x) for x in none.purity_ci)
    with pytest.raises(ValueError, match="n_boot"):
        evaluate(preds, truths, score_thresh=0.3, n_boot=-1)


def test_completeness_in_bins_worked_example():
    truths = [
        truth([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], flux_fraction=[0.01, 0.1, 0.6]),
        truth([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], flux_fraction=[0.05, 0.4, np.nan]),
        truth(EMPTY_BOXES),
    ]
    preds = [
        dets([[0, 0, 10, 10], [40, 40, 50, 50]], [0.9, 0.9]),  # finds 0.01 and 0.6 (out of range)
        dets([[20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10]], [0.9, 0.9, 0.1]),  # 0.4, nan; 0.05 too low
        dets([[0, 0, 10, 10]], [0.9]),
    ]
    rows = completeness_in_bins(preds, truths, key="flux_fraction", bins=[0, 0.1, 0.5], score_thresh=0.3,
                                n_boot=200)
    assert [(r["lo"], r["hi"], r["n_true"], r["n_matched"]) for r in rows] == [(0, 0.1, 2, 1), (0.1, 0.5, 2, 1)]
    assert [r["completeness"] for r in rows] == [0.5, 0.5]
    assert all(r["ci_low"] <= r["completeness"] <= r["ci_high"] for r in rows)
    assert set(rows[0]) == {"lo", "hi", "n_true", "n_matched", "completeness", "ci_low", "ci_high"}
    with pytest.raises(ValueError, match="no values\\['size'\\]"):
        completeness_in_bins(preds, truths, key="size", bins=[0, 1], score_thresh=0.3)
    with pytest.raises(ValueError, match="strictly increasing"):
        completeness_in_bins(preds, truths, key="flux_fraction", bins=[0.5, 0.1], score_thresh=0.3)


def test_match_backends_is_order_free_and_reports_diffs():
    ref = dets([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9, 0.5], labels=[1, 2, 1])
    perm = [2, 1, 0]
    other = Detections(ref.boxes[perm] + [[0.01, 0, 0, -0.02], [0, 0, 0, 0], [0, 0.005, 0, 0]],
                       ref.scores[perm] + [0.001, 0, -0.003], ref.labels[perm])
    out = match_backends(ref, other)
    assert (out["n_ref"], out["n_other"], out["n_matched"], out["matched_fraction"]) == (3, 3, 3, 1.0)
    assert out["max_box_diff"] == pytest.approx(0.02) and out["max_score_diff"] == pytest.approx(0.003)
    # A missing detection and a label change are not matched.
    fewer = Detections(other.boxes[:2], other.scores[:2], [2, 1])
    out = match_backends(ref, fewer)
    assert (out["n_matched"], out["matched_fraction"]) == (1, pytest.approx(1 / 3))
    empty = dets(EMPTY_BOXES, [])
    assert match_backends(empty, empty) == {"n_ref": 0, "n_other": 0, "n_matched": 0, "matched_fraction": 1.0,
                                            "max_box_diff": 0.0, "max_score_diff": 0.0}
    assert math.isnan(match_backends(ref, empty)["max_box_diff"])
    total = match_backends_all([ref, ref], [other, fewer])
    assert (total["n_ref"], total["n_other"], total["n_matched"]) == (6, 5, 4)


def test_detections_from_batch_and_validation():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = detections_from_batch(np.array([2, 0]), boxes, np.ones((2, 3)), np.ones((2, 3), dtype=np.int64))
    assert [len(d) for d in out] == [2, 0] and out[0].boxes.dtype == np.float64
    assert np.array_equal(out[0].boxes, boxes[0, :2])
    with pytest.raises(ValueError, match="metrics.py: Detections boxes must be a finite"):
        Detections(np.zeros((2, 3)), [1, 1], [1, 1])
    with pytest.raises(ValueError, match="Truth.values\\['f'\\] must have shape"):
        Truth(np.zeros((2, 4)), [1, 1], {"f": [1.0]})
    with pytest.raises(ValueError, match="rule must be one of"):
        match(out[0], truth(EMPTY_BOXES), rule="centroid")
    with pytest.raises(ValueError, match="2 prediction sets but 1 truth sets"):
        match_all(out, [truth(EMPTY_BOXES)])


def test_format_markdown_table():
    text = format_markdown_table([{"bin": "low", "completeness": 0.123456}, {"bin": "high", "ci": (0.1, 0.2)}])
    assert text.splitlines() == [
        "| bin | completeness | ci |",
        "|---|---|---|",
        "| low | 0.1235 |  |",
        "| high |  | [0.1, 0.2] |",
    ]


def test_thousand_images_evaluate():
    # Size check only; speed is measured in benchmarks, not asserted in unit tests.
    preds, truths = random_images(1000, seed=0)
    res = evaluate(preds, truths, score_thresh=0.3, n_boot=200)
    assert res.n_true > 5000 and 0 < res.completeness < 1
    assert res.completeness_ci[0] <= res.completeness <= res.completeness_ci[1]
