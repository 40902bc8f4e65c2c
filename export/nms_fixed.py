"""Batched, class-aware NMS with a fixed-shape result, exported as ONNX ``NonMaxSuppression``.

The export wrapper needs NMS on ``[N, C, M]`` score tensors (N images, C classes or
FPN levels, M boxes) without per-image Python loops. ONNX ``NonMaxSuppression`` has
exactly those batch and class axes, but returns a variable-length index list. This
module wraps it in one custom op, ``clumpdet::nms_keep``, whose output is a
fixed-shape keep mask ``[N, C, M]``:

* in eager PyTorch it loops over images and classes with :func:`torchvision.ops.nms`
  (the reference implementation the wrapper is checked against);
* in the ONNX graph it is ``NonMaxSuppression`` followed by one small ``ScatterND``
  that writes ones at the selected ``(batch, class, box)`` indices.

Semantics (identical in both): for each image and class, candidates are the boxes
with ``score > score_threshold``; a candidate is suppressed when its IoU with an
already kept, higher-scoring box is ``> iou_threshold`` (torchvision ``nms`` and
ONNX Runtime's kernel both compare with ``>``); at most
``max_output_boxes_per_class`` are kept, highest scores first.
"""

from __future__ import annotations

import onnx
import torch
import torchvision
from onnxscript import opset18 as op
from torch import Tensor


@torch.library.custom_op("clumpdet::nms_keep", mutates_args=())
def nms_keep(
    boxes: Tensor,
    scores: Tensor,
    max_output_boxes_per_class: int,
    iou_threshold: float,
    score_threshold: float,
) -> Tensor:
    """Keep mask of a batched, per-class NMS.

    Parameters
    ----------
    boxes : Tensor
        ``[N, M, 4]`` float32, ``(x1, y1, x2, y2)`` with ``x1 <= x2``, ``y1 <= y2``;
        shared by all classes of an image.
    scores : Tensor
        ``[N, C, M]`` float32; a box takes part in class ``c`` only where
        ``scores[n, c, m] > score_threshold``.
    max_output_boxes_per_class : int
        At most this many boxes kept per image and class.
    iou_threshold : float
        Suppress IoU ``> iou_threshold`` with a kept, higher-scoring box.
    score_threshold : float
        Candidates have ``score > score_threshold``.

    Returns
    -------
    Tensor
        ``[N, C, M]`` float32, 1.0 where kept, else 0.0.
    """
    n_img, n_cls, _ = scores.shape
    keep = torch.zeros_like(scores)
    for n in range(n_img):
        for c in range(n_cls):
            cand = torch.nonzero(scores[n, c] > score_threshold).squeeze(1)
            kept = torchvision.ops.nms(boxes[n, cand], scores[n, c, cand], iou_threshold)
            keep[n, c, cand[kept[:max_output_boxes_per_class]]] = 1.0
    return keep


@nms_keep.register_fake
def _nms_keep_fake(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
    return torch.empty_like(scores)


def nms_keep_onnx(boxes, scores, max_output_boxes_per_class: int, iou_threshold: float, score_threshold: float):
    """ONNX translation of :func:`nms_keep` (onnxscript, opset 18, default domain only)."""
    selected = op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_output_boxes_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )
    zeros = op.ConstantOfShape(op.Shape(scores))  # float32 zeros [N, C, M]
    one = onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])
    ones = op.ConstantOfShape(op.Shape(selected, start=0, end=1), value=one)  # [S]
    return op.ScatterND(zeros, selected, ones)


#: ``custom_translation_table`` entry for :func:`torch.onnx.export`.
ONNX_TRANSLATIONS = {torch.ops.clumpdet.nms_keep.default: nms_keep_onnx}


def nms_topk(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    num_classes: int,
    k: int,
    *,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Per-class NMS, then the ``k`` best survivors of each image, as fixed shapes.

    Parameters
    ----------
    boxes : Tensor
        ``[N, M, 4]`` float32 ``(x1, y1, x2, y2)``.
    scores : Tensor
        ``[N, M]`` float32; entries ``<= score_threshold`` never survive (use a
        negative value to mark invalid boxes when ``score_threshold >= 0``).
    classes : Tensor
        ``[M]`` int64 class (or FPN level) of each box column, in ``[0, num_classes)``.
    num_classes : int
        Size of the NMS class axis.
    k : int
        Survivors returned per image (``k <= M``).
    iou_threshold, score_threshold : float
        As in :func:`nms_keep`.

    Returns
    -------
    index : Tensor
        ``[N, k]`` int64 column indices into ``M``, by descending score.
    score : Tensor
        ``[N, k]`` float32 scores; ``-1.0`` where fewer than ``k`` survived.
    """
    onehot = classes[None, :] == torch.arange(num_classes, device=scores.device)[:, None]  # [C, M]
    per_class = torch.where(onehot[None], scores[:, None, :], torch.full_like(scores[:, None, :], -1.0))
    keep = nms_keep(boxes, per_class, k, iou_threshold, score_threshold).amax(dim=1)  # [N, M]
    masked = torch.where(keep > 0, scores, torch.full_like(scores, -1.0))
    score, index = masked.topk(k, dim=1)
    return index, score
