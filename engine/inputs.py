"""Turn command-line inputs (paths, globs, directories, ``@filelists``) into sources.

A *source* is one image to detect on: a single file (FITS cube or multi-HDU
file, PNG/JPEG, ``.npy``) or three single-band FITS files named by band
(``x_g.fits x_r.fits x_i.fits`` -> source ``x_{g,r,i}.fits``). Expansion never
opens a file: a path that does not exist stays a source and fails later with a
clear reason in the summary, so one bad input never stops a job.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: File name suffixes the readers understand (lower case; ``.gz`` FITS too).
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = FITS_SUFFIXES + IMAGE_SUFFIXES + NPY_SUFFIXES


@dataclass(frozen=True)
class Source:
    """One image to run the detector on.

    Parameters
    ----------
    id : str
        Stable identifier written to the catalogue's ``image`` column: the path
        as given, or ``<prefix>_{g,r,i}.<ext>`` for a band-split triplet.
    paths : tuple of str
        One path, or one per band for a band-split triplet.
    bands : tuple of str or None
        Band of each path for a triplet (same order as ``paths``); ``None`` for
        a single file.
    """

    id: str
    paths: tuple[str, ...]
    bands: tuple[str, ...] | None = None


def has_supported_suffix(path: str) -> bool:
    """Whether ``path`` ends with one of :data:`SUPPORTED_SUFFIXES` (case-insensitive)."""
    return path.lower().endswith(SUPPORTED_SUFFIXES)


def _expand_one(arg: str) -> list[str]:
    if arg.startswith("@"):
        listfile = arg[1:]
        try:
            text = Path(listfile).read_text(encoding="utf-8")
        except OSError as err:
            msg = f"{listfile}: cannot read file list ({err.strerror or err})"
            raise ValueError(msg) from err
        lines = (ln.strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith("#")]
    if os.path.isdir(arg):
        names = sorted(os.listdir(arg))
        return [os.path.join(arg, n) for n in names if has_supported_suffix(n)]
    if glob.has_magic(arg):
        return sorted(p for p in glob.glob(arg, recursive=True) if not os.path.isdir(p))
    return [arg]


_BAND_RE_CACHE: dict[tuple[str, ...], re.Pattern[str]] = {}


def _band_pattern(bands: Sequence[str]) -> re.Pattern[str]:
    key = tuple(bands)
    if key not in _BAND_RE_CACHE:
        alt = "|".join(re.escape(b) for b in sorted(bands, key=len, reverse=True))
        fits = "|".join(re.escape(s) for s in FITS_SUFFIXES)
        _BAND_RE_CACHE[key] = re.compile(rf"^(?P<prefix>.+)[_.-](?P<band>{alt})(?P<ext>{fits})$", re.IGNORECASE)
    return _BAND_RE_CACHE[key]


def file_band_order(bands: Sequence[str]) -> tuple[str, ...]:
    """Default order of bands in files: increasing wavelength = reverse of (R, G, B), e.g. g, r, i."""
    return tuple(b.lower() for b in reversed(tuple(bands)))


def group_sources(paths: Iterable[str], bands: Sequence[str]) -> list[Source]:
    """Group band-split FITS triplets; every other path becomes its own source.

    Parameters
    ----------
    paths : iterable of str
        File paths in the order given by the user.
    bands : sequence of str
        The model's band names (``LuptonStretch.bands``, e.g. ``("i", "r", "g")``).
        A file ``<prefix>_<band>.fits`` (also ``-`` or ``.`` before the band)
        joins the triplet of ``<prefix>`` when all bands of that prefix are given.

    Returns
    -------
    list of Source
        In first-appearance order; a triplet takes the position of its first
        file. Duplicate paths are kept once. Incomplete triplets stay single
        files (they then fail with a band-count error naming the file).
    """
    pattern = _band_pattern(bands)
    ordered: list[str] = list(dict.fromkeys(paths))
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for p in ordered:
        m = pattern.match(p)
        if m:
            key = (m["prefix"], m["ext"])
            groups.setdefault(key, {})[m["band"].lower()] = p
    wanted = {b.lower() for b in bands}
    complete = {k: v for k, v in groups.items() if set(v) == wanted}
    member = {p: k for k, v in complete.items() for p in v.values()}
    order = file_band_order(bands)
    sources: list[Source] = []
    emitted: set[tuple[str, str]] = set()
    for p in ordered:
        key = member.get(p)
        if key is None:
            sources.append(Source(id=p, paths=(p,)))
        elif key not in emitted:
            emitted.add(key)
            by_band = complete[key]
            sid = f"{key[0]}_{{{','.join(order)}}}{key[1]}"
            sources.append(Source(id=sid, paths=tuple(by_band[b] for b in order), bands=order))
    return sources


def expand_inputs(args: Iterable[str], bands: Sequence[str]) -> list[Source]:
    """Expand command-line inputs into sources.

    Parameters
    ----------
    args : iterable of str
        Each is a path, a glob (``*``, ``?``, ``[...]``, ``**`` recursive), a
        directory (its supported files, sorted, not recursive) or ``@list``, a
        text file with one path per line (blank lines and ``#`` comments
        skipped; relative paths are relative to the current directory).
    bands : sequence of str
        The model's band names, for grouping band-split FITS files.

    Returns
    -------
    list of Source
        Deterministic order: arguments in order, globs and directories sorted.

    Raises
    ------
    ValueError
        If a ``@list`` file cannot be read.
    """
    paths: list[str] = []
    for arg in args:
        paths.extend(_expand_one(arg))
    return group_sources(paths, bands)
