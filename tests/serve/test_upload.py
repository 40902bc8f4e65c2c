"""The convenience endpoint: FITS/PNG upload -> the same catalogue rows as ``clumpdet detect``."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clumpdet.engine.catalogue import CatalogueBuilder
from clumpdet.engine.preprocess import lupton_rgb_uint8
from tests.engine.conftest import make_cube, wcs_header, write_cube_fits

from .conftest import MODEL_NAME

DETECT = f"/v2/models/{MODEL_NAME}/detect"
SOURCES = ((40, 50, "red"), (90, 70, "blue"), (60, 100, "red"))


def _reference_rows(detector, path):
    builder = CatalogueBuilder(detector)
    for result in detector.detect_files([path], keep_images=False):
        builder.add(result)
    return builder.catalogue()


def _assert_rows_match(payload, table, image_name):
    assert payload["columns"] == table.colnames
    assert len(payload["rows"]) == len(table) > 0
    for got, want in zip(payload["rows"], table):
        assert got["image"] == image_name and got["label"] == want["label"] and got["det_id"] == want["det_id"]
        for col in ("score", "x_min", "y_min", "x_max", "y_max", "x_centroid", "y_centroid"):
            assert got[col] == pytest.approx(float(want[col]), abs=1e-4), col
        if "ra" in table.colnames:
            assert got["ra"] == pytest.approx(float(want["ra"]), abs=1e-9)
            assert got["dec"] == pytest.approx(float(want["dec"]), abs=1e-9)


def test_fits_upload_with_wcs_gives_the_catalogue_rows(server, detector, tmp_path):
    path = write_cube_fits(tmp_path / "galaxy.fits", make_cube(128, 128, SOURCES, seed=1), wcs_header(128, 128))
    table = _reference_rows(detector, path)
    assert "ra" in table.colnames
    data = Path(path).read_bytes()
    raw = httpx.post(server.url + DETECT, params={"name": "galaxy.fits"}, content=data, timeout=60)
    assert raw.status_code == 200, raw.text
    payload = raw.json()
    _assert_rows_match(payload, table, "galaxy.fits")
    assert payload["summary"]["has_wcs"] is True and payload["units"]["ra"] == "deg"
    assert payload["meta"]["MODELSHA"] == detector.model_sha256
    multipart = httpx.post(server.url + DETECT, files={"file": ("galaxy.fits", data, "application/fits")}, timeout=60)
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["rows"] == payload["rows"]


def test_png_upload_and_size_repair(server, detector, tmp_path):
    # 120x136: within 25 % of 128x128, so centre-padded/cropped and flagged, offsets in the rows.
    rgb = lupton_rgb_uint8(make_cube(120, 136, SOURCES, seed=2)[::-1].astype(np.float64), detector.metadata.input.lupton)
    path = tmp_path / "cut.png"
    Image.fromarray(rgb).save(path)
    table = _reference_rows(detector, str(path))
    resp = httpx.post(server.url + DETECT, files={"file": ("cut.png", path.read_bytes(), "image/png")}, timeout=60)
    assert resp.status_code == 200, resp.text
    payload = resp.json()
    _assert_rows_match(payload, table, "cut.png")
    assert "ra" not in payload["columns"]
    assert set(payload["summary"]["flags"].split(",")) == {"cropped", "padded"}


def test_bad_uploads_get_clear_messages(server, tmp_path):
    path = write_cube_fits(tmp_path / "g.fits", make_cube(128, 128, SOURCES, seed=3))
    data = Path(path).read_bytes()
    cases = [
        (data[: len(data) // 2], "broken.fits", 400, "truncated FITS file"),
        (b"hello, not an image", "x.txt", 415, "not a FITS"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "bad.png", 400, "bad.png:"),
    ]
    small = write_cube_fits(tmp_path / "tiny.fits", make_cube(16, 16, (), seed=4))
    cases.append((Path(small).read_bytes(), "tiny.fits", 400, "tiny.fits: image is 16x16 pixels"))
    for body, name, status, message in cases:
        resp = httpx.post(server.url + DETECT, params={"name": name}, content=body, timeout=60)
        assert resp.status_code == status, resp.text
        assert message in resp.json()["error"]
        assert resp.json()["error"].startswith(name if status == 400 else "upload")
        assert "clumpdet-upload-" not in resp.json()["error"]  # names the upload, not our temporary file
    resp = httpx.post(server.url + DETECT, files={"other": ("a.fits", data)}, timeout=60)
    assert resp.status_code == 400 and "field named 'file'" in resp.json()["error"]
