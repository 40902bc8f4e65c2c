"""A torch ``Dataset`` over a COCO detection set: JSON annotations plus PNG images.

Items are exactly what the engine feeds a model: the PNG is read with Pillow
as RGB uint8 and turned into the input by
:func:`clumpdet.engine.preprocess.rgb_uint8_to_input`. Items stay in the
**input frame** (the full image; boxes in its pixels). The preset's internal
crop is applied later, by :mod:`clumpdet.train.data.crop` in the training
collate, and inside ``predict()`` at inference.

COCO conventions used: ``bbox = [x, y, w, h]`` with ``(x, y)`` the top-left
corner of the box in pixel-edge coordinates (pixel ``i`` spans ``[i, i+1)``),
so ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``. Categories are mapped to label
ids by **name** against the preset's ``class_names`` (index = label id), so a
COCO file's own category ids never leak into the model. Annotations with
``iscrowd = 1`` or a non-positive side are skipped. Images without
annotations are kept (they teach the detector what is not a clump).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clumpdet.engine.preprocess import rgb_uint8_to_input

#: File name the simulator and the Clump Scout adapter write.
DEFAULT_ANNOTATIONS = "annotations.json"


def load_coco(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a COCO detection JSON file.

    Returns the parsed dict with ``images``, ``annotations`` and ``categories``.
    """
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"coco.py: cannot read COCO annotations {path}: {err}"
        raise ValueError(msg) from err
    for key in ("images", "annotations", "categories"):
        if key not in coco or not isinstance(coco[key], list):
            msg = f"coco.py: {path} has no list {key!r}; not a COCO detection file"
            raise ValueError(msg)
    return coco


def coco_boxes_labels(
    coco: dict[str, Any], class_names: Sequence[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Boxes and labels per image id.

    Returns
    -------
    dict
        ``image_id -> (boxes, labels)``: ``boxes`` float32 ``(K, 4)`` as
        ``(x1, y1, x2, y2)`` in image pixels, ``labels`` int64 ``(K,)`` indexing
        ``class_names``. Every image id of ``coco["images"]`` is present.
    """
    name_to_label = {name: i for i, name in enumerate(class_names) if i > 0}
    cat_to_label: dict[int, int] = {}
    for cat in coco["categories"]:
        if cat["name"] not in name_to_label:
            msg = (
                f"coco.py: category {cat['name']!r} (id {cat['id']}) is not one of the "
                f"preset's classes {tuple(class_names[1:])}"
            )
            raise ValueError(msg)
        cat_to_label[int(cat["id"])] = name_to_label[cat["name"]]
    per_image: dict[int, tuple[list[list[float]], list[int]]] = {
        int(im["id"]): ([], []) for im in coco["images"]
    }
    for ann in coco["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in per_image:
            msg = f"coco.py: annotation {ann.get('id')} refers to unknown image id {image_id}"
            raise ValueError(msg)
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        per_image[image_id][0].append([x, y, x + w, y + h])
        per_image[image_id][1].append(cat_to_label[int(ann["category_id"])])
    return {
        k: (np.asarray(b, dtype=np.float32).reshape(-1, 4), np.asarray(lab, dtype=np.int64))
        for k, (b, lab) in per_image.items()
    }


def read_png_input(path: str | Path) -> np.ndarray:
    """Read an image file as the model input: float32 ``(3, H, W)`` RGB in [0, 1]."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return rgb_uint8_to_input(rgb)


class CocoDetection(torch.utils.data.Dataset):
    """COCO images and boxes, in the input frame.

    Parameters
    ----------
    root : str or Path
        Directory holding the annotations file; image ``file_name`` values are
        relative to it.
    class_names : sequence of str
        The preset's class names (index 0 = background).
    annotations : str or Path, optional
        Annotations file, relative to ``root`` unless absolute
        (default ``annotations.json``).
    coco : dict, optional
        An already-loaded COCO dict (e.g. one split of
        :func:`clumpdet.train.data.splits.split_coco`); overrides ``annotations``.
    image_size : tuple of int, optional
        ``(height, width)`` every image must have (the preset's input size);
        a mismatch raises ``ValueError``.
    max_images : int, optional
        Keep only the first ``max_images`` images (in file order).

    Notes
    -----
    ``dataset[i]`` returns ``(image, target)``: ``image`` a float32 tensor
    ``[3, H, W]`` in [0, 1]; ``target`` a dict with ``boxes`` float32 ``[K, 4]``
    (x1, y1, x2, y2, input pixels), ``labels`` int64 ``[K]`` and ``image_id``
    int64 scalar (the COCO image id).
    """

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str],
        *,
        annotations: str | Path = DEFAULT_ANNOTATIONS,
        coco: dict[str, Any] | None = None,
        image_size: tuple[int, int] | None = None,
        max_images: int | None = None,
    ) -> None:
        self.root = Path(root)
        if coco is None:
            ann_path = Path(annotations)
            coco = load_coco(ann_path if ann_path.is_absolute() else self.root / ann_path)
        images = list(coco["images"])
        if max_images is not None:
            if max_images < 1:
                msg = f"coco.py: max_images must be >= 1, got {max_images}"
                raise ValueError(msg)
            images = images[:max_images]
        self.coco = coco
        self.images = images
        self.class_names = tuple(class_names)
        self.image_size = image_size
        self._targets = coco_boxes_labels(coco, self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def boxes_labels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Truth of item ``index`` without reading its image: ``(boxes (K, 4), labels (K,))``."""
        return self._targets[int(self.images[index]["id"])]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[index]
        path = self.root / info["file_name"]
        try:
            image = read_png_input(path)
        except (OSError, ValueError) as err:
            msg = f"coco.py: cannot read image {path}: {err}"
            raise ValueError(msg) from err
        if self.image_size is not None and tuple(image.shape[1:]) != tuple(self.image_size):
            msg = (
                f"coco.py: image {path} is {image.shape[2]}x{image.shape[1]} (WxH) but the "
                f"preset expects {self.image_size[1]}x{self.image_size[0]}"
            )
            raise ValueError(msg)
        boxes, labels = self.boxes_labels(index)
        target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": torch.tensor(int(info["id"]), dtype=torch.int64),
        }
        return torch.from_numpy(image), target
