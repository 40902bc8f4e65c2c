"""The synthetic clump simulator (train/simulate): physics, truth, determinism, outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from PIL import Image

from clumpdet.engine.cli import main as cli_main
from clumpdet.train.presets import CLUMP_CLASSES
from clumpdet.train.simulate import SimParams, generate, simulate_image
from clumpdet.train.simulate.galaxy import sample_galaxy
from clumpdet.train.simulate.noise import variance_band
from clumpdet.train.simulate.profiles import elliptical_radius, gaussian_stamp, sersic_image
from clumpdet.train.simulate.psf import PSF, psf_kernel
from clumpdet.train.simulate.writer import read_fits_cube, rgb_of

P = SimParams()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same 6-image set written with 1 and with 2 workers."""
    one = tmp_path_factory.mktemp("w1")
    two = tmp_path_factory.mktemp("w2")
    s1 = generate(6, 11, one, workers=1)
    s2 = generate(6, 11, two, workers=2)
    return one, two, s1, s2


def test_same_seed_same_image_and_truth():
    a, b = simulate_image(3, 7, P), simulate_image(3, 7, P)
    np.testing.assert_array_equal(a.cube, b.cube)
    assert json.dumps(a.truth) == json.dumps(b.truth)  # nan-safe comparison
    c = simulate_image(3, 8, P)
    assert not np.array_equal(a.cube, c.cube)


def test_worker_count_does_not_change_output(sets):
    one, two, s1, s2 = sets
    assert s1["workers"] == 1 and s2["workers"] == 2
    assert (one / "annotations.json").read_text() == (two / "annotations.json").read_text()
    assert (one / "truth.ecsv").read_text() == (two / "truth.ecsv").read_text()
    for k in range(6):
        c1, _ = read_fits_cube(one / f"fits/sim_{k:06d}.fits")
        c2, _ = read_fits_cube(two / f"fits/sim_{k:06d}.fits")
        np.testing.assert_array_equal(c1, c2)
        assert (one / f"png/sim_{k:06d}.png").read_bytes() == (two / f"png/sim_{k:06d}.png").read_bytes()


def test_truth_boxes_in_central_region_and_physical():
    lo, hi = P.central
    n_clumps = 0
    for k in range(30):
        im = simulate_image(k, 0, P)
        for row in im.truth:
            assert lo <= row["x1"] < row["x2"] <= hi and lo <= row["y1"] < row["y2"] <= hi
            assert row["x"] == pytest.approx(0.5 * (row["x1"] + row["x2"]))
            side = row["x2"] - row["x1"]
            assert side == pytest.approx(P.box_fwhm_factor * row["fwhm_obs_pix"])
            assert side == pytest.approx(row["y2"] - row["y1"])
            assert np.hypot(row["x"] - im.galaxy.x0, row["y"] - im.galaxy.y0) >= side  # not the nucleus
            assert row["label"] == CLUMP_CLASSES[row["label_id"]] and row["label_id"] in (1, 2)
            assert 0.01 <= row["flux_fraction"] <= 0.5
            if row["label_id"] == 1:
                n_clumps += 1
                assert row["g_r"] < im.galaxy.disc_gr - 0.1  # bluer than the disc
                assert row["fwhm_obs_pix"] >= im.psfs[1].fwhm
            else:
                assert row["g_r"] >= 0.9  # red star
        assert 1.0 / P.pixel_scale <= im.psfs[1].fwhm <= 2.0 / P.pixel_scale
    assert n_clumps > 30


def test_flux_fraction_by_aperture_photometry_on_noiseless_render():
    p = replace(P, no_clump_prob=0.0, clumps_extra_mean=0.0, star_prob=0.0)  # exactly one clump
    for k in range(4):
        im = simulate_image(k, 5, p)
        (row,) = im.truth
        clump = im.model[1] - im.host[1]
        yy, xx = np.mgrid[: clump.shape[0], : clump.shape[1]] + 0.5
        aperture = np.hypot(xx - row["x"], yy - row["y"]) <= 5.0 * row["fwhm_obs_pix"]
        measured = clump[aperture].sum() / im.host[1].sum()
        assert measured == pytest.approx(row["flux_fraction"], rel=0.03)
        # the host's integrated r flux is its catalogue flux (little light beyond the cutout)
        assert im.host[1].sum() == pytest.approx(im.galaxy.flux_r, rel=0.03)


def test_noise_matches_the_stated_variance():
    im = simulate_image(0, 3, P)
    pull = (im.cube[1] - im.model[1]) / np.sqrt(variance_band(im.model[1], float(im.sky[1]), P, band=1))
    assert abs(pull.mean()) < 0.01
    assert pull.std() == pytest.approx(1.0, rel=0.01)
    assert 0.015 < np.sqrt(im.sky[1] / 904.0) < 0.05  # SDSS-like r sky noise, nmgy per pixel


def test_profiles_and_psf():
    img = sersic_image((400, 400), 200.3, 199.8, 100.0, 5.0, 4.0, 0.7, 0.4)
    assert img.sum() == pytest.approx(100.0, rel=0.01)
    assert gaussian_stamp((31, 31), 15.2, 15.7, 3.0, 0.05).sum() == pytest.approx(3.0)
    for prof in ("moffat", "gaussian"):
        psf = PSF(3.5, prof, 3.0)
        assert psf.profile_at(np.array(1.75))[()] == pytest.approx(0.5)
        k = psf_kernel(psf, 25, 5)
        assert k.shape == (51, 51) and k.sum() == pytest.approx(1.0)
        assert np.unravel_index(np.argmax(k), k.shape) == (25, 25)
    gal = sample_galaxy(np.random.default_rng(1), P)
    x, y = gal.disc_to_image(10.0, 1.0)
    u, w = elliptical_radius(np.array(x), np.array(y), gal.x0, gal.y0, gal.q, gal.pa)
    assert np.hypot(u, w) == pytest.approx(10.0)


def test_outputs_wcs_png_coco(sets):
    root = sets[0]
    coco = json.loads((root / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLUMP_CLASSES[1:])
    truth = Table.read(root / "truth.ecsv")
    assert len(truth) == len(coco["annotations"])
    meta = json.loads((root / "params.json").read_text())
    assert meta["seed"] == 11 and meta["params"]["pixel_scale"] == P.pixel_scale
    for im in coco["images"]:
        cube, header = read_fits_cube(root / im["fits_file"])
        assert cube.shape == (3, 400, 400) and np.all(np.isfinite(cube))
        wcs = WCS(header)
        assert wcs.has_celestial
        sky = wcs.pixel_to_world(199.5, 199.5)  # 0-based pixel of CRPIX 200.5
        assert sky.ra.deg == pytest.approx(header["CRVAL1"], abs=1e-9)
        assert sky.dec.deg == pytest.approx(header["CRVAL2"], abs=1e-9)
        scales = wcs.proj_plane_pixel_scales()
        assert [s.to_value("arcsec") for s in scales] == pytest.approx([0.396, 0.396])
        png = np.asarray(Image.open(root / im["file_name"]))
        np.testing.assert_array_equal(png, rgb_of(cube))
        with fits.open(root / im["fits_file"]) as hdul:
            assert [h.name for h in hdul[1:]] == ["G", "R", "I"]
            assert hdul["R"].header["BUNIT"] == "nanomaggy"
        for ann in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = ann["bbox"]
            assert 100 <= x and x + w <= 300 and 100 <= y and y + h <= 300


def test_cli_simulate(tmp_path, capsys):
    assert cli_main(["simulate", "--n", "2", "--seed", "4", "--out", str(tmp_path), "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 2
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["sim_000000.png", "sim_000001.png"]
