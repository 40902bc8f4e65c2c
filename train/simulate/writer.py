"""Write simulated cutouts and their truth.

Layout of a set directory::

    fits/sim_000000.fits   primary HDU (header only) + image HDUs G, R, I
    png/sim_000000.png     400x400 Lupton RGB: (R, G, B) = (i, r, g)
    annotations.json       COCO truth (boxes [x, y, w, h], pixel i spans [i, i+1))
    truth.ecsv             one row per truth source (see scene.simulate_image)
    images.ecsv            one row per image (host, PSF, sky parameters)
    params.json            master seed, n, every SimParams field, versions

FITS image HDUs are float32 ``(400, 400)``, sky-subtracted nanomaggies per
pixel, each with the same celestial TAN WCS (north along +row, east along
-column, 0.396″/px, CRPIX at the cutout centre). The PNG is not flipped: PNG
row ``r`` is FITS data row ``r`` (:mod:`clumpdet.engine.preprocess`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from PIL import Image

from clumpdet.engine.contracts import LuptonStretch
from clumpdet.engine.preprocess import lupton_rgb_uint8
from clumpdet.train.presets import CLUMP_CLASSES
from clumpdet.train.simulate.noise import electrons_per_nmgy
from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.scene import SimImage

TRUTH_COLUMNS: dict[str, type] = {
    "image": str, "label": str, "label_id": int, "x": float, "y": float,
    "x1": float, "y1": float, "x2": float, "y2": float, "flux_fraction": float,
    "flux_r": float, "mag_r": float, "g_r": float, "r_i": float, "fwhm_int_pix": float,
    "fwhm_int_kpc": float, "fwhm_obs_pix": float, "r_over_re": float, "on_arm": bool,
    "host_sb_r": float, "peak_contrast": float, "snr_r": float,
}


def make_wcs(ra: float, dec: float, p: SimParams) -> WCS:
    """Celestial TAN WCS of a cutout centred on ``(ra, dec)`` (degrees, ICRS).

    CRPIX (1-based FITS) is ``size / 2 + 0.5``, i.e. 0-based pixel
    ``size / 2 - 0.5`` = box coordinate ``size / 2``, the cutout centre.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = [p.image_size / 2 + 0.5] * 2
    w.wcs.cdelt = [-p.pixel_scale / 3600.0, p.pixel_scale / 3600.0]
    w.wcs.crval = [ra, dec]
    w.wcs.radesys = "ICRS"
    return w


def rgb_of(cube: np.ndarray, stretch: LuptonStretch | None = None) -> np.ndarray:
    """Lupton RGB uint8 ``(H, W, 3)`` of a (g, r, i) cube, bands mapped (i, r, g) -> (R, G, B)."""
    return lupton_rgb_uint8(cube[::-1], stretch or LuptonStretch())


def write_fits(path: Path, im: SimImage, seed: int, p: SimParams) -> None:
    """Write the (g, r, i) cube of ``im`` as image HDUs G, R, I with WCS and metadata."""
    header = make_wcs(im.galaxy.ra, im.galaxy.dec, p).to_header()
    e = electrons_per_nmgy(p)
    prim = fits.PrimaryHDU()
    prim.header["ORIGIN"] = ("clumpdet simulate", "synthetic SDSS-like cutout")
    prim.header["SIMSEED"] = (seed, "master seed of the set")
    prim.header["SIMNAME"] = im.name
    prim.header["REDSHIFT"] = im.galaxy.z
    prim.header["PSFPROF"] = im.psfs[1].profile
    prim.header["PSFBETA"] = (im.psfs[1].beta, "Moffat beta (0 for Gaussian)")
    hdus = [prim]
    for b, band in enumerate(p.bands):
        hdu = fits.ImageHDU(np.ascontiguousarray(im.cube[b], dtype=np.float32), header=header, name=band.upper())
        hdu.header["FILTER"] = band
        hdu.header["BUNIT"] = ("nanomaggy", "per pixel; AB mag = 22.5 - 2.5 log10(flux)")
        hdu.header["PSF_FWHM"] = (im.psfs[b].fwhm * p.pixel_scale, "arcsec")
        hdu.header["SKY"] = (float(im.sky[b]), "nmgy/pixel, already subtracted")
        hdu.header["ENMGY"] = (float(e[b]), "electrons per nanomaggy")
        hdu.header["RDNOISE"] = (p.read_noise_e[b], "electrons")
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def read_fits_cube(path: Path) -> tuple[np.ndarray, fits.Header]:
    """Read a simulator FITS file back: ``(3, H, W)`` float32 (g, r, i) and the R header."""
    with fits.open(path) as hdul:
        cube = np.stack([hdul[b].data.astype(np.float32) for b in ("G", "R", "I")])
        return cube, hdul["R"].header.copy()


def write_png(path: Path, cube: np.ndarray) -> None:
    """Write the Lupton RGB PNG of a (g, r, i) cube (default :class:`LuptonStretch`)."""
    Image.fromarray(rgb_of(cube)).save(path, compress_level=1)


def coco_json(records: list[dict[str, Any]], p: SimParams) -> dict[str, Any]:
    """COCO truth from per-image records ``{"image": {...}, "truth": [rows]}``.

    ``bbox`` is ``[x1, y1, w, h]`` in PNG/FITS pixels (pixel i spans [i, i+1));
    extra keys: ``fits_file`` and ``sim`` per image, the truth row's physical
    columns per annotation.
    """
    images, anns = [], []
    for rec in records:
        images.append(rec["image"])
        for row in rec["truth"]:
            w, h = row["x2"] - row["x1"], row["y2"] - row["y1"]
            extra = {k: row[k] for k in ("flux_fraction", "g_r", "r_i", "fwhm_obs_pix", "snr_r")}
            anns.append({
                "id": len(anns) + 1, "image_id": rec["image"]["id"], "category_id": row["label_id"],
                "bbox": [row["x1"], row["y1"], w, h], "area": w * h, "iscrowd": 0, **extra,
            })
    cats = [{"id": i, "name": n, "supercategory": "galaxy_feature"} for i, n in enumerate(CLUMP_CLASSES) if i]
    info = {"description": "clumpdet synthetic SDSS-like clump set", "pixel_scale_arcsec": p.pixel_scale}
    return {"info": info, "images": images, "annotations": anns, "categories": cats}


def truth_table(rows: list[dict[str, Any]]) -> Table:
    """Astropy table of truth rows with fixed columns (also when empty)."""
    cols = {k: np.array([r[k] for r in rows], dtype=t) for k, t in TRUTH_COLUMNS.items()}
    t = Table(cols)
    t["x"].description = "centre column, pixel i spans [i, i+1)"
    t["flux_fraction"].description = "source r flux / host galaxy r flux"
    return t


def images_table(infos: list[dict[str, Any]]) -> Table:
    """Astropy table of per-image records (list values split into ``_g/_r/_i`` columns)."""
    flat = []
    for info in infos:
        row = {}
        for k, v in info.items():
            if isinstance(v, list):
                row.update({f"{k}_{b}": x for b, x in zip("gri", v)})
            else:
                row[k] = v
        flat.append(row)
    return Table(rows=flat) if flat else Table()
