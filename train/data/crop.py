"""The preset's internal crop: the one definition shared by training and inference.

A preset's ``InputSpec.crop = (x0, y0, width, height)`` says which window of
the input frame the network sees. Training feeds the network that window, so
its images are cut and its truth boxes are clipped, filtered and shifted here.
Evaluation compares predictions (input frame) against truth that was clipped
and filtered by the same rule but left in the input frame, so truth the
network can never see does not count against it.

Box convention: ``(x1, y1, x2, y2)`` float arrays, shape ``(K, 4)``, pixel
``i`` spanning ``[i, i + 1)``. This module is numpy only; images may be numpy
arrays or torch tensors (anything sliceable as ``[..., rows, cols]``).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from clumpdet.engine.contracts import InputSpec

#: Default minimum fraction of a truth box's area that must lie inside the window.
MIN_VISIBLE = 0.5

ImageT = TypeVar("ImageT")


def crop_window(spec: InputSpec) -> tuple[int, int, int, int]:
    """The window ``(x0, y0, width, height)`` of ``spec``; the full input when ``crop`` is None."""
    if spec.crop is None:
        return (0, 0, int(spec.width), int(spec.height))
    x0, y0, w, h = (int(v) for v in spec.crop)
    if x0 < 0 or y0 < 0 or w <= 0 or h <= 0 or x0 + w > spec.width or y0 + h > spec.height:
        msg = f"crop.py: crop {spec.crop} does not fit inside the {spec.width}x{spec.height} input"
        raise ValueError(msg)
    return (x0, y0, w, h)


def crop_image(image: ImageT, window: tuple[int, int, int, int]) -> ImageT:
    """Cut ``window`` out of ``image`` (shape ``[..., H, W]``), returning ``[..., h, w]``."""
    x0, y0, w, h = window
    return image[..., y0 : y0 + h, x0 : x0 + w]


def clip_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    window: tuple[int, int, int, int],
    *,
    min_visible: float = MIN_VISIBLE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip boxes to ``window`` and drop those mostly outside it.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(K, 4)`` boxes in the input frame.
    labels : numpy.ndarray
        ``(K,)`` integer labels.
    window : tuple of int
        ``(x0, y0, width, height)``, from :func:`crop_window`.
    min_visible : float
        A box is kept when the clipped box keeps at least this fraction of its
        area and is at least 1 pixel wide and tall. Boxes of zero area are dropped.

    Returns
    -------
    boxes : numpy.ndarray
        ``(M, 4)`` float32 clipped boxes, still in the input frame.
    labels : numpy.ndarray
        ``(M,)`` int64 labels of the kept boxes.
    keep : numpy.ndarray
        ``(K,)`` bool mask of the kept input boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        msg = f"crop.py: {len(boxes)} boxes but {len(labels)} labels"
        raise ValueError(msg)
    x0, y0, w, h = window
    clipped = np.stack(
        [
            np.clip(boxes[:, 0], x0, x0 + w),
            np.clip(boxes[:, 1], y0, y0 + h),
            np.clip(boxes[:, 2], x0, x0 + w),
            np.clip(boxes[:, 3], y0, y0 + h),
        ],
        axis=1,
    )
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cw = clipped[:, 2] - clipped[:, 0]
    ch = clipped[:, 3] - clipped[:, 1]
    keep = (area > 0) & (cw >= 1.0) & (ch >= 1.0) & (cw * ch >= min_visible * area)
    return clipped[keep].astype(np.float32), labels[keep], keep


def to_window_frame(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Shift input-frame boxes ``(K, 4)`` into the window's own frame."""
    x0, y0 = window[0], window[1]
    return np.asarray(boxes, dtype=np.float32) - np.array([x0, y0, x0, y0], dtype=np.float32)


def from_window_frame(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Shift window-frame boxes ``(K, 4)`` back into the input frame."""
    x0, y0 = window[0], window[1]
    return np.asarray(boxes, dtype=np.float32) + np.array([x0, y0, x0, y0], dtype=np.float32)
