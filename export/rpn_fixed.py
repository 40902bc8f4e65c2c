"""Region proposals with fixed shapes: torchvision ``RegionProposalNetwork`` inference re-expressed.

Same steps and numerics as ``RegionProposalNetwork.forward`` + ``filter_proposals``
in eval mode, batched instead of looped per image:

1. the RPN head on every FPN level (the model's own ``rpn.head``);
2. per image and level, the ``pre_nms_top_n`` highest objectness logits
   (``min(pre_nms_top_n, anchors in level)``, as torchvision);
3. decode with the model's ``box_coder`` against the constant anchors, sigmoid,
   clip to the internal image, drop boxes smaller than ``min_size`` and scores
   below ``score_thresh`` (by marking their score ``-1``);
4. NMS per level (ONNX ``NonMaxSuppression`` with the level as its class axis),
   then the ``post_nms_top_n`` best survivors of each image.

Output is a fixed ``[N, P, 4]`` proposal tensor plus a validity mask (torchvision
would return fewer than ``P`` proposals for an image; the padded rows are carried
as invalid and can never become detections).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import permute_and_flatten
from torchvision.ops.boxes import clip_boxes_to_image as clip_boxes

from clumpdet.export.anchors import FeatureLayout
from clumpdet.export.nms_fixed import nms_topk


class RpnFixed(nn.Module):
    """Fixed-shape proposal stage.

    Parameters
    ----------
    rpn : torchvision.models.detection.rpn.RegionProposalNetwork
        The model's RPN; its ``head``, ``box_coder``, ``nms_thresh``,
        ``score_thresh`` and ``min_size`` are used.
    layout : FeatureLayout
        Anchors per level for the fixed input.
    internal_size : tuple of int
        ``(height, width)`` the proposals are clipped to.
    pre_nms_top_n, post_nms_top_n : int
        Inference proposal budgets (per level before NMS, per image after).
    """

    def __init__(
        self,
        rpn: nn.Module,
        layout: FeatureLayout,
        internal_size: tuple[int, int],
        pre_nms_top_n: int,
        post_nms_top_n: int,
    ) -> None:
        super().__init__()
        self.head = rpn.head
        self.box_coder = rpn.box_coder
        self.nms_thresh = float(rpn.nms_thresh)
        self.score_thresh = float(rpn.score_thresh)
        self.min_size = float(rpn.min_size)
        self.internal_size = internal_size
        self.anchors_per_location = layout.anchors_per_location
        self.top_n = tuple(min(pre_nms_top_n, int(a.shape[0])) for a in layout.anchors)
        self.num_candidates = sum(self.top_n)
        self.post_nms_top_n = min(post_nms_top_n, self.num_candidates)
        for i, a in enumerate(layout.anchors):
            self.register_buffer(f"anchors_{i}", a.clone(), persistent=False)
        levels = torch.cat([torch.full((k,), i, dtype=torch.int64) for i, k in enumerate(self.top_n)])
        self.register_buffer("levels", levels, persistent=False)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Propose boxes.

        Parameters
        ----------
        features : list of Tensor
            FPN maps ``[N, C, H_l, W_l]``, in backbone order.

        Returns
        -------
        proposals : Tensor
            ``[N, P, 4]`` float32 ``(x1, y1, x2, y2)`` in internal pixels, by
            descending objectness (P = ``post_nms_top_n``).
        valid : Tensor
            ``[N, P]`` bool, False for padding rows.
        """
        objectness, deltas = self.head(features)
        n = features[0].shape[0]
        logits, codes, anchors = [], [], []
        for i, (obj, dlt) in enumerate(zip(objectness, deltas)):
            a, h, w = self.anchors_per_location[i], obj.shape[-2], obj.shape[-1]
            obj = permute_and_flatten(obj, n, a, 1, h, w).reshape(n, -1)  # [N, HWA]
            dlt = permute_and_flatten(dlt, n, a, 4, h, w)  # [N, HWA, 4]
            top, idx = obj.topk(self.top_n[i], dim=1)
            logits.append(top)
            codes.append(torch.gather(dlt, 1, idx[:, :, None].expand(-1, -1, 4)))
            anchors.append(getattr(self, f"anchors_{i}")[idx])  # [N, k, 4]
        logits = torch.cat(logits, 1)  # [N, M]
        codes = torch.cat(codes, 1)
        anchors = torch.cat(anchors, 1)
        boxes = self.box_coder.decode_single(codes.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(n, -1, 4)
        boxes = clip_boxes(boxes, self.internal_size)
        scores = torch.sigmoid(logits)
        ok = box_sizes_at_least(boxes, self.min_size) & (scores >= self.score_thresh)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        index, kept = nms_topk(
            boxes,
            scores,
            self.levels,
            len(self.top_n),
            self.post_nms_top_n,
            iou_threshold=self.nms_thresh,
            score_threshold=-0.5,
        )
        proposals = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, 4))
        return proposals, kept > -0.5


def box_sizes_at_least(boxes: Tensor, min_size: float) -> Tensor:
    """``[...]`` bool: both sides of each ``[..., 4]`` box are ``>= min_size`` (torchvision rule)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
