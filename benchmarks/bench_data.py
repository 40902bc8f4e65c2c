"""Benchmark inputs: image files, their decoded model inputs, and truth when there is any.

Three kinds of image set (issue 5, item 1):

* a directory written by ``clumpdet simulate`` (``annotations.json`` with clump
  flux fractions; the 400x400 Lupton PNGs under ``png/``, FITS under ``fits/``);
* the user's FITS/PNG files plus a COCO JSON truth file (``bbox`` as
  ``[x, y, w, h]`` in image pixels, ``file_name`` relative to the JSON's folder;
  an optional ``flux_fraction`` per annotation feeds the binned completeness);
* unlabelled files (parity and speed only; no quality columns).

Truth boxes are ``(x1, y1, x2, y2)``, pixel ``i`` spanning ``[i, i + 1)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clumpdet.engine.inputs import expand_inputs
from clumpdet.engine.metrics import Truth

#: Images set aside (after the benchmark's own) to calibrate int8.
N_CALIB = 16


@dataclass(frozen=True)
class ImageSet:
    """The images of one benchmark run.

    Parameters
    ----------
    name : str
        Where they came from (a directory or a file list).
    paths : list of str
        One file per image (PNG, or a FITS cube), in benchmark order.
    truths : list of Truth or None
        One per path, ``values["flux_fraction"]`` (``nan`` where unknown); ``None``
        for unlabelled images.
    fits_paths : list of str or None
        FITS of the same images (simulated sets), for the ``sep`` baseline.
    calib_paths : list of str
        Other images of the same set for int8 calibration (empty when the set has no
        more images; the benchmark images are then used and the report says so).
    """

    name: str
    paths: list[str]
    truths: list[Truth] | None
    fits_paths: list[str] | None = None
    calib_paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def coco_truths(coco: dict, root: Path) -> tuple[list[str], list[str | None], list[Truth]]:
    """Image paths, FITS paths (or None) and per-image :class:`Truth` of a COCO dict under ``root``.

    ``values["flux_fraction"]`` holds each clump's flux fraction; ``nan`` for other classes and
    where the annotation has none (so per-bin completeness counts clumps only).
    """
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco.get("annotations", []):
        if ann["image_id"] not in by_image:
            msg = f"bench_data.py: annotation {ann.get('id')} names unknown image_id {ann['image_id']}"
            raise ValueError(msg)
        by_image[ann["image_id"]].append(ann)
    paths, fits_paths, truths = [], [], []
    for im in coco["images"]:
        anns = by_image[im["id"]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float64).reshape(-1, 4)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        ff = np.array([float(a["flux_fraction"]) if "flux_fraction" in a and a["category_id"] == 1 else np.nan
                       for a in anns])
        truths.append(Truth(boxes, labels, values={"flux_fraction": ff}))
        paths.append(str(root / im["file_name"]))
        fits_paths.append(str(root / im["fits_file"]) if "fits_file" in im else None)
    return paths, fits_paths, truths


def load_image_set(source: str, *, truth: str | None = None, n_images: int | None = None,
                   use_fits: bool = False) -> ImageSet:
    """Resolve ``source`` into an :class:`ImageSet` of at most ``n_images`` images.

    Parameters
    ----------
    source : str
        A ``clumpdet simulate`` directory (has ``annotations.json``), or files /
        globs / directories / ``@lists`` of images.
    truth : str, optional
        COCO JSON truth for user images; its ``images[].file_name`` (relative to
        the JSON's folder) replaces ``source``'s listing.
    n_images : int, optional
        Keep the first ``n_images`` (in the truth file's or sorted order).
    use_fits : bool
        Simulated sets: benchmark the FITS files (Lupton stretch in the timed
        decode) instead of the PNGs.
    """
    root = Path(source)
    coco_path = Path(truth) if truth else (root / "annotations.json" if root.is_dir() else None)
    if coco_path is not None and coco_path.is_file():
        coco = json.loads(coco_path.read_text())
        paths, fits_paths, truths = coco_truths(coco, coco_path.parent)
        if use_fits:
            if any(f is None for f in fits_paths):
                msg = f"bench_data.py: {coco_path} lacks 'fits_file' entries; cannot benchmark FITS input"
                raise ValueError(msg)
            paths = list(fits_paths)
        n = len(paths) if n_images is None else n_images
        have_fits = all(f is not None for f in fits_paths)
        return ImageSet(str(coco_path.parent), paths[:n], truths[:n], fits_paths[:n] if have_fits else None,
                        paths[n:n + N_CALIB])
    if truth:
        msg = f"bench_data.py: truth file {truth!r} does not exist"
        raise ValueError(msg)
    sources = expand_inputs([source], ("g", "r", "i"))
    ids = [s.id for s in sources]
    n = len(ids) if n_images is None else n_images
    if not ids:
        msg = f"bench_data.py: no images found in {source!r}"
        raise ValueError(msg)
    return ImageSet(source, ids[:n], None, None, ids[n:n + N_CALIB])


def decode_all(paths: list[str], spec) -> np.ndarray:
    """Decode every file with the engine's reader: float32 ``[N, 3, H, W]`` RGB in [0, 1]."""
    from clumpdet.engine.readers import read_cutout

    return np.stack([read_cutout(p, spec).image for p in paths]).astype(np.float32)
