"""Galaxy Zoo: Clump Scout-style catalogues -> COCO detection records.

Input: one row per (galaxy, clump) with the consensus box in the pixels of the
galaxy's ``image_size`` x ``image_size`` PNG (400 for Clump Scout), columns
``x1, x2, y1, y2`` (x = column, y = row from the top of the PNG, pixel ``i``
spanning ``[i, i + 1)``), plus the volunteer statistics ``mean_tool``
(fraction of volunteers marking the clump as unusual) and ``false_pos_prob``.
A row with NaN coordinates stands for a galaxy without clumps (the layout of
the Popp et al. 2024 tables); galaxies may also be listed through
``galaxy_ids``. Galaxies left without boxes are **kept** as empty images.

Filters, in fractional image units ``u = x / image_size``, ``v = y / image_size``
of the box centre ``(xc, yc) = ((x1 + x2) / 2, (y1 + y2) / 2)``:

* **bulge**: dropped when ``|u - 0.5| <= centre_tol`` **and**
  ``|v - 0.5| <= centre_tol`` (a square of side ``2 * centre_tol`` around the
  image centre, where the galaxy is centred; ±0.02 = ±8 px at 400 px). The
  bulge is not a clump, but volunteers often mark it.
* **rim**: dropped when the centre lies within ``rim_margin`` of any edge
  (``u < rim_margin``, ``u > 1 - rim_margin``, same for ``v``) or the box
  leaves the image: such marks are usually neighbours or artefacts.

Label: ``odd_clump`` when ``mean_tool > odd_mean_tool`` (0.5) or
``false_pos_prob > odd_false_pos`` (0.7); otherwise ``clump``. Missing
``mean_tool`` / ``false_pos_prob`` columns count as 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

REQUIRED = ("x1", "x2", "y1", "y2")


def _column(table: Table, name: str, default: float) -> np.ndarray:
    if name in table.colnames:
        return np.asarray(np.ma.filled(table[name], np.nan), dtype=np.float64)
    return np.full(len(table), default, dtype=np.float64)


def clumpscout_to_coco(
    catalogue: Table | str | Path,
    *,
    galaxy_ids: Iterable[Any] | None = None,
    id_column: str = "zoo_id",
    file_name: str = "{galaxy_id}.png",
    image_size: int = 400,
    centre_tol: float = 0.02,
    rim_margin: float = 0.05,
    odd_mean_tool: float = 0.5,
    odd_false_pos: float = 0.7,
    class_names: Sequence[str] = ("clump", "odd_clump"),
) -> dict[str, Any]:
    """Turn a Clump Scout-style catalogue into a COCO detection dict.

    Parameters
    ----------
    catalogue : astropy.table.Table or path
        The clump table (any format :meth:`astropy.table.Table.read` reads).
    galaxy_ids : iterable, optional
        Every galaxy of the set, including those without clumps; defaults to
        the ids in the catalogue (first-appearance order).
    id_column : str
        Column holding the galaxy id.
    file_name : str
        Image path pattern relative to the data directory; ``{galaxy_id}`` is
        replaced by the id.
    image_size : int
        Side of the square PNG in pixels; the catalogue's units.
    centre_tol, rim_margin : float
        Bulge and rim filters (fractions of ``image_size``, see module docstring).
    odd_mean_tool, odd_false_pos : float
        Thresholds that make a box ``odd_clump``.
    class_names : sequence of str
        Names of category ids 1 (normal) and 2 (odd).

    Returns
    -------
    dict
        COCO dict: ``images`` (``id`` 1..N in ``galaxy_ids`` order, ``galaxy_id``,
        ``file_name``, ``width``, ``height``), ``annotations`` (``bbox`` as
        ``[x1, y1, w, h]``, ``category_id``, ``area``, ``iscrowd`` 0, plus the
        source ``mean_tool`` and ``false_pos_prob``), ``categories`` and ``info``
        (the filter parameters and the number of boxes each dropped).
    """
    table = catalogue if isinstance(catalogue, Table) else Table.read(catalogue)
    missing = [c for c in (id_column, *REQUIRED) if c not in table.colnames]
    if missing:
        msg = f"clumpscout.py: catalogue lacks column(s) {missing}; has {table.colnames}"
        raise ValueError(msg)
    if not 0 <= centre_tol < 0.5 or not 0 <= rim_margin < 0.5:
        msg = f"clumpscout.py: need 0 <= centre_tol, rim_margin < 0.5, got {centre_tol}, {rim_margin}"
        raise ValueError(msg)
    if len(class_names) != 2:
        msg = f"clumpscout.py: class_names must name (normal, odd), got {tuple(class_names)}"
        raise ValueError(msg)
    ids = [_plain(v) for v in table[id_column]]
    x1, x2, y1, y2 = (_column(table, c, np.nan) for c in REQUIRED)
    mean_tool = np.nan_to_num(_column(table, "mean_tool", 0.0), nan=0.0)
    false_pos = np.nan_to_num(_column(table, "false_pos_prob", 0.0), nan=0.0)

    order = list(dict.fromkeys(ids)) if galaxy_ids is None else [_plain(g) for g in galaxy_ids]
    if len(set(order)) != len(order):
        msg = "clumpscout.py: galaxy_ids contains duplicates"
        raise ValueError(msg)
    coco_id = {g: i + 1 for i, g in enumerate(order)}
    unknown = sorted({str(g) for g in ids if g not in coco_id})
    if unknown:
        msg = f"clumpscout.py: catalogue galaxies missing from galaxy_ids: {unknown[:5]}"
        raise ValueError(msg)

    has_box = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y1) & np.isfinite(y2)
    bx1, bx2 = np.minimum(x1, x2), np.maximum(x1, x2)
    by1, by2 = np.minimum(y1, y2), np.maximum(y1, y2)
    u = (bx1 + bx2) / 2 / image_size
    v = (by1 + by2) / 2 / image_size
    bulge = has_box & (np.abs(u - 0.5) <= centre_tol) & (np.abs(v - 0.5) <= centre_tol)
    outside = (bx1 < 0) | (by1 < 0) | (bx2 > image_size) | (by2 > image_size)
    near_edge = (u < rim_margin) | (u > 1 - rim_margin) | (v < rim_margin) | (v > 1 - rim_margin)
    rim = has_box & ~bulge & (outside | near_edge)
    empty = has_box & ~bulge & ~rim & (((bx2 - bx1) <= 0) | ((by2 - by1) <= 0))
    keep = has_box & ~bulge & ~rim & ~empty
    odd = (mean_tool > odd_mean_tool) | (false_pos > odd_false_pos)

    images = [
        {
            "id": coco_id[g],
            "galaxy_id": g,
            "file_name": file_name.format(galaxy_id=g),
            "width": int(image_size),
            "height": int(image_size),
        }
        for g in order
    ]
    annotations = []
    for row in np.flatnonzero(keep):
        w, h = float(bx2[row] - bx1[row]), float(by2[row] - by1[row])
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": coco_id[ids[row]],
                "category_id": 2 if odd[row] else 1,
                "bbox": [float(bx1[row]), float(by1[row]), w, h],
                "area": w * h,
                "iscrowd": 0,
                "mean_tool": float(mean_tool[row]),
                "false_pos_prob": float(false_pos[row]),
            }
        )
    return {
        "info": {
            "description": "Clump Scout-style catalogue converted by clumpdet",
            "image_size": int(image_size),
            "centre_tol": centre_tol,
            "rim_margin": rim_margin,
            "odd_mean_tool": odd_mean_tool,
            "odd_false_pos": odd_false_pos,
            "dropped_bulge": int(bulge.sum()),
            "dropped_rim": int(rim.sum()),
            "dropped_degenerate": int(empty.sum()),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }


def write_coco(coco: dict[str, Any], path: str | Path) -> Path:
    """Write a COCO dict as JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco, indent=1))
    return path


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (JSON-able, hashable, equal across sources)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    return value
