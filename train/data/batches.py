"""Batching for training and validation: collate, crop to the model's window, augment.

The DataLoader only loads and lists items (:func:`collate_list`). The
preset-specific work runs in the main process on each batch, so it is
deterministic whatever ``num_workers`` is:

* :func:`training_batch` cuts every image to the preset's crop window, clips,
  filters and shifts its boxes into the window frame
  (:mod:`clumpdet.train.data.crop`), then applies the random flips and
  rotations with the given generator. The model therefore trains on exactly
  the window that ``predict()`` and the exported graph crop internally.
* :func:`validation_truth` clips and filters truth by the same rule but keeps
  it in the input frame, where ``predict()`` reports its boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clumpdet.engine.metrics import Truth
from clumpdet.train.data.augment import RandomFlipRotate
from clumpdet.train.data.crop import MIN_VISIBLE, clip_boxes, crop_image, to_window_frame

Item = tuple[torch.Tensor, dict[str, torch.Tensor]]


def collate_list(items: Sequence[Item]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """DataLoader ``collate_fn``: ``[(image, target), ...] -> ([images], [targets])``."""
    return [i for i, _ in items], [t for _, t in items]


def training_batch(
    images: Sequence[torch.Tensor],
    targets: Sequence[dict[str, torch.Tensor]],
    window: tuple[int, int, int, int],
    *,
    augment: RandomFlipRotate | None,
    generator: torch.Generator,
    min_visible: float = MIN_VISIBLE,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Crop, clip and (optionally) augment a batch of input-frame items.

    Parameters
    ----------
    images : sequence of torch.Tensor
        float32 ``[3, H, W]`` inputs in [0, 1] (input frame).
    targets : sequence of dict
        ``boxes`` float32 ``[K, 4]`` (input frame) and ``labels`` int64 ``[K]``.
    window : tuple of int
        ``(x0, y0, width, height)`` from :func:`~clumpdet.train.data.crop.crop_window`.
    augment : RandomFlipRotate or None
        Random symmetry applied after the crop; ``None`` disables it.
    generator : torch.Generator
        Source of the augmentation's randomness.

    Returns
    -------
    (list of torch.Tensor, list of dict)
        Images ``[3, h, w]`` and targets (``boxes`` in the window frame, ``labels``)
        in the form torchvision detectors take in training mode.
    """
    out_images, out_targets = [], []
    for image, target in zip(images, targets):
        boxes, labels, _ = clip_boxes(target["boxes"].numpy(), target["labels"].numpy(), window,
                                      min_visible=min_visible)
        image_w = crop_image(image, window)
        boxes_w = torch.from_numpy(np.ascontiguousarray(to_window_frame(boxes, window)))
        if augment is not None:
            image_w, boxes_w = augment(image_w, boxes_w, generator)
        out_images.append(image_w.contiguous())
        out_targets.append({"boxes": boxes_w.float(), "labels": torch.from_numpy(labels.copy())})
    return out_images, out_targets


def validation_truth(
    targets: Sequence[dict[str, torch.Tensor]],
    window: tuple[int, int, int, int],
    *,
    min_visible: float = MIN_VISIBLE,
) -> list[Truth]:
    """Truth the model can see: boxes clipped to ``window`` and filtered, in the input frame."""
    truths = []
    for target in targets:
        boxes, labels, _ = clip_boxes(target["boxes"].numpy(), target["labels"].numpy(), window,
                                      min_visible=min_visible)
        truths.append(Truth(boxes=boxes.astype(np.float64), labels=labels))
    return truths
