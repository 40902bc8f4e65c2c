"""The convenience endpoint's work: an uploaded FITS/PNG/JPEG file -> model input -> catalogue rows.

Decoding is :func:`clumpdet.engine.readers.read_cutout` and the rows are
:class:`clumpdet.engine.catalogue.CatalogueBuilder`'s, so an upload gives the
same rows as ``clumpdet detect`` on the same file (original-image pixels,
0-indexed, pixel centres at integers; ``ra, dec`` in deg ICRS when the FITS has
a celestial WCS). Nothing is converted here.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from typing import Any

import numpy as np

from clumpdet.engine.catalogue import CatalogueBuilder
from clumpdet.engine.inputs import Source
from clumpdet.engine.readers import MAX_SIZE_MISMATCH, Cutout, read_cutout
from clumpdet.engine.runner import ImageResult

#: Leading bytes -> file suffix the readers understand.
_MAGIC = ((b"SIMPLE  =", ".fits"), (b"\x1f\x8b", ".fits.gz"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))


def sniff_suffix(data: bytes) -> str | None:
    """File suffix from the first bytes (FITS, gzipped FITS, PNG, JPEG), or ``None``."""
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), None)


def safe_name(name: str | None, suffix: str) -> str:
    """A printable source id for the upload (its base name), default ``upload<suffix>``."""
    base = os.path.basename(name or "").strip()
    base = re.sub(r"[^\w.+-]", "_", base)[:200]
    return base or f"upload{suffix}"


def decode_upload(data: bytes, name: str, suffix: str, spec, max_size_mismatch: float = MAX_SIZE_MISMATCH) -> Cutout:
    """Decode uploaded bytes with the engine's readers (blocking; run in a thread).

    Parameters
    ----------
    data : bytes
        The file's content.
    name : str
        Source id for the catalogue's ``image`` column and for messages.
    suffix : str
        From :func:`sniff_suffix`; chooses the reader.
    spec : InputSpec
        The model's input contract.

    Raises
    ------
    clumpdet.engine.readers.InputError
        With the message naming ``name`` (not the temporary file).
    """
    fd, tmp = tempfile.mkstemp(prefix="clumpdet-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return read_cutout(Source(id=name, paths=(tmp,)), spec, max_size_mismatch)
        except ValueError as err:
            raise type(err)(str(err).replace(tmp, name)) from None
    finally:
        os.remove(tmp)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def catalogue_json(detector, cutout: Cutout, detections) -> dict[str, Any]:
    """Catalogue rows and the per-image summary of one detected upload, as JSON-ready dicts.

    Parameters
    ----------
    detector : Detector
        Gives class names, thresholds, model name and sha256.
    cutout : Cutout
        The decoded upload.
    detections : Detections
        Its detections, boxes in model-input pixels.

    Returns
    -------
    dict
        ``image``, ``columns``, ``rows`` (list of ``{column: value}``; NaN as ``null``),
        ``summary`` (one row of the summary table) and ``meta`` (the catalogue's meta).
    """
    builder = CatalogueBuilder(detector)
    builder.add(ImageResult(cutout.source, cutout=cutout, detections=detections))
    table, summary = builder.catalogue(), builder.summary()
    cols = list(table.colnames)
    rows = [{c: _plain(row[c]) for c in cols} for row in table]
    return {
        "image": cutout.source, "columns": cols, "units": {c: str(table[c].unit) for c in cols if table[c].unit},
        "rows": rows, "summary": {c: _plain(summary[0][c]) for c in summary.colnames},
        "meta": {k: _plain(v) for k, v in table.meta.items()},
    }
