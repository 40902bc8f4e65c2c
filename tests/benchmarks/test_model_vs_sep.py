"""The equal-purity operating point chosen for sep in benchmarks.model_vs_sep."""

import numpy as np

from benchmarks.model_vs_sep import sep_at_purity
from clumpdet.engine.metrics import Detections, Truth


def _image(centres, scores):
    boxes = np.array([[x - 2, y - 2, x + 2, y + 2] for x, y in centres], dtype=float).reshape(-1, 4)
    return Detections(boxes, np.asarray(scores, float), np.ones(len(scores), dtype=np.int64))


def test_sep_threshold_is_the_lowest_cut_reaching_the_target_purity():
    truth = Truth(np.array([[8.0, 8, 12, 12], [28, 28, 32, 32]]), np.array([1, 1]))
    # Two true detections (scores 0.9, 0.5) and two false ones (0.7, 0.2).
    preds = _image([(10, 10), (50, 50), (30, 30), (70, 70)], [0.9, 0.7, 0.5, 0.2])
    # Purity by cut: >=0.2 -> 2/4, >=0.5 -> 2/3, >=0.7 -> 1/2, >=0.9 -> 1/1.
    thresh, res = sep_at_purity([preds], [truth], 0.6, n_boot=0)
    assert thresh == 0.5 and res.purity == 2 / 3 and res.completeness == 1.0
    thresh, res = sep_at_purity([preds], [truth], 0.9, n_boot=0)
    assert thresh == 0.9 and res.completeness == 0.5


def test_sep_never_reaching_the_purity_is_reported():
    truth = Truth(np.array([[8.0, 8, 12, 12]]), np.array([1]))
    thresh, res = sep_at_purity([_image([(50, 50)], [0.8])], [truth], 0.5, n_boot=0)
    assert thresh == float("inf") and res is None
