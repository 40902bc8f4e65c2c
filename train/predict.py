"""The reference prediction: the whole published chain, in PyTorch (DESIGN §2).

``predict`` is the parity reference for every exported backend. Order:

1. crop ``preset.input.crop`` (``x0, y0, w, h`` in input pixels);
2. the model (its transform normalises and resizes to ``internal_size``);
   inside torchvision: score ``> score_thresh``, per-class NMS at
   ``class_nms_iou``, top ``detections_per_img``; boxes back in crop pixels;
3. :func:`apply_agnostic_chain`: class-agnostic NMS at ``agnostic_nms_iou``
   (skipped when ``None``), then score ``>= final_score_thresh``;
4. boxes shifted by the crop offset into input pixels.

Boxes are ``(x1, y1, x2, y2)``, pixel ``i`` spanning ``[i, i + 1)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.ops import nms

from clumpdet.engine.contracts import PostProcessConfig
from clumpdet.engine.metrics import Detections
from clumpdet.train.data.crop import crop_image, crop_window
from clumpdet.train.presets import Preset


def apply_agnostic_chain(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, config: PostProcessConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The steps after torchvision's per-class chain: agnostic NMS, then the final threshold.

    Parameters
    ----------
    boxes : torch.Tensor
        float ``[P, 4]``, ``x1, y1, x2, y2``.
    scores : torch.Tensor
        float ``[P]``.
    labels : torch.Tensor
        int64 ``[P]``.
    config : PostProcessConfig
        Uses ``agnostic_nms_iou`` (``None`` skips the NMS) and
        ``final_score_thresh`` (kept: ``score >= final_score_thresh``).

    Returns
    -------
    (boxes, scores, labels)
        The kept rows, sorted by descending score.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),) or labels.shape != (len(boxes),):
        msg = (
            f"predict.py: expected boxes [P, 4], scores [P], labels [P], got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)}, {tuple(labels.shape)}"
        )
        raise ValueError(msg)
    if config.agnostic_nms_iou is not None:
        keep = nms(boxes.float(), scores.float(), config.agnostic_nms_iou)  # sorted by descending score
    else:
        keep = torch.sort(scores, descending=True, stable=True).indices
    keep = keep[scores[keep] >= config.final_score_thresh]
    return boxes[keep], scores[keep], labels[keep]


@contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Set PyTorch's TF32 flags (cuDNN convolutions, CUDA matmuls) for the block; restored after.

    PyTorch runs fp32 convolutions on CUDA in TF32 by default; through ResNet-50
    that moves scores by ~1e-2 and reorders near-ties, too much for a parity
    reference (with it off, CUDA matches the CPU to ~2e-5 in score).
    """
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check_images(images: torch.Tensor, preset: Preset) -> None:
    inp = preset.input
    if not isinstance(images, torch.Tensor) or images.dtype != torch.float32:
        msg = f"predict.py: images must be a float32 torch.Tensor, got {type(images).__name__} {getattr(images, 'dtype', '')}"
        raise ValueError(msg)
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, inp.height, inp.width):
        msg = (
            f"predict.py: preset {preset.name!r} takes images [N, 3, {inp.height}, {inp.width}], "
            f"got {list(images.shape)}"
        )
        raise ValueError(msg)
    if images.numel() and (not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        msg = "predict.py: images must be finite RGB scaled to [0, 1] (divide uint8 values by 255)"
        raise ValueError(msg)


@torch.no_grad()
def predict(
    model: FasterRCNN,
    images: torch.Tensor,
    preset: Preset,
    *,
    postprocess: PostProcessConfig | None = None,
    tf32: bool = False,
) -> list[Detections]:
    """Run the reference detector and the whole post-processing chain.

    Parameters
    ----------
    model : torchvision.models.detection.FasterRCNN
        From :func:`clumpdet.train.models.build_model` (``preset``'s
        architecture). Run in eval mode; its mode and thresholds are restored.
        On CUDA, TF32 is switched off for the call (true fp32 reference).
    images : torch.Tensor
        float32 ``[N, 3, H, W]`` RGB in [0, 1], ``H, W = preset.input.height,
        preset.input.width`` (e.g. 400×400), uncropped. Moved to the model's device.
    preset : Preset
        Gives the crop; and the post-processing chain unless ``postprocess`` is given.
    postprocess : PostProcessConfig, optional
        Every field is honoured: ``score_thresh``, ``class_nms_iou`` and
        ``detections_per_img`` are set on ``model.roi_heads`` for this call,
        then ``agnostic_nms_iou`` and ``final_score_thresh`` are applied.
        Default ``preset.postprocess``.
    tf32 : bool
        On CUDA, leave PyTorch's TF32 settings as they are (for timing what a
        PyTorch user gets by default); ``False`` (default) forces IEEE fp32.

    Returns
    -------
    list of Detections
        One per image, sorted by descending score; ``boxes`` ``(P, 4)``
        ``x1, y1, x2, y2`` in input pixels (pixel ``i`` spans ``[i, i + 1)``),
        ``scores`` ``(P,)``, ``labels`` ``(P,)`` in ``1 .. num_classes - 1``.
    """
    config = preset.postprocess if postprocess is None else postprocess
    _check_images(images, preset)
    if len(images) == 0:
        return []
    window = crop_window(preset.input)
    images = crop_image(images, window)
    x0, y0 = window[:2]
    device = next(model.parameters()).device
    heads = model.roi_heads
    saved = (heads.score_thresh, heads.nms_thresh, heads.detections_per_img, model.training)
    heads.score_thresh, heads.nms_thresh = config.score_thresh, config.class_nms_iou
    heads.detections_per_img = config.detections_per_img
    try:
        model.eval()
        with tf32_mode(False) if device.type == "cuda" and not tf32 else nullcontext():
            outputs = model(list(images.to(device)))
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img, training = saved
        model.train(training)
    offset = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    results = []
    for out in outputs:
        boxes, scores, labels = apply_agnostic_chain(
            out["boxes"].cpu(), out["scores"].cpu(), out["labels"].cpu(), config
        )
        results.append(
            Detections(
                boxes=(boxes + offset).numpy().astype(np.float64),
                scores=scores.numpy().astype(np.float64),
                labels=labels.numpy().astype(np.int64),
            )
        )
    return results
