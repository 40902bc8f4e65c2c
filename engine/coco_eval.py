"""COCO AP/AR of detections against truth, via ``faster_coco_eval`` (DESIGN §6).

The ecosystem-standard secondary figure next to completeness/purity. The
library is an optional dependency (``pip install faster-coco-eval``, part of the
``dev`` extra) and is imported only when :func:`coco_ap` runs. The COCO
dictionaries are built in memory; no file is written.

Boxes: ``(x1, y1, x2, y2)`` image pixels (pixel ``i`` spans ``[i, i + 1)``),
converted to COCO ``[x, y, w, h]`` with ``w = x2 - x1``, area ``w * h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clumpdet.engine.metrics import Detections, Truth

#: Maximum detections per image considered (COCO's ``maxDets[-1]``).
MAX_DETS = 100


def _mean_defined(a: np.ndarray) -> float:
    """Mean of COCO entries that are defined (``> -1``); ``nan`` if none is."""
    a = a[a > -1]
    return float(a.mean()) if a.size else math.nan


def coco_ap(preds: Sequence[Detections], truths: Sequence[Truth], *, class_names: Sequence[str],
            per_class: bool = False) -> dict[str, float]:
    """COCO box AP, AP50, AP75 and AR100 of per-image predictions against truth.

    Parameters
    ----------
    preds : sequence of Detections
        One per image; all predictions are used (COCO keeps the top 100 by score).
    truths : sequence of Truth
        One per image, same order.
    class_names : sequence of str
        ``class_names[i]`` names label ``i``; index 0 is background and never a category.
    per_class : bool
        Also return ``"AP/<name>"`` (IoU 0.50:0.95) for each class.

    Returns
    -------
    dict of str to float
        ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``AR100``, averaged over the classes
        that have truth; ``nan`` where COCO leaves a value undefined (e.g. no truth at all).
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the install
        msg = "coco_eval.py: coco_ap needs faster-coco-eval; pip install faster-coco-eval"
        raise ModuleNotFoundError(msg) from err
    if len(preds) != len(truths):
        msg = f"coco_eval.py: got {len(preds)} prediction sets but {len(truths)} truth sets"
        raise ValueError(msg)
    n_classes = len(class_names)
    for what, items in (("prediction", preds), ("truth", truths)):
        for i, item in enumerate(items):
            if len(item) and (item.labels.min() < 1 or item.labels.max() >= n_classes):
                msg = f"coco_eval.py: image {i} has {what} labels outside 1..{n_classes - 1}: {item.labels}"
                raise ValueError(msg)

    annotations = []
    for image_id, t in enumerate(truths, start=1):
        wh = t.boxes[:, 2:] - t.boxes[:, :2]
        for (x1, y1, _, _), (w, h), label in zip(t.boxes.tolist(), wh.tolist(), t.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    gt = COCO({
        "images": [{"id": i} for i in range(1, len(truths) + 1)],
        "annotations": annotations,
        "categories": [{"id": k, "name": name} for k, name in enumerate(class_names) if k > 0],
    })
    # Results as the library's (M, 7) array: image_id, x, y, w, h, score, category_id.
    rows = [np.column_stack([np.full(len(d), i), d.boxes[:, :2], d.boxes[:, 2:] - d.boxes[:, :2],
                             d.scores, d.labels]) for i, d in enumerate(preds, start=1)]
    dt = gt.loadRes(np.concatenate(rows) if rows else np.zeros((0, 7)))
    ev = COCOeval_faster(gt, dt, iouType="bbox")
    ev.params.maxDets = [1, 10, MAX_DETS]
    ev.evaluate()
    ev.accumulate()

    precision = ev.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class], area "all", 100 dets
    recall = ev.eval["recall"][:, :, 0, -1]  # [iou, class]
    iou_thrs = np.asarray(ev.params.iouThrs)
    out = {
        "AP": _mean_defined(precision),
        "AP50": _mean_defined(precision[np.isclose(iou_thrs, 0.5)]),
        "AP75": _mean_defined(precision[np.isclose(iou_thrs, 0.75)]),
        "AR100": _mean_defined(recall),
    }
    if per_class:
        for column, cat_id in enumerate(ev.params.catIds):
            out[f"AP/{class_names[cat_id]}"] = _mean_defined(precision[:, :, column])
    return out
