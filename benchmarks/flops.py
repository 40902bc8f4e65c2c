"""FLOPs per image of a preset's model, per stage, counted by PyTorch.

Counts with :class:`torch.utils.flop_counter.FlopCounterMode` on the eager
:class:`clumpdet.export.wrapper.ExportWrapper` (the graph the engine exports),
one image, stage by stage:

``backbone_fpn``
    preprocessing (crop, normalise, resize, pad) + encoder + FPN;
``rpn``
    RPN head convolutions, box decoding, per-level top-k and NMS;
``box_head``
    RoIAlign + TwoMLPHead + predictor on the proposals;
``postprocess``
    box decoding, per-class and class-agnostic NMS.

The counter counts matrix products and convolutions (``2 * MAC``); RoIAlign,
NMS, resize and elementwise operations count as 0, which makes the figures
the GEMM work that the fp32 ceiling bounds.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

STAGES = ("backbone_fpn", "rpn", "box_head", "postprocess")


@torch.no_grad()
def count_flops(model, preset, *, proposals: int | None = None) -> dict:
    """FLOPs per image of ``model`` (a torchvision FasterRCNN of ``preset``, eval mode).

    Returns
    -------
    dict
        ``{stage: flop}`` for :data:`STAGES`, ``total``, and ``proposals`` (box-head rows per image).
    """
    from clumpdet.export.wrapper import ExportWrapper

    wrapper = ExportWrapper(model.eval(), preset, proposals=proposals)
    spec = preset.input
    x = torch.full((1, 3, spec.height, spec.width), 0.5)
    counts = {}
    with FlopCounterMode(display=False) as fc:
        features = wrapper.backbone(wrapper.preprocess(x))
    counts["backbone_fpn"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        props, valid = wrapper.rpn(list(features.values()))
    counts["rpn"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        logits, deltas = wrapper.box_predictor(wrapper.box_head(wrapper.roi_align(features, props)))
    counts["box_head"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        wrapper.post(logits, deltas, props, valid)
    counts["postprocess"] = fc.get_total_flops()
    counts = {k: int(v) for k, v in counts.items()}
    counts["total"] = sum(counts[s] for s in STAGES)
    counts["proposals"] = int(wrapper.num_proposals)
    return counts
