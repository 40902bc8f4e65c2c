"""Multi-scale RoIAlign without ``If``, ``Loop`` or ``ScatterElements``.

torchvision's ``MultiScaleRoIAlign`` assigns each RoI an FPN level (FPN paper eq. 1,
its ``LevelMapper``), pools each level's RoIs separately and scatters the results
back into one tensor; exported, that becomes ``If`` nodes (TensorRT rejects them)
or ``ScatterElements`` (36% of ONNX Runtime time in a prototype). Two fixed-shape
re-expressions are offered (``merge``):

``"canvas"`` (default)
    The pooled levels are laid out side by side on a few canvases per image
    (level 0 alone, the smaller levels packed in a row on the next canvas), and
    every RoI is pooled *once* by one ``RoiAlign`` whose batch index selects its
    image's canvas and whose coordinates are pre-scaled to its level and shifted
    to its place on the canvas (``spatial_scale=1``). Each level keeps a copy of
    its last row and column next to it, then zeros, which reproduces torchvision's
    border rule (samples in ``(size - 1, size]`` take the last row/column).
    Differences from torchvision: float32 rounding of the canvas offset (shifted
    levels only, ~1e-5 px), and samples beyond a level's edge (``(size, size + 1)``,
    reachable only by RoIs narrower than one feature pixel at the bottom/right
    image border, widened to 1 by the ``aligned=False`` rule) read
    ``(1 - frac) * last`` instead of 0.
``"gather"``
    Each level pools only its own RoIs (``NonZero`` + ``Gather``, one ``RoiAlign``
    per level, so every RoI is pooled once), the pooled rows are concatenated
    level by level and put back in RoI order by one ``Gather`` whose indices are
    computed with fixed shapes (``CumSum`` of the level one-hot: rows on lower
    levels plus the RoI's rank on its own level). torchvision's semantics
    exactly; the only data-dependent shapes are the per-level RoI counts, which
    ONNX Runtime and TensorRT (``INonZeroLayer``) both run. No ``ScatterElements``.
``"where"``
    Every RoI pooled on every level (``L`` ``RoiAlign`` calls) and the assigned
    level picked by an element-wise ``Where`` chain: torchvision's semantics
    exactly, at ``L`` times the pooling cost (26% of ORT time for popp2024, plus
    8% in the ``Where`` chain). Kept as the plainest graph for debugging.
``"auto"`` (default)
    ``"canvas"`` where it is exact, else ``"gather"``: exact when no RoI can
    sample beyond its level's map, i.e. on every level either the map extends at
    least one feature pixel past the (unpadded) image, or the level's smallest
    possible RoI (from its area range in the FPN level rule and the image size)
    is at least one feature pixel on each side. True for ``native`` (200 px in a
    224 px padded frame), false for ``popp2024`` (800 px, no padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from clumpdet.export.anchors import FeatureLayout

MERGES = ("auto", "canvas", "gather", "where")


class RoiAlignFixed(nn.Module):
    """Pool ``[N, P]`` proposals from the FPN levels named by the model's pooler.

    Parameters
    ----------
    pooler : torchvision.ops.MultiScaleRoIAlign
        The model's ``roi_heads.box_roi_pool`` (``featmap_names``, ``output_size``,
        ``sampling_ratio``, ``canonical_scale``, ``canonical_level``).
    layout : FeatureLayout
        Pooled-level scales, sizes and level range for the fixed input.
    merge : {"auto", "canvas", "where"}
        How the levels are combined (module docstring); ``self.merge`` holds the
        resolved choice.
    internal_size : tuple of int
        ``(height, width)`` of the unpadded image in the internal frame (for "auto").
    """

    def __init__(
        self, pooler: nn.Module, layout: FeatureLayout, internal_size: tuple[int, int], merge: str = "auto"
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            msg = f"roi_fixed.py: merge must be one of {MERGES}, got {merge!r}"
            raise ValueError(msg)
        self.featmap_names = tuple(pooler.featmap_names)
        self.output_size = tuple(int(s) for s in pooler.output_size)
        self.sampling_ratio = int(pooler.sampling_ratio)
        self.scales = layout.pool_scales
        self.mapper = LevelMapper(
            layout.pool_k_min, layout.pool_k_max, pooler.canonical_scale, pooler.canonical_level
        )
        if merge == "auto":
            exact = canvas_is_exact(layout, internal_size, pooler.canonical_scale, pooler.canonical_level)
            merge = "canvas" if exact else "gather"
        self.merge = merge
        sizes = layout.pool_sizes
        self.canvas_size = (sizes[0][0] + 2, sizes[0][1] + 2)  # level 0, its edge copy, one zero gap
        self.placement = _pack(sizes, self.canvas_size)  # per level: (canvas index, x offset)
        self.num_canvases = 1 + max(c for c, _ in self.placement)
        self.register_buffer("level_scale", torch.tensor(self.scales, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "level_xoff", torch.tensor([float(x) for _, x in self.placement], dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "level_canvas", torch.tensor([c for c, _ in self.placement], dtype=torch.int64), persistent=False
        )

    def forward(self, features: dict[str, Tensor], proposals: Tensor) -> Tensor:
        """Pool.

        Parameters
        ----------
        features : dict of str to Tensor
            FPN maps ``[N, C, H_l, W_l]`` (internal frame, padded).
        proposals : Tensor
            ``[N, P, 4]`` float32 ``(x1, y1, x2, y2)`` in internal pixels.

        Returns
        -------
        Tensor
            ``[N * P, C, h, w]`` float32, row ``n * P + p`` for proposal ``p`` of image ``n``.
        """
        n, p = proposals.shape[0], proposals.shape[1]
        boxes = proposals.reshape(-1, 4)
        image = torch.arange(n, device=boxes.device)[:, None].expand(n, p).reshape(-1)  # [N*P]
        levels = self.mapper([boxes])  # [N*P] int64 in [0, L)
        maps = [features[name] for name in self.featmap_names]
        if self.merge == "where":
            return self._where(maps, boxes, image, levels)
        if self.merge == "gather":
            return self._gather(maps, boxes, image, levels)
        scaled = boxes * self.level_scale[levels][:, None]
        shift = torch.stack([self.level_xoff[levels], torch.zeros_like(scaled[:, 0])], dim=1).repeat(1, 2)
        batch = image * self.num_canvases + self.level_canvas[levels]
        rois = torch.cat([batch[:, None].to(boxes.dtype), scaled + shift], dim=1)
        return roi_align(
            self._canvases(maps), rois, self.output_size, spatial_scale=1.0,
            sampling_ratio=self.sampling_ratio, aligned=False,
        )

    def _canvases(self, maps: list[Tensor]) -> Tensor:
        """``[N * S, C, Hc, Wc]``: the S canvases of each image, image-major."""
        hc, wc = self.canvas_size
        canvases = []
        for c in range(self.num_canvases):
            row = [_edge_padded(m, hc) for m, (cc, _) in zip(maps, self.placement) if cc == c]
            strip = torch.cat(row, dim=3)
            canvases.append(F.pad(strip, (0, wc - strip.shape[3])))
        stacked = torch.stack(canvases, dim=1)  # [N, S, C, Hc, Wc]
        return stacked.reshape(-1, *stacked.shape[2:])

    def _gather(self, maps, boxes, image, levels) -> Tensor:
        rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)
        pooled = []
        for lvl, (m, s) in enumerate(zip(maps, self.scales)):
            mine = torch.nonzero(levels == lvl).squeeze(1)  # ascending RoI indices of this level
            pooled.append(roi_align(m, rois[mine], self.output_size, spatial_scale=s,
                                    sampling_ratio=self.sampling_ratio, aligned=False))
        stacked = torch.cat(pooled, dim=0)  # level-major, RoI order within a level
        onehot = (levels[:, None] == torch.arange(len(maps), device=levels.device)).to(torch.int64)  # [R, L]
        earlier = onehot.cumsum(0) - onehot  # RoIs before this one on each level
        counts = onehot.sum(0)
        row = ((earlier + (counts.cumsum(0) - counts)) * onehot).sum(1)  # this RoI's row in ``stacked``
        return stacked[row]

    def _where(self, maps, boxes, image, levels) -> Tensor:
        rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)
        pooled = [
            roi_align(m, rois, self.output_size, spatial_scale=s, sampling_ratio=self.sampling_ratio, aligned=False)
            for m, s in zip(maps, self.scales)
        ]
        out = pooled[-1]
        for lvl in range(len(pooled) - 2, -1, -1):
            out = torch.where((levels == lvl)[:, None, None, None], pooled[lvl], out)
        return out


def canvas_is_exact(
    layout: FeatureLayout, internal_size: tuple[int, int], canonical_scale: float, canonical_level: int
) -> bool:
    """Whether ``"canvas"`` pooling equals torchvision's for every possible RoI (module docstring)."""
    ih, iw = internal_size
    for i, ((h, w), scale) in enumerate(zip(layout.pool_sizes, layout.pool_scales)):
        if ih * scale + 1 <= h and iw * scale + 1 <= w:
            continue
        if i == 0:
            return False
        # RoIs on level k have sqrt(area) >= canonical_scale * 2 ** (k - canonical_level) (1% margin
        # for the mapper's eps); their shorter side is at least area / (longest possible side).
        k = layout.pool_k_min + i
        min_area = (0.99 * canonical_scale * 2.0 ** (k - canonical_level)) ** 2
        if min_area / max(ih, iw) * scale < 1:
            return False
    return True


def _edge_padded(m: Tensor, height: int) -> Tensor:
    """``[N, C, H, W]`` → ``[N, C, height, W + 2]``: last row/column repeated once, then zeros."""
    m = torch.cat([m, m[:, :, -1:, :]], dim=2)
    m = torch.cat([m, m[:, :, :, -1:]], dim=3)
    return F.pad(m, (0, 1, 0, height - m.shape[2]))


def _pack(sizes: tuple[tuple[int, int], ...], canvas: tuple[int, int]) -> list[tuple[int, int]]:
    """Shelf-pack levels (each ``W + 2`` wide) left to right; level 0 fills canvas 0."""
    placement, c, x = [], 0, 0
    for h, w in sizes:
        if h + 1 > canvas[0] or w + 2 > canvas[1]:
            msg = f"roi_fixed.py: FPN level {h}x{w} is larger than the first pooled level {canvas}"
            raise ValueError(msg)
        if x + w + 2 > canvas[1]:
            c, x = c + 1, 0
        placement.append((c, x))
        x += w + 2
    return placement
