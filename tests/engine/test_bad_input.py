"""Every class of bad input gets one clear line naming the file and the problem (issue 4, item 6)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from astropy.io import fits
from conftest import build_toy_model, make_cube, write_cube_fits
from PIL import Image

from clumpdet.engine.detector import Detector
from clumpdet.engine.readers import InputError, read_cutout


def refused(path, spec, *fragments):
    """Read ``path``, expect an InputError of one line starting with the path and containing ``fragments``."""
    with pytest.raises(InputError) as info:
        read_cutout(str(path), spec)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text, text
    for frag in fragments:
        assert frag in text, text
    return text


def test_corrupt_fits(tmp_path, spec):
    (tmp_path / "garbage.fits").write_bytes(b"this is not a FITS file at all" * 200)
    refused(tmp_path / "garbage.fits", spec, "corrupt or truncated FITS file")
    (tmp_path / "empty.fits").write_bytes(b"")
    refused(tmp_path / "empty.fits", spec, "corrupt or truncated FITS file")


def _truncated(tmp_path):
    path = write_cube_fits(tmp_path / "full.fits", make_cube())
    data = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.fits"


def test_truncated_fits(tmp_path, spec):
    # With warnings as errors (this suite), astropy's own truncation warning is reported ...
    refused(_truncated(tmp_path), spec, "truncated")


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_truncated_fits_with_astropy_warning_silenced(tmp_path, spec):
    # ... and with it silenced (as a user might run), our size check still refuses the file.
    refused(_truncated(tmp_path), spec, "truncated FITS file: HDU 0 needs 1923840 bytes, file has 961920")


def test_nan_and_inf_are_repaired_and_flagged(tmp_path, spec):
    cube = make_cube()
    cube[0, 10:20, 10:20] = np.nan
    cube[2, 50, 50] = np.inf
    cut = read_cutout(write_cube_fits(tmp_path / "nan.fits", cube), spec)
    assert cut.flags == ("nan_repaired",)
    fixed = make_cube()
    fixed[0, 10:20, 10:20] = 0.0
    fixed[2, 50, 50] = 0.0
    assert np.array_equal(cut.image, read_cutout(write_cube_fits(tmp_path / "fixed.fits", fixed), spec).image)
    refused(write_cube_fits(tmp_path / "allnan.fits", np.full((3, 400, 400), np.nan, np.float32)), spec,
            "no finite pixel")


@pytest.mark.parametrize(
    ("hdus", "fragment"),
    [
        (lambda c: [fits.PrimaryHDU(c[:2])], "cube has 2 planes, expected 3 bands (g, r, i)"),
        (lambda c: [fits.PrimaryHDU(np.concatenate([c, c[:1]]))], "cube has 4 planes"),
        (lambda c: [fits.PrimaryHDU(c[0])], "wrong band count: found 1 2-D image HDU(s)"),
        (lambda c: [fits.PrimaryHDU(c[0]), fits.ImageHDU(c[1])], "wrong band count: found 2"),
        (lambda c: [fits.PrimaryHDU()], "no image HDU"),
        (lambda c: [fits.PrimaryHDU(c[0]), fits.ImageHDU(c[1]), fits.ImageHDU(c[2, :300])], "different shapes"),
    ],
)
def test_wrong_band_count(tmp_path, spec, hdus, fragment):
    fits.HDUList(hdus(make_cube())).writeto(tmp_path / "bands.fits")
    refused(tmp_path / "bands.fits", spec, fragment)


def test_tiny_images(tmp_path, spec):
    write_cube_fits(tmp_path / "tiny.fits", np.ones((3, 1, 1), np.float32))
    refused(tmp_path / "tiny.fits", spec, "image is 1x1 pixels", "takes 400x400")
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    refused(tmp_path / "tiny.png", spec, "image is 1x1 pixels")
    np.save(tmp_path / "tiny.npy", np.zeros((1, 1, 3), np.uint8))
    refused(tmp_path / "tiny.npy", spec, "image is 1x1 pixels")


def test_huge_images_are_refused_before_decoding(tmp_path, spec):
    # A valid 3 x 10000 x 10000 uint8 FITS file (300 MB, sparse on disk): the header is enough.
    hdr = fits.PrimaryHDU(np.zeros((3, 2, 2), np.uint8)).header
    hdr["NAXIS1"] = hdr["NAXIS2"] = 10000
    path = tmp_path / "huge.fits"
    with open(path, "wb") as fh:
        fh.write(hdr.tostring().encode("ascii"))
        size = 3 * 10000 * 10000
        fh.truncate(len(hdr.tostring()) + size + (-size) % 2880)
    refused(path, spec, "image is 10000x10000 pixels", "cut or resample it to 400x400")
    Image.new("1", (10000, 10000)).save(tmp_path / "huge.png")  # 12 kB on disk, 10^8 pixels
    refused(tmp_path / "huge.png", spec, "image is 10000x10000 pixels")


def _png16_rgb(path, height=400, width=400):
    """A 48-bit RGB PNG (Pillow cannot write one), written by hand."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(6 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_unexpected_dtypes_and_modes(tmp_path, spec):
    Image.fromarray(np.zeros((400, 400), np.uint16)).save(tmp_path / "grey16.png")
    refused(tmp_path / "grey16.png", spec, "16-bit PNG")
    _png16_rgb(tmp_path / "rgb16.png")
    refused(tmp_path / "rgb16.png", spec, "16-bit PNG")
    Image.new("L", (400, 400)).save(tmp_path / "grey.png")
    refused(tmp_path / "grey.png", spec, "L image with 1 band(s)", "3-band RGB")
    Image.new("RGBA", (400, 400), (10, 10, 10, 128)).save(tmp_path / "alpha.png")
    refused(tmp_path / "alpha.png", spec, "transparent")
    Image.new("CMYK", (400, 400)).save(tmp_path / "cmyk.jpg")
    refused(tmp_path / "cmyk.jpg", spec, "CMYK image with 4 band(s)")
    np.save(tmp_path / "complex.npy", np.zeros((3, 400, 400), np.complex64))
    refused(tmp_path / "complex.npy", spec, "dtype complex64")
    np.save(tmp_path / "rgba.npy", np.zeros((400, 400, 4), np.uint8))
    refused(tmp_path / "rgba.npy", spec, "shape (400, 400, 4)")
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object))
    refused(tmp_path / "objects.npy", spec, "not a readable .npy array")


def test_corrupt_png(tmp_path, spec):
    Image.new("RGB", (400, 400), (200, 10, 10)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.png", spec, "corrupt or unreadable image")
    (tmp_path / "noise.jpg").write_bytes(os.urandom(2000))
    refused(tmp_path / "noise.jpg", spec, "corrupt or unreadable image")


def test_unreadable_paths(tmp_path, spec):
    for name in ("missing.fits", "missing.png", "missing.npy"):
        refused(tmp_path / name, spec, "no such file")
    (tmp_path / "notes.txt").write_text("hello")
    refused(tmp_path / "notes.txt", spec, "unsupported file type")
    (tmp_path / "dir.fits").mkdir()
    refused(tmp_path / "dir.fits", spec, "is a directory")
    if os.geteuid() != 0:  # root reads anything
        locked = write_cube_fits(tmp_path / "locked.fits", make_cube())
        os.chmod(locked, 0)
        refused(locked, spec, "permission denied")


def test_model_that_is_not_onnx(tmp_path):
    (tmp_path / "model.onnx").write_text("not a protobuf")
    with pytest.raises(ValueError, match=r"model.onnx: not a loadable ONNX model \(") as info:
        Detector(tmp_path / "model.onnx")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="nothing.onnx: no such model file"):
        Detector(tmp_path / "nothing.onnx")


def test_model_without_clumpdet_metadata(tmp_path):
    path = build_toy_model(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(ValueError, match=r"bare.onnx: missing clumpdet metadata key 'clumpdet.preset'"):
        Detector(path)
