"""The detection post-processing chain (``PostProcessConfig``) with fixed shapes.

Re-expresses, batched, torchvision ``RoIHeads.postprocess_detections`` and
``GeneralizedRCNNTransform.postprocess`` followed by the rest of the preset's chain:

1. decode the class-specific box regressions with the model's ``box_coder``,
   softmax, clip to the internal image, drop the background column;
2. keep ``score > score_thresh`` and boxes with both sides ``>= 1e-2``;
3. per-class NMS (``class_nms_iou``), the ``detections_per_img`` best;
4. boxes back to crop pixels: scale by ``crop / internal`` (float32 ratios, as
   torchvision ``resize_boxes``);
5. class-agnostic NMS (``agnostic_nms_iou``; skipped when ``None``) and
   ``score >= final_score_thresh``, then the shift by the crop offset into input
   pixels (the order of :func:`clumpdet.train.predict.predict`);
6. sort by descending score, zero-pad to ``max_detections`` rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clumpdet.engine.contracts import PostProcessConfig
from clumpdet.export.anchors import InputGeometry
from clumpdet.export.nms_fixed import nms_topk
from clumpdet.export.rpn_fixed import box_sizes_at_least, clip_boxes

#: torchvision ``postprocess_detections`` drops boxes with a side below this (internal px).
_MIN_BOX_SIZE = 1e-2


class DetectionPostprocess(nn.Module):
    """Fixed-shape detection post-processing.

    Parameters
    ----------
    box_coder : torchvision.models.detection._utils.BoxCoder
        The model's ``roi_heads.box_coder``.
    num_classes : int
        Classes including background (column 0 of the logits).
    config : PostProcessConfig
        Thresholds, NMS IoUs, ``detections_per_img`` and ``K = max_detections``.
    geometry : InputGeometry
        Crop and internal size, to map boxes back to input pixels.
    num_proposals : int
        Proposals per image ``P`` (rows of the box head per image).
    """

    def __init__(
        self,
        box_coder: nn.Module,
        num_classes: int,
        config: PostProcessConfig,
        geometry: InputGeometry,
        num_proposals: int,
    ) -> None:
        super().__init__()
        self.box_coder = box_coder
        self.num_classes = num_classes
        self.config = config
        self.internal_size = geometry.internal_size
        x0, y0, cw, ch = geometry.crop
        ih, iw = geometry.internal_size
        rh = torch.tensor(float(ch), dtype=torch.float32) / torch.tensor(float(ih), dtype=torch.float32)
        rw = torch.tensor(float(cw), dtype=torch.float32) / torch.tensor(float(iw), dtype=torch.float32)
        self.register_buffer("ratio", torch.stack([rw, rh, rw, rh]), persistent=False)
        self.register_buffer("offset", torch.tensor([x0, y0, x0, y0], dtype=torch.float32), persistent=False)
        fg = num_classes - 1
        self.num_candidates = num_proposals * fg
        self.top_d = min(config.detections_per_img, self.num_candidates)
        labels = torch.arange(1, num_classes, dtype=torch.int64).repeat(num_proposals)  # [P * fg]
        self.register_buffer("labels", labels, persistent=False)

    def forward(self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor, valid: Tensor):
        """Turn box-head outputs into the exported model's four outputs.

        Parameters
        ----------
        class_logits : Tensor
            ``[N * P, num_classes]`` float32.
        box_regression : Tensor
            ``[N * P, num_classes * 4]`` float32.
        proposals : Tensor
            ``[N, P, 4]`` float32 internal-pixel boxes the regressions refer to.
        valid : Tensor
            ``[N, P]`` bool, False for padding proposals.

        Returns
        -------
        num_dets : Tensor
            ``[N]`` int64.
        boxes : Tensor
            ``[N, K, 4]`` float32 ``(x1, y1, x2, y2)`` in input pixels, zeros past ``num_dets``.
        scores : Tensor
            ``[N, K]`` float32, descending, zeros past ``num_dets``.
        labels : Tensor
            ``[N, K]`` int64, zeros past ``num_dets``.
        """
        cfg = self.config
        n, p = proposals.shape[0], proposals.shape[1]
        fg = self.num_classes - 1
        boxes = self.box_coder.decode_single(box_regression, proposals.reshape(-1, 4))
        boxes = clip_boxes(boxes.reshape(n, p, self.num_classes, 4), self.internal_size)
        scores = F.softmax(class_logits, -1).reshape(n, p, self.num_classes)
        boxes = boxes[:, :, 1:].reshape(n, p * fg, 4)
        scores = scores[:, :, 1:].reshape(n, p * fg)
        ok = (scores > cfg.score_thresh) & box_sizes_at_least(boxes, _MIN_BOX_SIZE)
        ok = ok & valid[:, :, None].expand(n, p, fg).reshape(n, p * fg)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        index, scores = nms_topk(
            boxes,
            scores,
            self.labels - 1,
            fg,
            self.top_d,
            iou_threshold=cfg.class_nms_iou,
            score_threshold=cfg.score_thresh,
        )
        boxes = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, 4))  # [N, D, 4]
        labels = self.labels[index]  # [N, D]
        boxes = boxes * self.ratio  # crop pixels (torchvision resize_boxes)
        final = scores >= cfg.final_score_thresh
        scores = torch.where(final, scores, torch.full_like(scores, -1.0))
        if cfg.agnostic_nms_iou is not None:
            zero = torch.zeros(1, dtype=torch.int64, device=scores.device).expand(self.top_d)
            order, scores = nms_topk(
                boxes, scores, zero, 1, self.top_d, iou_threshold=cfg.agnostic_nms_iou, score_threshold=-0.5
            )
            boxes = torch.gather(boxes, 1, order[:, :, None].expand(-1, -1, 4))
            labels = torch.gather(labels, 1, order)
        boxes = boxes + self.offset  # input pixels (after the agnostic NMS, as the reference)
        keep = scores > -0.5  # sorted: survivors first
        num_dets = keep.sum(dim=1)
        boxes = torch.where(keep[:, :, None], boxes, torch.zeros_like(boxes))
        scores = torch.where(keep, scores, torch.zeros_like(scores))
        labels = torch.where(keep, labels, torch.zeros_like(labels))
        pad = cfg.max_detections - self.top_d
        if pad > 0:
            boxes = F.pad(boxes, (0, 0, 0, pad))
            scores = F.pad(scores, (0, pad))
            labels = F.pad(labels, (0, pad))
        return num_dets, boxes, scores, labels
