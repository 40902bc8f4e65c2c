"""The export wrapper: one ``nn.Module`` that re-expresses Faster R-CNN inference with fixed shapes.

It composes the model's own submodules (backbone, RPN head, box head and
predictor, box coders) with the fixed-shape stages of this package; the training
model is not modified and never branches on tracing (STYLE 2). Contract
(DESIGN §3): ``images`` float32 ``[N, 3, H, W]`` RGB in [0, 1] at the preset's input
size; crop, normalisation, bilinear resize and padding happen inside; outputs
``num_dets`` ``[N]`` int64, ``boxes`` ``[N, K, 4]`` float32 (x1, y1, x2, y2, input
pixels, pixel i spanning [i, i+1)), ``scores`` ``[N, K]`` float32 and ``labels``
``[N, K]`` int64, sorted by descending score and zero-padded past ``num_dets``.
Every operation acts per image, so an image's detections do not depend on its
batch-mates, and the batch size is just a tensor dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clumpdet.engine.contracts import PostProcessConfig
from clumpdet.export.anchors import InputGeometry, probe_features, probe_geometry
from clumpdet.export.postprocess_fixed import DetectionPostprocess
from clumpdet.export.roi_fixed import RoiAlignFixed
from clumpdet.export.rpn_fixed import RpnFixed
from clumpdet.train.presets import Preset


class ExportWrapper(nn.Module):
    """Fixed-shape, loop-free inference of a torchvision ``FasterRCNN``.

    Parameters
    ----------
    model : torchvision.models.detection.FasterRCNN
        In eval mode. Only its submodules are used: ``transform`` (probed once
        for the resize/padding geometry), ``backbone`` (returns an ordered dict of
        FPN maps), ``rpn`` (``head``, ``anchor_generator``, ``box_coder``,
        thresholds), ``roi_heads`` (``box_roi_pool``, ``box_head``,
        ``box_predictor``, ``box_coder``).
    preset : Preset
        Input contract, proposal budgets and default post-processing.
    postprocess : PostProcessConfig, optional
        Replaces ``preset.postprocess``.
    proposals : int, optional
        Replaces ``preset.rpn_post_nms_top_n_test`` (proposals per image kept
        after the RPN's NMS; the box head runs on this many rows per image).
    roi_merge : {"auto", "canvas", "gather", "where"}
        How RoIs are pooled from the FPN levels (:mod:`clumpdet.export.roi_fixed`):
        ``"auto"`` uses the single-RoiAlign canvas where it equals torchvision
        exactly (e.g. ``native``), else one RoiAlign per level on its own RoIs.
    """

    def __init__(
        self,
        model: nn.Module,
        preset: Preset,
        *,
        postprocess: PostProcessConfig | None = None,
        proposals: int | None = None,
        roi_merge: str = "auto",
    ) -> None:
        super().__init__()
        if model.training:
            msg = "wrapper.py: call model.eval() before wrapping it for export"
            raise ValueError(msg)
        if proposals is not None and proposals < 1:
            msg = f"wrapper.py: proposals must be >= 1, got {proposals}"
            raise ValueError(msg)
        self.preset = preset
        self.config = postprocess if postprocess is not None else preset.postprocess
        self.geometry: InputGeometry = probe_geometry(model, preset)
        layout = probe_features(model, self.geometry)
        self.backbone = model.backbone
        self.rpn = RpnFixed(
            model.rpn,
            layout,
            self.geometry.internal_size,
            preset.rpn_pre_nms_top_n_test,
            proposals if proposals is not None else preset.rpn_post_nms_top_n_test,
        )
        self.roi_align = RoiAlignFixed(
            model.roi_heads.box_roi_pool, layout, self.geometry.internal_size, merge=roi_merge
        )
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self.post = DetectionPostprocess(
            model.roi_heads.box_coder, preset.num_classes, self.config, self.geometry, self.rpn.post_nms_top_n
        )
        mean = torch.tensor(self.geometry.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.geometry.std, dtype=torch.float32)[:, None, None]
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.eval()

    @property
    def num_proposals(self) -> int:
        """Proposals per image that reach the box head."""
        return self.rpn.post_nms_top_n

    def preprocess(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] → the backbone's ``[N, 3, Hp, Wp]`` input.

        Crop, normalise, bilinear resize (``align_corners=False``, output size =
        ``internal_size``; identical to torchvision's ``scale_factor`` +
        ``recompute_scale_factor=True`` call), zero-pad bottom/right, in
        torchvision's order.
        """
        x0, y0, cw, ch = self.geometry.crop
        x = images[:, :, y0 : y0 + ch, x0 : x0 + cw]
        x = (x - self.mean) / self.std
        ih, iw = self.geometry.internal_size
        if (ih, iw) != (ch, cw):
            x = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False)
        hp, wp = self.geometry.padded_size
        if (hp, wp) != (ih, iw):
            x = F.pad(x, (0, wp - iw, 0, hp - ih))
        return x

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detect.

        Parameters
        ----------
        images : Tensor
            ``[N, 3, H, W]`` float32 RGB in [0, 1], ``H, W`` = ``preset.input`` size.

        Returns
        -------
        tuple of Tensor
            ``num_dets`` ``[N]`` int64, ``boxes`` ``[N, K, 4]`` float32, ``scores``
            ``[N, K]`` float32, ``labels`` ``[N, K]`` int64 (module docstring).
        """
        features = self.backbone(self.preprocess(images))
        proposals, valid = self.rpn(list(features.values()))
        pooled = self.roi_align(features, proposals)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        return self.post(class_logits, box_regression, proposals, valid)
