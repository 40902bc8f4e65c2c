"""Readers: every input layout gives the same model input; FITS and PNG paths are bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from conftest import make_cube, wcs_header, write_cube_fits
from PIL import Image

from clumpdet.engine.inputs import Source, expand_inputs, group_sources
from clumpdet.engine.preprocess import cube_to_input, lupton_rgb_uint8
from clumpdet.engine.readers import fit_to_input, read_cutout


@pytest.fixture(scope="module")
def cube():
    return make_cube()  # file order g, r, i


def rgb_order(cube, spec):
    """File order (g, r, i) -> the stretch's (R, G, B) order (i, r, g)."""
    by_band = dict(zip(("g", "r", "i"), cube))
    return np.stack([by_band[b] for b in spec.lupton.bands])


def test_fits_and_png_give_bit_identical_inputs(tmp_path, cube, spec):
    fits_path = write_cube_fits(tmp_path / "x.fits", cube)
    png_path = tmp_path / "x.png"
    Image.fromarray(lupton_rgb_uint8(rgb_order(cube, spec), spec.lupton)).save(png_path)
    from_fits = read_cutout(fits_path, spec)
    from_png = read_cutout(str(png_path), spec)
    assert from_fits.image.dtype == from_png.image.dtype == np.float32
    assert from_fits.image.shape == (3, spec.height, spec.width)
    np.testing.assert_array_equal(from_fits.image, from_png.image)
    # ... and both equal the one preprocessing definition applied directly.
    np.testing.assert_array_equal(from_fits.image, cube_to_input(rgb_order(cube, spec), spec.lupton))
    assert from_fits.flags == () and from_fits.offset == (0, 0)


def test_every_fits_layout_gives_the_same_input(tmp_path, cube, spec):
    ref = read_cutout(write_cube_fits(tmp_path / "cube.fits", cube), spec).image
    # three HDUs named by band, stored in a shuffled order
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(cube[j], name=b.upper()) for j, b in ((2, "i"), (0, "g"), (1, "r"))]
    fits.HDUList(hdus).writeto(tmp_path / "named.fits")
    # three unnamed HDUs in wavelength order (g, r, i)
    fits.HDUList([fits.PrimaryHDU(cube[0]), fits.ImageHDU(cube[1]), fits.ImageHDU(cube[2])]).writeto(tmp_path / "ordered.fits")
    # a cube in another plane order declared by the BANDS card
    hdr = fits.Header()
    hdr["BANDS"] = "i,g,r"
    fits.PrimaryHDU(cube[[2, 0, 1]], header=hdr).writeto(tmp_path / "bands.fits")
    for name in ("named.fits", "ordered.fits", "bands.fits"):
        np.testing.assert_array_equal(read_cutout(str(tmp_path / name), spec).image, ref, err_msg=name)
    # three files named by band make one source
    for j, b in enumerate("gri"):
        fits.PrimaryHDU(cube[j], header=wcs_header()).writeto(tmp_path / f"gal_{b}.fits")
    sources = expand_inputs([str(tmp_path / "gal_*.fits")], spec.lupton.bands)
    assert len(sources) == 1 and sources[0].bands == ("g", "r", "i")
    assert sources[0].id == str(tmp_path / "gal_{g,r,i}.fits")
    split = read_cutout(sources[0], spec)
    np.testing.assert_array_equal(split.image, ref)
    assert split.wcs is not None and split.wcs.has_celestial


def test_wcs_and_integer_dtypes(tmp_path, cube, spec):
    cut = read_cutout(write_cube_fits(tmp_path / "w.fits", cube, wcs_header()), spec)
    assert cut.wcs is not None and cut.wcs.naxis == 2
    # int16 with BSCALE/BZERO is scaled by astropy; uint8 data is just numbers
    hdu = fits.PrimaryHDU(np.round(cube * 100).astype(np.int16))
    hdu.writeto(tmp_path / "i16.fits")
    expected = cube_to_input(rgb_order(np.round(cube * 100).astype(np.float64), spec), spec.lupton)
    np.testing.assert_array_equal(read_cutout(str(tmp_path / "i16.fits"), spec).image, expected)
    scaled = fits.PrimaryHDU(cube.astype(np.float64))
    scaled.scale("int16", bscale=0.01, bzero=0.0)
    scaled.writeto(tmp_path / "scaled.fits")
    stored = fits.getdata(tmp_path / "scaled.fits").astype(np.float64)  # physical values, 0.01 steps
    assert np.abs(stored - cube).max() <= 0.006
    np.testing.assert_array_equal(read_cutout(str(tmp_path / "scaled.fits"), spec).image,
                                  cube_to_input(rgb_order(stored, spec), spec.lupton))


def test_npy_inputs(tmp_path, cube, spec):
    np.save(tmp_path / "cube.npy", cube)
    rgb = lupton_rgb_uint8(rgb_order(cube, spec), spec.lupton)
    np.save(tmp_path / "rgb.npy", rgb)
    ref = cube_to_input(rgb_order(cube, spec), spec.lupton)
    np.testing.assert_array_equal(read_cutout(str(tmp_path / "cube.npy"), spec).image, ref)
    np.testing.assert_array_equal(read_cutout(str(tmp_path / "rgb.npy"), spec).image, ref)


def test_centre_crop_and_pad_carry_the_offset(tmp_path, spec):
    big = make_cube(424, 430)
    cut = read_cutout(write_cube_fits(tmp_path / "big.fits", big), spec)
    assert cut.orig_shape == (424, 430) and cut.offset == (15, 12) and cut.flags == ("cropped",)
    full = lupton_rgb_uint8(rgb_order(big, spec), spec.lupton)
    np.testing.assert_array_equal(cut.image, full[12:412, 15:415].transpose(2, 0, 1) / np.float32(255))
    small = make_cube(390, 400)
    cut = read_cutout(write_cube_fits(tmp_path / "small.fits", small), spec)
    assert cut.offset == (0, -5) and cut.flags == ("padded",)
    assert np.all(cut.image[:, :5] == 0) and np.all(cut.image[:, 395:] == 0)
    rgb, offset, flags = fit_to_input(np.ones((5, 3, 3), np.uint8), 4, 4)
    assert offset == (0, 0) and flags == ("padded", "cropped")  # x padded on the right, y cropped at the bottom
    assert rgb.shape == (4, 4, 3) and rgb[:, :3].all() and not rgb[:, 3].any()


def test_rgba_opaque_png_and_palette_png_are_accepted(tmp_path, cube, spec):
    rgb = lupton_rgb_uint8(rgb_order(cube, spec), spec.lupton)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "a.png")
    cut = read_cutout(str(tmp_path / "a.png"), spec)
    assert cut.flags == ("alpha_dropped",)
    np.testing.assert_array_equal(cut.image, rgb.transpose(2, 0, 1) / np.float32(255))
    Image.fromarray(rgb).quantize(8).save(tmp_path / "p.png")
    assert read_cutout(str(tmp_path / "p.png"), spec).image.shape == (3, 400, 400)


def test_group_sources_keeps_incomplete_triplets_single():
    srcs = group_sources(["a_g.fits", "b.png", "a_r.fits", "c_g.fits", "a_i.fits"], ("i", "r", "g"))
    assert [s.id for s in srcs] == ["a_{g,r,i}.fits", "b.png", "c_g.fits"]
    assert srcs[0] == Source("a_{g,r,i}.fits", ("a_g.fits", "a_r.fits", "a_i.fits"), ("g", "r", "i"))


def test_expand_directory_and_filelist(tmp_path):
    for name in ("b.png", "a.fits", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inputs\n{tmp_path / 'b.png'}\n\nmissing.fits\n")
    ids = [s.id for s in expand_inputs([str(tmp_path), f"@{listing}"], ("i", "r", "g"))]
    assert ids == [str(tmp_path / "a.fits"), str(tmp_path / "b.png"), "missing.fits"]
    with pytest.raises(ValueError, match="nolist.txt: cannot read file list"):
        expand_inputs([f"@{tmp_path / 'nolist.txt'}"], ("i", "r", "g"))


def test_gzipped_fits_and_jpeg(tmp_path, cube, spec):
    ref = read_cutout(write_cube_fits(tmp_path / "x.fits", cube, wcs_header()), spec)
    gz = read_cutout(write_cube_fits(tmp_path / "x.fits.gz", cube, wcs_header()), spec)
    np.testing.assert_array_equal(gz.image, ref.image)
    assert gz.wcs is not None
    rgb = lupton_rgb_uint8(rgb_order(cube, spec), spec.lupton)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    jpg = read_cutout(str(tmp_path / "x.jpg"), spec)
    assert jpg.image.shape == (3, 400, 400) and jpg.wcs is None
    assert np.abs(jpg.image - ref.image).mean() < 0.01  # lossy, but the same picture
