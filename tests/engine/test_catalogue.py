"""Catalogue: pixel conventions, RA/Dec against astropy, writers, summary."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from conftest import wcs_header

from clumpdet.engine import __version__
from clumpdet.engine.catalogue import CATALOGUE_COLUMNS, SUMMARY_COLUMNS, CatalogueBuilder, read_table, write_table
from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import Detections
from clumpdet.engine.readers import Cutout
from clumpdet.engine.runner import ImageResult


@pytest.fixture(scope="module")
def detector(toy_model_path):
    return Detector(toy_model_path, intra_op_threads=1)


def result(source, boxes, offset=(0, 0), wcs=None, labels=None, flags=()):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.ones(n, np.int64) if labels is None else np.asarray(labels)
    cut = Cutout(source, np.zeros((3, 400, 400), np.float32), (400, 400), offset, wcs, flags)
    return ImageResult(source, cut, Detections(boxes, np.linspace(0.9, 0.5, n), labels))


def test_pixel_convention_and_offset(detector):
    b = CatalogueBuilder(detector)
    b.add(result("a.png", [[200, 96, 208, 104]], labels=[2]))
    b.add(result("b.fits", [[200, 96, 208, 104]], offset=(12, -5), flags=("cropped", "padded")))
    cat = b.catalogue()
    assert cat.colnames == [c for c in CATALOGUE_COLUMNS if c not in ("ra", "dec")]  # no WCS anywhere
    a, c = cat[0], cat[1]
    assert (a["x_min"], a["y_min"], a["x_max"], a["y_max"]) == (199.5, 95.5, 207.5, 103.5)
    assert (a["x_centroid"], a["y_centroid"]) == (203.5, 99.5)
    assert a["label"] == "odd_clump" and a["label_id"] == 2 and a["det_id"] == 0
    assert (c["x_min"], c["y_min"], c["x_centroid"], c["y_centroid"]) == (211.5, 90.5, 215.5, 94.5)
    assert c["flags"] == "cropped,padded" and cat["x_min"].unit == "pix"


def test_ra_dec_match_astropy_pixel_to_world(detector):
    wcs = WCS(wcs_header()).celestial
    b = CatalogueBuilder(detector)
    # CRPIX = 200.5 (FITS, 1-based) is 0-indexed pixel 199.5, i.e. the corner shared by model
    # pixels 199 and 200: a box centred there, [196, 204), must give CRVAL exactly.
    b.add(result("centre", [[196, 196, 204, 204], [10, 20, 18, 30], [350, 5, 362, 9]], wcs=wcs))
    # the same sky position through a crop offset: model centre (188, 205) = original (200, 200)
    b.add(result("offset", [[184, 201, 192, 209]], offset=(12, -5), wcs=wcs))
    b.add(result("nowcs", [[0, 0, 8, 8]]))
    cat = b.catalogue()
    assert cat["ra"].unit == "deg"
    np.testing.assert_allclose([cat["ra"][0], cat["dec"][0]], [150.1, 2.2], rtol=0, atol=1e-10)
    np.testing.assert_allclose([cat["ra"][3], cat["dec"][3]], [150.1, 2.2], rtol=0, atol=1e-10)
    sky = wcs.pixel_to_world(cat["x_centroid"][:3], cat["y_centroid"][:3])
    np.testing.assert_allclose(cat["ra"][:3], sky.ra.deg, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cat["dec"][:3], sky.dec.deg, rtol=0, atol=1e-12)
    # independently, via the FITS 1-based convention: pixel (x_box centre + 0.5) in FITS numbering
    ra, dec = wcs.all_pix2world(np.array([14.0]) + 0.5, np.array([25.0]) + 0.5, 1)
    np.testing.assert_allclose([cat["ra"][1], cat["dec"][1]], [ra[0], dec[0]], rtol=0, atol=1e-12)
    assert np.isnan(cat["ra"][4]) and np.isnan(cat["dec"][4])


def test_ra_dec_are_icrs_for_an_fk5_header(detector):
    hdr = wcs_header()
    hdr["RADESYS"], hdr["EQUINOX"] = "FK5", 2000.0
    wcs = WCS(hdr).celestial
    b = CatalogueBuilder(detector)
    b.add(result("fk5", [[196, 196, 204, 204]], wcs=wcs))
    cat = b.catalogue()
    icrs = SkyCoord(150.1, 2.2, unit="deg", frame="fk5", equinox="J2000").icrs
    np.testing.assert_allclose([cat["ra"][0], cat["dec"][0]], [icrs.ra.deg, icrs.dec.deg], rtol=0, atol=1e-10)


def test_summary_lists_every_input(detector):
    b = CatalogueBuilder(detector)
    b.add(result("ok.png", [[0, 0, 8, 8]], flags=("nan_repaired",)))
    b.add(result("empty.png", np.zeros((0, 4))))
    b.add(ImageResult("bad.fits", error="bad.fits: truncated FITS file"))
    s = b.summary()
    assert s.colnames == list(SUMMARY_COLUMNS)
    assert list(s["status"]) == ["ok", "no_detections", "failed"]
    assert list(s["n_dets"]) == [1, 0, 0] and s["reason"][2] == "bad.fits: truncated FITS file"
    assert s["flags"][0] == "nan_repaired" and len(b.catalogue()) == 1


@pytest.mark.parametrize("ext", [".fits", ".ecsv", ".csv"])
def test_writers_round_trip(detector, tmp_path, ext):
    b = CatalogueBuilder(detector)
    b.add(result("x.fits", [[196, 196, 204, 204], [0, 0, 8, 8]], wcs=WCS(wcs_header()).celestial))
    cat = b.catalogue()
    write_table(cat, str(tmp_path / f"cat{ext}"))
    back = read_table(str(tmp_path / f"cat{ext}"))
    assert back.colnames == list(CATALOGUE_COLUMNS)
    for name in ("x_min", "y_centroid", "ra", "dec", "score"):
        np.testing.assert_allclose(back[name], cat[name], rtol=1e-7)
    assert [str(v) for v in back["image"]] == ["x.fits", "x.fits"]
    if ext != ".csv":  # CSV keeps no metadata
        assert back.meta["CLUMPDET"] == __version__ and back.meta["MODELSHA"] == detector.model_sha256
        assert back.meta["THRESH"] == 0.3 and back.meta["CLASSES"] == "background,clump,odd_clump"
        assert str(back["ra"].unit) == "deg"
    empty = CatalogueBuilder(detector).catalogue()
    write_table(empty, str(tmp_path / f"empty{ext}"))
    assert len(read_table(str(tmp_path / f"empty{ext}"))) == 0


def test_unknown_and_unavailable_formats(tmp_path, detector):
    cat = CatalogueBuilder(detector).catalogue()
    with pytest.raises(ValueError, match=r"cat.txt: unknown table format; use one of \.fits"):
        write_table(cat, str(tmp_path / "cat.txt"))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"cat.parquet: writing Parquet needs pyarrow"):
            write_table(cat, str(tmp_path / "cat.parquet"))
    else:
        write_table(cat, str(tmp_path / "cat.parquet"))
        assert read_table(str(tmp_path / "cat.parquet")).colnames == cat.colnames
