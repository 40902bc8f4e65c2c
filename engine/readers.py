"""Read one source (FITS, PNG/JPEG, ``.npy``) into the model's input (DESIGN §4).

Conventions
-----------
Arrays are in numpy order ``[row, column]``; row = FITS ``y``, column = FITS
``x`` (0-indexed); nothing is ever flipped. The model input is made by
:mod:`clumpdet.engine.preprocess` only, so a FITS cube and the PNG written from
it with :func:`~clumpdet.engine.preprocess.lupton_rgb_uint8` give bit-identical
inputs.

Band order in files: a 3-plane cube, three unnamed image HDUs, or a float
``.npy`` cube hold the bands in order of increasing wavelength, i.e. the reverse
of the model's ``LuptonStretch.bands`` (R, G, B): ``g, r, i`` for the default
``("i", "r", "g")``. A cube header card ``BANDS = 'g,r,i'`` overrides this;
HDUs whose ``EXTNAME`` is a band name are taken by name.

Size policy: an image whose height and width are each within
``max_size_mismatch`` (default 25 %) of the model's input size is centre-cropped
or zero-padded (black) to that size, flagged ``cropped``/``padded``, and the
offset is carried into the catalogue's coordinates (``original = model +
offset``). Anything further off (a 1×1 or a 10000×10000 image) is refused with a
clear error *before* its pixels are decoded, so memory stays bounded.

NaN/inf policy: non-finite flux pixels are set to 0 and the cutout is flagged
``nan_repaired``; an image with no finite pixel is refused.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from PIL import Image

from clumpdet.engine.contracts import InputSpec
from clumpdet.engine.inputs import (
    FITS_SUFFIXES,
    IMAGE_SUFFIXES,
    NPY_SUFFIXES,
    SUPPORTED_SUFFIXES,
    Source,
    file_band_order,
)
from clumpdet.engine.preprocess import lupton_rgb_uint8, rgb_uint8_to_input

#: Default tolerance of the centre crop/pad, as a fraction of the model's input size.
MAX_SIZE_MISMATCH = 0.25

_WCS_LOCK = threading.Lock()


class InputError(ValueError):
    """A source cannot be turned into a model input; the message names the file and the problem."""


@dataclass(frozen=True)
class Cutout:
    """One decoded source, ready for the model.

    Parameters
    ----------
    source : str
        Source id (:attr:`clumpdet.engine.inputs.Source.id`).
    image : numpy.ndarray or None
        float32 ``(3, H, W)`` RGB in [0, 1], ``H, W`` the model's input size
        (``None`` once dropped, see :meth:`Detector.detect_files`).
    orig_shape : tuple of int
        ``(height, width)`` of the original image.
    offset : tuple of int
        ``(x0, y0)``: model-input pixel ``(x, y)`` is original pixel
        ``(x + x0, y + y0)``; negative when padded, positive when cropped.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the original image (FITS only).
    flags : tuple of str
        Repairs applied: ``nan_repaired``, ``cropped``, ``padded``, ``alpha_dropped``.
    """

    source: str
    image: np.ndarray | None
    orig_shape: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    wcs: WCS | None = None
    flags: tuple[str, ...] = ()


def _fail(path: str, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


def check_size(path: str, height: int, width: int, spec: InputSpec, max_size_mismatch: float) -> None:
    """Refuse an image whose size the crop/pad policy cannot handle (before decoding it)."""
    ok_h = abs(height - spec.height) <= max_size_mismatch * spec.height
    ok_w = abs(width - spec.width) <= max_size_mismatch * spec.width
    if height < 1 or width < 1 or not (ok_h and ok_w):
        msg = (
            f"image is {width}x{height} pixels (width x height) but the model takes {spec.width}x{spec.height}; "
            f"only differences up to {max_size_mismatch:.0%} are centre-cropped/padded: cut or resample it to "
            f"{spec.width}x{spec.height} first"
        )
        raise _fail(path, msg)


def fit_to_input(rgb: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int], tuple[str, ...]]:
    """Centre-crop and/or zero-pad an ``(h, w, 3)`` uint8 image to ``(height, width, 3)``.

    Returns
    -------
    rgb : numpy.ndarray
        uint8 ``(height, width, 3)``.
    offset : tuple of int
        ``(x0, y0)`` with original pixel = output pixel + offset.
    flags : tuple of str
        ``cropped`` and/or ``padded`` when applied.
    """
    h, w = rgb.shape[:2]
    flags: list[str] = []
    offsets = []
    for size, want in ((w, width), (h, height)):
        if size > want:
            offsets.append((size - want) // 2)
            flags.append("cropped")
        elif size < want:
            offsets.append(-((want - size) // 2))
            flags.append("padded")
        else:
            offsets.append(0)
    x0, y0 = offsets
    if (h, w) == (height, width):
        return rgb, (0, 0), ()
    out = np.zeros((height, width, 3), dtype=np.uint8)
    sx, sy = max(x0, 0), max(y0, 0)  # source start
    dx, dy = max(-x0, 0), max(-y0, 0)  # destination start
    cw, ch = min(w - sx, width - dx), min(h - sy, height - dy)
    out[dy : dy + ch, dx : dx + cw] = rgb[sy : sy + ch, sx : sx + cw]
    return out, (x0, y0), tuple(dict.fromkeys(flags))


def _finite(path: str, cube: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    bad = ~np.isfinite(cube)
    if not bad.any():
        return cube, ()
    if bad.all():
        raise _fail(path, "no finite pixel (all NaN/inf)")
    cube = cube.copy()
    cube[bad] = 0.0
    return cube, ("nan_repaired",)


def _celestial(path: str, header: fits.Header) -> WCS | None:
    with _WCS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # header fix-ups are not our user's problem
        try:
            wcs = WCS(header)
        except Exception as err:  # noqa: BLE001 - an unusable WCS must not lose the detections
            raise _fail(path, f"invalid WCS in header ({err}); remove or fix the WCS keywords") from err
    return wcs.celestial if wcs.has_celestial else None


def _image_hdus(path: str, hdul: fits.HDUList) -> list[tuple[int, tuple[int, ...]]]:
    out = []
    for i, hdu in enumerate(hdul):
        if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) >= 2:
            shape = tuple(int(s) for s in hdu.shape)
            shape = tuple(s for s in shape[:-2] if s != 1) + shape[-2:]  # drop degenerate leading axes
            out.append((i, shape))
    if not out:
        raise _fail(path, "no image HDU with 2 or 3 axes")
    return out


def _check_complete(path: str, hdul: fits.HDUList, indices: list[int]) -> None:
    if path.lower().endswith(".gz"):
        return  # compressed: astropy raises while decompressing instead
    size = os.path.getsize(path)
    for i in indices:
        info = hdul.fileinfo(i)
        if info and info["datLoc"] + info["datSpan"] > size:
            msg = f"truncated FITS file: HDU {i} needs {info['datLoc'] + info['datSpan']} bytes, file has {size}"
            raise _fail(path, msg)


def _read_fits_planes(path: str, spec: InputSpec, mismatch: float, single: bool) -> tuple[dict[str, np.ndarray], WCS | None]:
    """Return ``{band: 2-D float64 plane}`` (or ``{"": plane}`` when ``single``) and the WCS."""
    bands = file_band_order(spec.lupton.bands)
    fh = _open_binary(path)
    with fh:  # our handle: closed even when astropy fails half-way through opening
        try:
            hdul = fits.open(fh, memmap=False)  # lazy per HDU; memmap cannot scale BZERO/BSCALE data
        except Exception as err:  # noqa: BLE001 - astropy raises many types for a corrupt file
            raise _fail(path, f"corrupt or truncated FITS file ({type(err).__name__}: {err})") from err
        return _planes_from_hdul(path, hdul, spec, mismatch, single, bands)


def _open_binary(path: str):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except IsADirectoryError as err:
        raise _fail(path, "is a directory, not a file") from err
    except PermissionError as err:
        raise _fail(path, "permission denied") from err
    except OSError as err:
        raise _fail(path, f"cannot read ({err.strerror or err})") from err


def _planes_from_hdul(path: str, hdul: fits.HDUList, spec: InputSpec, mismatch: float, single: bool,
                      bands: tuple[str, ...]) -> tuple[dict[str, np.ndarray], WCS | None]:
    with hdul:
        try:
            found = _image_hdus(path, hdul)
            cubes = [(i, s) for i, s in found if len(s) == 3]
            flat = [(i, s) for i, s in found if len(s) == 2]
            if single:
                if cubes or len(flat) != 1:
                    msg = f"band file must hold one 2-D image, found shapes {[s for _, s in found]}"
                    raise _fail(path, msg)
                chosen = {"": flat[0][0]}
            elif cubes:
                i, shape = cubes[0]
                if shape[0] != 3:
                    raise _fail(path, f"cube has {shape[0]} planes, expected 3 bands ({', '.join(bands)})")
                check_size(path, shape[1], shape[2], spec, mismatch)
                _check_complete(path, hdul, [i])
                hdr = hdul[i].header
                order = tuple(b.strip().lower() for b in str(hdr.get("BANDS", ",".join(bands))).split(","))
                if sorted(order) != sorted(bands):
                    raise _fail(path, f"BANDS card {hdr['BANDS']!r} does not name the bands {', '.join(bands)}")
                data = np.asarray(hdul[i].data, dtype=np.float64).reshape(shape)
                return dict(zip(order, data)), _celestial(path, hdr)
            else:
                names = {str(hdul[i].header.get("EXTNAME", "")).strip().lower(): i for i, _ in flat}
                if all(b in names for b in bands):
                    chosen = {b: names[b] for b in bands}
                elif len(flat) == 3:
                    chosen = dict(zip(bands, (i for i, _ in flat)))
                else:
                    msg = (
                        f"wrong band count: found {len(flat)} 2-D image HDU(s), expected 3 bands "
                        f"({', '.join(bands)}) as EXTNAMEs, three image HDUs or one 3-plane cube"
                    )
                    raise _fail(path, msg)
            shapes = {dict(found)[i] for i in chosen.values()}
            if len(shapes) != 1:
                raise _fail(path, f"bands have different shapes {sorted(shapes)}")
            (h, w) = shapes.pop()
            check_size(path, h, w, spec, mismatch)
            _check_complete(path, hdul, list(chosen.values()))
            planes = {b: np.asarray(hdul[i].data, dtype=np.float64).reshape(h, w) for b, i in chosen.items()}
            ref = chosen.get(spec.lupton.bands[1].lower(), next(iter(chosen.values())))
            return planes, _celestial(path, hdul[ref].header)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. a truncated data segment
            raise _fail(path, f"corrupt or truncated FITS file ({type(err).__name__}: {err})") from err


def _png_ihdr(path: str) -> tuple[int, int, int, int] | None:
    """``(width, height, bit_depth, colour_type)`` from a PNG header, ``None`` if not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def _read_image(path: str, spec: InputSpec, mismatch: float) -> tuple[np.ndarray, tuple[str, ...]]:
    """PNG/JPEG -> ``(H, W, 3)`` uint8 RGB and flags."""
    try:
        ihdr = _png_ihdr(path)
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except OSError as err:
        raise _fail(path, f"cannot read ({err.strerror or err})") from err
    if ihdr is not None:
        width, height, depth, _ = ihdr
        check_size(path, height, width, spec, mismatch)
        if depth == 16:
            msg = f"{depth}-bit PNG; the model takes 8-bit RGB (write the PNG with 8 bits per channel)"
            raise _fail(path, msg)
    try:
        with Image.open(path) as im:
            check_size(path, im.height, im.width, spec, mismatch)
            mode = im.mode
            if mode not in ("RGB", "RGBA", "P"):
                bands = len(im.getbands())
                msg = f"{mode} image with {bands} band(s) ({im.format}); the model takes 3-band RGB"
                raise _fail(path, msg)
            im.load()
            if mode == "P":
                im = im.convert("RGBA")
            arr = np.asarray(im)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow: truncated, corrupt, decompression bomb...
        raise _fail(path, f"corrupt or unreadable image ({type(err).__name__}: {err})") from err
    flags: tuple[str, ...] = ()
    if arr.shape[2] == 4:
        if not np.all(arr[..., 3] == 255):
            raise _fail(path, "RGBA image with transparent pixels; the model takes opaque RGB")
        arr, flags = arr[..., :3], ("alpha_dropped",)
    return np.ascontiguousarray(arr), flags


def _read_npy(path: str, spec: InputSpec, mismatch: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``.npy``: uint8 ``(H, W, 3)`` RGB, or a numeric ``(3, H, W)`` flux cube (file band order)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except Exception as err:  # noqa: BLE001
        raise _fail(path, f"not a readable .npy array ({type(err).__name__}: {err})") from err
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        check_size(path, arr.shape[0], arr.shape[1], spec, mismatch)
        return np.array(arr), None
    if arr.ndim == 3 and arr.shape[0] == 3 and (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        check_size(path, arr.shape[1], arr.shape[2], spec, mismatch)
        return None, np.array(arr, dtype=np.float64)
    msg = f"array of shape {arr.shape} dtype {arr.dtype}; expected uint8 (H, W, 3) RGB or a (3, H, W) flux cube"
    raise _fail(path, msg)


def read_cutout(source: Source | str, spec: InputSpec, max_size_mismatch: float = MAX_SIZE_MISMATCH) -> Cutout:
    """Read one source and make the model input.

    Parameters
    ----------
    source : Source or str
        A source from :func:`clumpdet.engine.inputs.expand_inputs`, or one path.
    spec : InputSpec
        The model's input contract (size, Lupton stretch, band names), from its metadata.
    max_size_mismatch : float
        Largest relative size difference that is centre-cropped/padded.

    Returns
    -------
    Cutout

    Raises
    ------
    InputError
        One line ``"<path>: <problem>"`` for any unreadable, corrupt or unsuitable input.
    """
    if isinstance(source, str):
        source = Source(id=source, paths=(source,))
    path = source.paths[0]
    wcs = None
    flags: tuple[str, ...] = ()
    if source.bands is not None:
        planes, wcs_by_band = {}, {}
        for band, p in zip(source.bands, source.paths):
            if not p.lower().endswith(FITS_SUFFIXES):
                raise _fail(p, "band-split inputs must be FITS files")
            one, w = _read_fits_planes(p, spec, max_size_mismatch, single=True)
            planes[band], wcs_by_band[band] = one[""], w
        shapes = {b: p.shape for b, p in planes.items()}
        if len(set(shapes.values())) != 1:
            raise _fail(source.id, f"band files have different shapes {shapes}")
        ref = spec.lupton.bands[1].lower()
        wcs = wcs_by_band.get(ref) or next((w for w in wcs_by_band.values() if w is not None), None)
        cube = np.stack([planes[b.lower()] for b in spec.lupton.bands])
        rgb = None
    else:
        lower = path.lower()
        if lower.endswith(FITS_SUFFIXES):
            planes, wcs = _read_fits_planes(path, spec, max_size_mismatch, single=False)
            cube, rgb = np.stack([planes[b.lower()] for b in spec.lupton.bands]), None
        elif lower.endswith(IMAGE_SUFFIXES):
            rgb, flags = _read_image(path, spec, max_size_mismatch)
            cube = None
        elif lower.endswith(NPY_SUFFIXES):
            rgb, file_cube = _read_npy(path, spec, max_size_mismatch)
            cube = None if file_cube is None else file_cube[::-1]  # file order is the reverse of (R, G, B)
        else:
            raise _fail(path, f"unsupported file type (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if cube is not None:
        cube, flags = _finite(source.id, cube)
        rgb = lupton_rgb_uint8(cube, spec.lupton)
    orig_shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    rgb, offset, fit_flags = fit_to_input(rgb, spec.height, spec.width)
    image = rgb_uint8_to_input(rgb)
    return Cutout(source.id, image, orig_shape, offset, wcs, flags + fit_flags)
