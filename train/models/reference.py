"""The PyTorch reference detector: torchvision Faster R-CNN built from a :class:`Preset`.

For :data:`~clumpdet.train.presets.POPP2024` this is
``torchvision.models.detection.fasterrcnn_resnet50_fpn`` (v1) with three classes,
module for module and key for key, so the published ``nn.DataParallel``
checkpoints load with ``strict=True`` once ``module.`` is stripped:

- backbone: ResNet-50, FrozenBatchNorm2d, FPN P2–P6 (256 channels);
- RPN: one anchor size per level (``preset.anchor_sizes``, *internal* pixels)
  × ``preset.aspect_ratios``; proposal budget and NMS from the preset;
- RoI heads: ``MultiScaleRoIAlign`` on the encoder levels (P2–P5), 7×7,
  sampling ratio 2; ``TwoMLPHead`` ``preset.box_head_dim`` (1024); ``FastRCNNPredictor`` with ``preset.num_classes``;
  ``box_score_thresh`` / ``box_nms_thresh`` / ``box_detections_per_img`` from
  ``preset.postprocess``;
- transform: ImageNet mean/std from ``preset.input``, resize so that the
  (cropped) input becomes ``preset.input.internal_size``.

The model consumes the *cropped* image; :func:`clumpdet.train.predict.predict`
applies the crop and the rest of the post-processing chain.
"""

from __future__ import annotations

import os

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from clumpdet.train.data.crop import crop_window
from clumpdet.train.models.resnet_backbone import build_resnet50_fpn_backbone
from clumpdet.train.models.timm_backbone import build_timm_fpn_backbone
from clumpdet.train.presets import Preset

#: RoIAlign of torchvision's Faster R-CNN v1 (Popp et al. 2024).
ROI_OUTPUT_SIZE = 7
ROI_SAMPLING_RATIO = 2
#: torchvision's default ``max_size``; kept so popp2024 is the published model exactly.
#: It never binds when the crop has the aspect ratio of ``internal_size``.
TORCHVISION_MAX_SIZE = 1333
#: The ResNet-50 FPN of torchvision: P2–P5 plus the LastLevelMaxPool P6, 256 wide.
RESNET50_FEATURE_STRIDES = (4, 8, 16, 32)
RESNET50_FPN_CHANNELS = 256


def transform_sizes(preset: Preset) -> tuple[int, int]:
    """``(min_size, max_size)`` of ``GeneralizedRCNNTransform`` reaching ``preset.input.internal_size``.

    The model sees the crop (``preset.input.crop``, or the whole input);
    torchvision scales it by ``min(min_size / short_side, max_size / long_side)``.
    Raises ``ValueError`` if the crop and ``internal_size`` differ in aspect ratio.
    """
    inp = preset.input
    _, _, width, height = crop_window(inp)
    internal_h, internal_w = inp.internal_size
    if internal_h * width != internal_w * height:
        msg = (
            f"reference.py: preset {preset.name!r}: internal_size {inp.internal_size} (h, w) is not a "
            f"uniform rescale of the {height}x{width} (h x w) model input"
        )
        raise ValueError(msg)
    return min(internal_h, internal_w), max(TORCHVISION_MAX_SIZE, internal_h, internal_w)


def build_backbone(preset: Preset, backbone_weights: str | os.PathLike | None = None):
    """The FPN backbone named by ``preset.backbone`` (``"resnet50"`` or ``"timm:<name>"``)."""
    if preset.backbone == "resnet50":
        if preset.feature_strides != RESNET50_FEATURE_STRIDES or preset.fpn_channels != RESNET50_FPN_CHANNELS:
            msg = (
                f"reference.py: preset {preset.name!r}: the resnet50 backbone is torchvision's FPN with "
                f"strides {RESNET50_FEATURE_STRIDES} and {RESNET50_FPN_CHANNELS} channels"
            )
            raise ValueError(msg)
        return build_resnet50_fpn_backbone(preset.trainable_layers, backbone_weights)
    if preset.backbone.startswith("timm:"):
        return build_timm_fpn_backbone(
            preset.backbone.removeprefix("timm:"),
            trainable_layers=preset.trainable_layers,
            weights=backbone_weights,
            feature_strides=preset.feature_strides,
            out_channels=preset.fpn_channels,
        )
    msg = f"reference.py: preset {preset.name!r} has unknown backbone {preset.backbone!r} (resnet50 or timm:<name>)"
    raise ValueError(msg)


def build_model(preset: Preset, *, backbone_weights: str | os.PathLike | None = None) -> FasterRCNN:
    """Build the reference Faster R-CNN of ``preset``.

    Parameters
    ----------
    preset : Preset
        Architecture, input contract and post-processing thresholds.
    backbone_weights : str or os.PathLike, optional
        Backbone initialisation from a local file: for ``"resnet50"`` a
        torchvision (ImageNet) or Zoobot-1 ResNet-50 state dict; for
        ``"timm:<name>"`` a timm state dict of that encoder, or
        ``"hf-hub:mwalmsley/zoobot-encoder-<name>"`` (network). ``None``:
        random initialisation (load a full checkpoint afterwards).

    Returns
    -------
    torchvision.models.detection.FasterRCNN
        In training mode (torchvision's default), on the CPU. Its
        ``forward(list of [3, h, w] float tensors in [0, 1])`` in eval mode
        returns per-image dicts with ``boxes`` ``[P, 4]`` (x1, y1, x2, y2 in
        the pixels of the image it was given), ``scores`` ``[P]``, ``labels``
        ``[P]`` int64, after score > ``score_thresh``, per-class NMS and top-k.
    """
    if preset.num_classes < 2:
        msg = f"reference.py: preset {preset.name!r} needs background plus at least one class"
        raise ValueError(msg)
    min_size, max_size = transform_sizes(preset)
    backbone = build_backbone(preset, backbone_weights)
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in preset.anchor_sizes),
        aspect_ratios=(tuple(float(a) for a in preset.aspect_ratios),) * len(preset.anchor_sizes),
    )
    rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    roi_pool = MultiScaleRoIAlign(
        featmap_names=[str(i) for i in range(len(preset.feature_strides))], output_size=ROI_OUTPUT_SIZE, sampling_ratio=ROI_SAMPLING_RATIO
    )
    box_head = TwoMLPHead(backbone.out_channels * ROI_OUTPUT_SIZE**2, preset.box_head_dim)
    box_predictor = FastRCNNPredictor(preset.box_head_dim, preset.num_classes)
    post = preset.postprocess
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(preset.input.mean),
        image_std=list(preset.input.std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_test=preset.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=preset.rpn_post_nms_top_n_test,
        rpn_nms_thresh=preset.rpn_nms_thresh,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=post.score_thresh,
        box_nms_thresh=post.class_nms_iou,
        box_detections_per_img=post.detections_per_img,
    )
