"""Overlay PNGs: the model's input with its detections drawn, one colour per class."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, ImageDraw

from clumpdet.engine.metrics import Detections

#: Colour of class id ``k`` is ``PALETTE[(k - 1) % len(PALETTE)]`` (id 0 is background).
PALETTE = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (255, 128, 0), (80, 160, 255),
           (255, 80, 80), (255, 255, 255))


def class_colour(label_id: int) -> tuple[int, int, int]:
    """RGB colour of a class id."""
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


def overlay_name(source_id: str) -> str:
    """A flat, filesystem-safe PNG name for a source id (separators and other symbols become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", source_id).strip("._") or "image"
    return f"{name}.png"


def overlay_names(source_ids: list[str]) -> dict[str, str]:
    """PNG names for a job: the file name (``x.fits`` -> ``x.fits.png``) where unique, else the whole id."""
    short = {sid: overlay_name(os.path.basename(sid)) for sid in source_ids}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    return {sid: name if counts[name] == 1 else overlay_name(sid) for sid, name in short.items()}


def render_overlay(image: np.ndarray, detections: Detections, class_names: tuple[str, ...],
                   scale: int = 2, labels: bool = True) -> Image.Image:
    """Draw detections on a model input.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(3, H, W)`` RGB in [0, 1] (:attr:`Cutout.image`), numpy row/column order.
    detections : Detections
        Boxes ``(x1, y1, x2, y2)`` in model-input pixels, pixel ``i`` spanning ``[i, i + 1)``.
    class_names : tuple of str
        Names by label id, for the box captions.
    scale : int
        Nearest-neighbour magnification, so that small boxes stay visible.
    labels : bool
        Write ``name score`` above each box.

    Returns
    -------
    PIL.Image.Image
        RGB image of size ``(W * scale, H * scale)``.
    """
    rgb = np.clip(np.rint(np.asarray(image).transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    for (x1, y1, x2, y2), score, lab in zip(detections.boxes, detections.scores, detections.labels):
        colour = class_colour(lab)
        box = [x1 * scale, y1 * scale, max(x2 * scale - 1, x1 * scale), max(y2 * scale - 1, y1 * scale)]
        draw.rectangle(box, outline=colour, width=max(1, scale))
        if labels:
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            draw.text((box[0], max(box[1] - 11, 0)), f"{name} {score:.2f}", fill=colour)
    return im


def write_overlay(path: str, image: np.ndarray, detections: Detections, class_names: tuple[str, ...],
                  scale: int = 2) -> None:
    """Render (:func:`render_overlay`) and save as PNG, creating the directory if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    render_overlay(image, detections, class_names, scale=scale).save(path, format="PNG")
