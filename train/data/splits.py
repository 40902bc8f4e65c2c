"""Seeded train/validation/test split, stratified by the number of clumps per image.

Stratification follows what the Popp et al. (2024) data preparation suggests:
a 70:20:10 split of galaxies ("typical split of 70:20:10" in the authors'
``Data_preparation.ipynb``); we stratify on the number of labelled objects
per image (capped at ``max_count``, so 0, 1, ..., ``max_count`` or more form
the strata) so that empty, single-clump and many-clump galaxies appear in the
same proportions in every subset. (We could not confirm the authors' exact
stratification variable from their public code; this choice is ours.)

Within each stratum the images are shuffled with ``numpy.random.default_rng(seed)``
and then assigned by systematic sampling: the ``i``-th of ``n`` images gets
``u = (i + offset) / n`` with a random ``offset`` in [0, 1), and goes to the
first subset whose cumulative fraction exceeds ``u``. Every stratum is thus
split in the requested proportions to within one image per subset.
Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(
    counts: Sequence[int],
    fractions: Sequence[float] = (0.7, 0.2, 0.1),
    *,
    seed: int = 0,
    max_count: int = 5,
) -> list[np.ndarray]:
    """Split item indices into subsets stratified by ``min(count, max_count)``.

    Parameters
    ----------
    counts : sequence of int
        Number of objects per item (image), length ``N``.
    fractions : sequence of float
        Target fraction of each subset; must be >= 0 and sum to 1.
    seed : int
        Seed of the shuffle; the same inputs and seed give the same split.
    max_count : int
        Counts ``>= max_count`` share one stratum.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array per fraction; together a partition of ``range(N)``.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim != 1 or len(frac) == 0 or np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        msg = f"splits.py: fractions must be >= 0 and sum to 1, got {tuple(fractions)}"
        raise ValueError(msg)
    counts_arr = np.asarray(counts, dtype=np.int64).reshape(-1)
    if np.any(counts_arr < 0):
        msg = "splits.py: counts must be >= 0"
        raise ValueError(msg)
    strata = np.minimum(counts_arr, max_count)
    rng = np.random.default_rng(seed)
    edges = np.cumsum(frac)
    edges[-1] = np.inf  # guard against rounding
    parts: list[list[int]] = [[] for _ in frac]
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(len(members))]
        offset = rng.random()
        u = (np.arange(len(members)) + offset) / len(members)
        which = np.searchsorted(edges, u, side="right")
        for k in range(len(frac)):
            parts[k].extend(members[which == k].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def split_coco(
    coco: dict[str, Any],
    fractions: Sequence[float] = (0.7, 0.2, 0.1),
    *,
    seed: int = 0,
    max_count: int = 5,
    names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, dict[str, Any]]:
    """Split a COCO dict by image, stratified by annotations per image.

    Returns ``{name: coco_subset}``; each subset keeps ``categories`` and any
    other top-level keys, and holds its images (in the original order) and
    their annotations.
    """
    if len(names) != len(fractions):
        msg = f"splits.py: {len(names)} names for {len(fractions)} fractions"
        raise ValueError(msg)
    per_image: dict[int, int] = {int(im["id"]): 0 for im in coco["images"]}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[int(ann["image_id"])] = per_image.get(int(ann["image_id"]), 0) + 1
    counts = [per_image[int(im["id"])] for im in coco["images"]]
    parts = stratified_split(counts, fractions, seed=seed, max_count=max_count)
    out: dict[str, dict[str, Any]] = {}
    for name, idx in zip(names, parts):
        images = [coco["images"][i] for i in idx]
        ids = {int(im["id"]) for im in images}
        subset = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
        subset["images"] = images
        subset["annotations"] = [a for a in coco["annotations"] if int(a["image_id"]) in ids]
        out[name] = subset
    return out
