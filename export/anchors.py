"""Fixed input geometry of an export: crop, internal size, padding, FPN levels, anchors.

Everything here is computed once, eagerly, when the wrapper is built, by running
the model's *own* components (its ``GeneralizedRCNNTransform``, backbone and
``AnchorGenerator``) on a dummy image of the fixed input size. The graph then
holds the anchors as constants. Because the geometry is probed rather than
re-derived, a preset whose ``InputSpec`` disagrees with the model's transform is
caught here with a clear error instead of silently breaking parity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.poolers import _setup_scales

from clumpdet.train.data.crop import crop_window
from clumpdet.train.presets import Preset


@dataclass(frozen=True)
class InputGeometry:
    """How an input image maps onto the detector's internal frame.

    Attributes
    ----------
    crop : tuple of int
        ``(x0, y0, width, height)`` crop in input pixels (the whole input when the
        preset has no crop).
    internal_size : tuple of int
        ``(height, width)`` after the bilinear resize (torchvision ``image_sizes``);
        boxes are clipped to it.
    padded_size : tuple of int
        ``(height, width)`` of the batched tensor the backbone sees (zero padding
        on the bottom/right up to the transform's ``size_divisible``).
    mean, std : tuple of float
        Per-channel normalisation.
    """

    crop: tuple[int, int, int, int]
    internal_size: tuple[int, int]
    padded_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def probe_geometry(model: nn.Module, preset: Preset) -> InputGeometry:
    """Run ``model.transform`` on a dummy cropped image and check it against the preset.

    Raises
    ------
    ValueError
        If the transform's resize or normalisation differs from ``preset.input``.
    """
    spec = preset.input
    crop = crop_window(spec)
    x0, y0, cw, ch = crop
    transform = model.transform
    was_training = transform.training
    transform.eval()
    with torch.no_grad():
        image_list, _ = transform([torch.zeros(3, ch, cw)])
    transform.train(was_training)
    internal = tuple(int(s) for s in image_list.image_sizes[0])
    padded = tuple(int(s) for s in image_list.tensors.shape[-2:])
    if internal != tuple(spec.internal_size):
        msg = (
            f"anchors.py: preset {preset.name!r} says internal_size={tuple(spec.internal_size)}, but the "
            f"model's transform resizes the {ch}x{cw} crop to {internal}"
        )
        raise ValueError(msg)
    for name in ("mean", "std"):
        ours = tuple(float(v) for v in getattr(spec, name))
        theirs = tuple(float(v) for v in getattr(transform, f"image_{name}"))
        if not torch.allclose(torch.tensor(ours), torch.tensor(theirs)):
            msg = f"anchors.py: preset {preset.name!r} {name}={ours} differs from the model transform's {theirs}"
            raise ValueError(msg)
    return InputGeometry(crop, internal, padded, tuple(spec.mean), tuple(spec.std))


@dataclass(frozen=True)
class FeatureLayout:
    """FPN levels seen by the RPN and the RoI pooler for one fixed input.

    Attributes
    ----------
    names : tuple of str
        Backbone output keys, in order (the RPN uses all of them).
    anchors : tuple of Tensor
        Per level ``[H_l * W_l * A_l, 4]`` float32 anchors ``(x1, y1, x2, y2)`` in
        internal pixels, ordered (y, x, anchor) like the RPN head's flattened output.
    anchors_per_location : tuple of int
        ``A_l`` per level.
    pool_scales : tuple of float
        ``spatial_scale`` of each RoI-pooled level (``featmap_names`` of the pooler).
    pool_sizes : tuple of (int, int)
        ``(H_l, W_l)`` of each RoI-pooled level's map.
    pool_k_min, pool_k_max : int
        FPN level numbers of the first and last pooled level.
    """

    names: tuple[str, ...]
    anchors: tuple[Tensor, ...]
    anchors_per_location: tuple[int, ...]
    pool_scales: tuple[float, ...]
    pool_sizes: tuple[tuple[int, int], ...]
    pool_k_min: int
    pool_k_max: int


def probe_features(model: nn.Module, geometry: InputGeometry) -> FeatureLayout:
    """Run the backbone once on zeros to learn the FPN sizes; build anchors and pooler scales."""
    hp, wp = geometry.padded_size
    dummy = torch.zeros(1, 3, hp, wp, device=next(model.parameters()).device)  # the model may be on a GPU
    with torch.no_grad():
        features = model.backbone(dummy)
        maps = list(features.values())
        image_list = ImageList(dummy, [geometry.internal_size])
        all_anchors = model.rpn.anchor_generator(image_list, maps)[0]
    per_loc = tuple(int(a) for a in model.rpn.anchor_generator.num_anchors_per_location())
    counts = [int(m.shape[-2] * m.shape[-1]) * a for m, a in zip(maps, per_loc)]
    anchors = tuple(t.contiguous() for t in all_anchors.split(counts))
    pooler = model.roi_heads.box_roi_pool
    pooled = [features[name] for name in pooler.featmap_names]
    scales, mapper = _setup_scales(pooled, [geometry.internal_size], pooler.canonical_scale, pooler.canonical_level)
    return FeatureLayout(
        names=tuple(features.keys()),
        anchors=anchors,
        anchors_per_location=per_loc,
        pool_scales=tuple(float(s) for s in scales),
        pool_sizes=tuple((int(f.shape[-2]), int(f.shape[-1])) for f in pooled),
        pool_k_min=int(mapper.k_min),
        pool_k_max=int(mapper.k_max),
    )
