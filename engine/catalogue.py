"""Catalogue and per-image summary tables (DESIGN §5), and their writers.

Pixel convention of the catalogue: the **original image's** pixels, 0-indexed,
pixel centres at integers (astropy/photutils): a model box edge ``x_box``
(model-input pixels, pixel ``i`` spanning ``[i, i + 1)``) becomes
``x = x_box + x0 - 0.5``, ``(x0, y0)`` the crop/pad offset of the cutout
(:attr:`clumpdet.engine.readers.Cutout.offset`). ``x_centroid, y_centroid``
are the box centres. ``ra, dec`` (deg, ICRS) come from
``wcs.pixel_to_world(x_centroid, y_centroid)`` and are NaN for images
without a celestial WCS; the columns exist when any image of the job has one.
Boxes are not clipped: on a padded image a box may reach past the original edge.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile

import numpy as np
from astropy.table import Table, vstack

from clumpdet.engine import __version__
from clumpdet.engine.runner import ImageResult

CATALOGUE_COLUMNS = ("image", "det_id", "label", "label_id", "score", "x_min", "y_min", "x_max", "y_max",
                     "x_centroid", "y_centroid", "ra", "dec", "flags")
SUMMARY_COLUMNS = ("image", "status", "reason", "n_dets", "flags", "orig_height", "orig_width",
                   "x_offset", "y_offset", "has_wcs")
_PIX = ("x_min", "y_min", "x_max", "y_max", "x_centroid", "y_centroid")
#: Output formats by file extension.
FORMATS = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".ecsv": "ascii.ecsv", ".csv": "ascii.csv",
           ".parquet": "parquet"}


def table_format(path: str) -> str:
    """astropy format name for ``path``'s extension; ``ValueError`` if unknown or unavailable."""
    lower = path.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            if fmt == "parquet":
                try:
                    import pyarrow  # noqa: F401
                except ImportError:
                    msg = f"{path}: writing Parquet needs pyarrow (pip install pyarrow), or use .fits/.ecsv/.csv"
                    raise ValueError(msg) from None
            return fmt
    msg = f"{path}: unknown table format; use one of {', '.join(FORMATS)}"
    raise ValueError(msg)


def write_table(table: Table, path: str) -> None:
    """Write ``table`` by extension, atomically (temporary file, then rename)."""
    fmt = table_format(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = next(ext for ext in FORMATS if path.lower().endswith(ext))
    fd, tmp = tempfile.mkstemp(prefix=".clumpdet-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        table.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_table(path: str) -> Table:
    """Read a catalogue or summary written by :func:`write_table` (NaN stays NaN, not masked)."""
    fmt = table_format(path)
    return Table.read(path, format=fmt, **({"mask_invalid": False} if fmt == "fits" else {}))


def _image_rows(result: ImageResult, class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    det, cut = result.detections, result.cutout
    n = len(det)
    x0, y0 = cut.offset
    b = det.boxes
    xs = (b[:, [0, 2]] + x0 - 0.5, b[:, [1, 3]] + y0 - 0.5)
    labels = det.labels.astype(np.int64)
    names = np.array([class_names[i] if 0 <= i < len(class_names) else f"class_{i}" for i in labels], dtype=str)
    xc, yc = xs[0].mean(axis=1), xs[1].mean(axis=1)
    ra = dec = np.full(n, np.nan)
    if cut.wcs is not None and n:
        sky = cut.wcs.pixel_to_world(xc, yc).icrs
        ra, dec = np.asarray(sky.ra.deg, dtype=np.float64), np.asarray(sky.dec.deg, dtype=np.float64)
    return {
        "image": np.full(n, result.source, dtype=object), "det_id": np.arange(n, dtype=np.int32),
        "label": names.astype(object), "label_id": labels.astype(np.int32),
        "score": det.scores.astype(np.float32),
        "x_min": xs[0][:, 0], "y_min": xs[1][:, 0], "x_max": xs[0][:, 1], "y_max": xs[1][:, 1],
        "x_centroid": xc, "y_centroid": yc, "ra": ra, "dec": dec,
        "flags": np.full(n, ",".join(cut.flags), dtype=object),
    }


class CatalogueBuilder:
    """Accumulate :class:`ImageResult` s into the catalogue and the summary.

    Parameters
    ----------
    detector : Detector
        Gives class names, thresholds and the model's name and sha256 for ``meta``.
    previous, previous_summary : Table or None
        Rows kept from an earlier run (``--resume``); they come first.
    """

    def __init__(self, detector, previous: Table | None = None, previous_summary: Table | None = None) -> None:
        self.class_names = detector.class_names
        self.meta = {
            "CLUMPDET": __version__, "MODEL": detector.model_name, "MODELSHA": detector.model_sha256,
            "PRESET": detector.metadata.preset, "THRESH": float(detector.score_threshold),
            "MTHRESH": float(detector.metadata.postprocess.final_score_thresh),
            "CLASSES": ",".join(detector.class_names), "PIXCONV": "0-indexed, pixel centres at integers",
            "SKYFRAME": "ICRS", "DATE": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.previous, self.previous_summary = previous, previous_summary
        self._rows: dict[str, list[np.ndarray]] = {c: [] for c in CATALOGUE_COLUMNS}
        self._summary: list[tuple] = []
        self.any_wcs = previous is not None and "ra" in previous.colnames

    def add(self, result: ImageResult) -> None:
        """Add one result (detections converted to original-image pixels and sky coordinates)."""
        cut = result.cutout
        flags = ",".join(cut.flags) if cut is not None else ""
        if result.status != "failed":
            for k, v in _image_rows(result, self.class_names).items():
                self._rows[k].append(v)
            self.any_wcs |= cut.wcs is not None
        h, w = cut.orig_shape if cut is not None else (0, 0)
        x0, y0 = cut.offset if cut is not None else (0, 0)
        n = len(result.detections) if result.detections is not None and result.error is None else 0
        self._summary.append((result.source, result.status, result.error or "", n, flags, h, w, x0, y0,
                              cut is not None and cut.wcs is not None))

    def catalogue(self) -> Table:
        """One row per detection, columns :data:`CATALOGUE_COLUMNS` (``ra, dec`` only if any WCS)."""
        cols = {}
        for k in CATALOGUE_COLUMNS:
            parts = self._rows[k]
            if k in ("image", "label", "flags"):
                cols[k] = np.array([s for p in parts for s in p], dtype=str) if parts else np.array([], dtype="U1")
            else:
                dtype = {"det_id": np.int32, "label_id": np.int32, "score": np.float32}.get(k, np.float64)
                cols[k] = np.concatenate(parts).astype(dtype) if parts else np.array([], dtype=dtype)
        names = [c for c in CATALOGUE_COLUMNS if self.any_wcs or c not in ("ra", "dec")]
        table = Table([cols[c] for c in names], names=names, meta=dict(self.meta))
        for c in _PIX:
            table[c].unit = "pix"
        if self.any_wcs:
            table["ra"].unit = table["dec"].unit = "deg"
        table["score"].description = f"model score, >= {self.meta['THRESH']}"
        if self.previous is not None and len(self.previous):
            prev = self.previous
            if self.any_wcs and "ra" not in prev.colnames:
                prev = prev.copy()
                prev["ra"] = prev["dec"] = np.full(len(prev), np.nan)
            table = vstack([prev[names], table], join_type="exact", metadata_conflicts="silent")
            table.meta = dict(self.meta)
        return table

    def summary(self) -> Table:
        """One row per source: status ``ok`` / ``no_detections`` / ``failed`` with its reason."""
        rows = list(zip(*self._summary)) if self._summary else [[] for _ in SUMMARY_COLUMNS]
        dtypes = (str, str, str, np.int32, str, np.int32, np.int32, np.int32, np.int32, bool)
        cols = [np.array(r, dtype=d) if len(r) else np.array([], dtype="U1" if d is str else d)
                for r, d in zip(rows, dtypes)]
        table = Table(cols, names=SUMMARY_COLUMNS, meta=dict(self.meta))
        if self.previous_summary is not None and len(self.previous_summary):
            table = vstack([self.previous_summary[list(SUMMARY_COLUMNS)], table], join_type="exact",
                           metadata_conflicts="silent")
            table.meta = dict(self.meta)
        return table
