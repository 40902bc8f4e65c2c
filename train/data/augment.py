"""Random flips and 90-degree rotations of an image and its boxes.

Galaxy cutouts have no preferred orientation, so the eight symmetries of the
square (identity, flips, rotations by multiples of 90 degrees) are all valid
training views. Boxes are ``(x1, y1, x2, y2)`` float tensors ``[K, 4]`` in the
image's own pixels, pixel ``i`` spanning ``[i, i + 1)``; images are tensors
``[C, H, W]`` (row = y, column = x). Randomness comes only from the
``torch.Generator`` passed in, so a seeded generator gives reproducible views.
"""

from __future__ import annotations

import torch


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left-right: ``x -> W - x``."""
    width = image.shape[-1]
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return image.flip(-1), out


def vflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror top-bottom: ``y -> H - y``."""
    height = image.shape[-2]
    out = boxes.clone()
    out[:, 1] = height - boxes[:, 3]
    out[:, 3] = height - boxes[:, 1]
    return image.flip(-2), out


def rot90(image: torch.Tensor, boxes: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``k`` quarter turns as :func:`torch.rot90` with ``dims=(-2, -1)``.

    One turn maps pixel ``(row r, col c)`` of a ``H x W`` image to
    ``(row W - 1 - c, col r)`` of the ``W x H`` result, i.e. in edge
    coordinates ``x' = y`` and ``y' = W - x``.
    """
    k = int(k) % 4
    for _ in range(k):
        width = image.shape[-1]
        out = torch.stack(
            [boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], dim=1
        )
        image = torch.rot90(image, 1, dims=(-2, -1))
        boxes = out
    return image, boxes


class RandomFlipRotate:
    """Apply a random element of the square's symmetry group.

    Parameters
    ----------
    hflip, vflip : bool
        Allow random horizontal / vertical flips (each with probability 1/2).
    rotate : bool
        Allow a random number (0-3, uniform) of quarter turns.

    With all three enabled, each of the 8 symmetries has probability 1/8.
    """

    def __init__(self, *, hflip: bool = True, vflip: bool = True, rotate: bool = True) -> None:
        self.hflip = hflip
        self.vflip = vflip
        self.rotate = rotate

    def __call__(
        self, image: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the transformed ``(image [C, H', W'], boxes [K, 4])``."""
        draws = torch.randint(0, 4, (3,), generator=generator).tolist()
        if self.hflip and draws[0] % 2:
            image, boxes = hflip(image, boxes)
        if self.vflip and draws[1] % 2:
            image, boxes = vflip(image, boxes)
        if self.rotate and draws[2]:
            image, boxes = rot90(image, boxes, draws[2])
        return image.contiguous(), boxes
