"""``clumpdet detect`` end to end: catalogue, summary, overlays, resume, exit status."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from conftest import build_toy_model, expected_boxes, make_cube, wcs_header, write_cube_fits
from PIL import Image

from clumpdet.engine.catalogue import read_table
from clumpdet.engine.cli import main
from clumpdet.engine.preprocess import lupton_rgb_uint8
from clumpdet.train.presets import NATIVE


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "cutouts"
    d.mkdir()
    cube = make_cube()
    write_cube_fits(d / "a.fits", cube, wcs_header())
    Image.fromarray(lupton_rgb_uint8(cube[::-1], NATIVE.input.lupton)).save(d / "b.png")
    for j, band in enumerate("gri"):
        fits.PrimaryHDU(cube[j], header=wcs_header()).writeto(d / f"c_{band}.fits")
    (d / "d.fits").write_bytes(b"corrupt" * 500)
    Image.new("RGB", (400, 400)).save(d / "e.png")  # nothing to detect
    return d


def detect(*args):
    return main(["detect", *map(str, args), "--workers", "2", "--threads", "1", "--batch-size", "2"])


def test_detect_writes_catalogue_summary_and_overlays(inputs, toy_model_path, tmp_path, capsys):
    out, overlays = tmp_path / "out" / "cat.fits", tmp_path / "ov"
    assert detect(inputs, "--model", toy_model_path, "--out", out, "--overlays", overlays) == 0
    err = capsys.readouterr().err
    assert "images/s" in err and "5/5 images" in err
    assert f"failed: {inputs / 'd.fits'}: corrupt or truncated FITS file" in err
    cat, summary = read_table(str(out)), read_table(str(tmp_path / "out" / "cat_summary.fits"))
    ids = [str(inputs / n) for n in ("a.fits", "b.png", "c_{g,r,i}.fits", "d.fits", "e.png")]
    assert [str(s) for s in summary["image"]] == ids
    assert [str(s) for s in summary["status"]] == ["ok", "ok", "ok", "failed", "no_detections"]
    assert list(summary["n_dets"]) == [3, 3, 3, 0, 0] and len(cat) == 9
    want = sorted((x1 - 0.5, y1 - 0.5) for x1, y1, *_ in expected_boxes())
    for sid in ids[:3]:
        rows = cat[[str(s) == sid for s in cat["image"]]]
        assert sorted(zip(rows["x_min"].tolist(), rows["y_min"].tolist())) == want
    assert np.all(np.isfinite(cat["ra"][:3])) and np.all(np.isnan(cat["ra"][3:6]))  # the PNG has no WCS
    np.testing.assert_allclose(cat["ra"][6:9], cat["ra"][:3])  # band-split files carry the WCS too
    pngs = sorted(p.name for p in overlays.iterdir())
    assert pngs == ["a.fits.png", "b.png.png", "c_g_r_i_.fits.png", "e.png.png"]
    with Image.open(overlays / pngs[0]) as im:
        assert im.size == (800, 800) and im.mode == "RGB"


def test_resume_skips_done_images_and_retries_failures(inputs, toy_model_path, tmp_path, capsys):
    out = tmp_path / "cat.ecsv"
    assert detect(inputs, "--model", toy_model_path, "--out", out) == 0
    assert detect(inputs, "--model", toy_model_path, "--out", out) == 2  # exists: refuse to clobber
    assert "pass --resume" in capsys.readouterr().err
    write_cube_fits(inputs / "f.fits", make_cube(seed=3))
    assert detect(inputs, "--model", toy_model_path, "--out", out, "--resume") == 0
    err = capsys.readouterr().err
    assert "2 inputs" in err  # the failed d.fits (retried) and the new f.fits
    summary = read_table(str(tmp_path / "cat_summary.ecsv"))
    assert sorted(str(s) for s in summary["image"]) == sorted(
        str(inputs / n) for n in ("a.fits", "b.png", "c_{g,r,i}.fits", "d.fits", "e.png", "f.fits"))
    assert len(read_table(str(out))) == 12
    other = build_toy_model(tmp_path / "other.onnx", cell=16)
    assert detect(inputs, "--model", other, "--out", out, "--resume") == 2
    assert "made by another model" in capsys.readouterr().err
    assert detect(inputs, "--model", toy_model_path, "--out", out, "--overwrite") == 0
    assert "6 inputs" in capsys.readouterr().err and len(read_table(str(out))) == 12  # all re-run


def test_filelist_csv_and_raised_threshold(inputs, toy_model_path, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{inputs / 'a.fits'}\n{inputs / 'b.png'}\n")
    out = tmp_path / "cat.csv"
    assert detect(f"@{listing}", "--model", toy_model_path, "--out", out, "--threshold", "0.99", "--quiet") == 0
    summary = read_table(str(tmp_path / "cat_summary.csv"))
    assert list(summary["status"]) == ["no_detections", "no_detections"] and len(read_table(str(out))) == 0


def test_exit_status(inputs, toy_model_path, tmp_path, capsys):
    model = ("--model", toy_model_path)
    assert detect(inputs / "d.fits", *model, "--out", tmp_path / "x.fits") == 1  # every input failed
    assert detect(inputs, *model, "--out", tmp_path / "x.txt") == 2
    assert "unknown table format" in capsys.readouterr().err
    assert detect(inputs, *model, "--out", tmp_path / "y.fits", "--threshold", "0.1") == 2
    assert "can only be raised" in capsys.readouterr().err
    assert detect(tmp_path / "nothing*.fits", *model, "--out", tmp_path / "z.fits") == 2
    assert "no input files matched" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_text("nope")
    assert detect(inputs, "--model", tmp_path / "m.onnx", "--out", tmp_path / "w.fits") == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse usage error
        detect(inputs, "--out", tmp_path / "v.fits")
    assert info.value.code == 2


@pytest.mark.slow
def test_thousand_files_with_ten_corrupt(toy_model_path, tmp_path, capsys):
    """Issue 4: a 1000-file job with 10 corrupt files writes 990 results and lists the 10 failures."""
    d = tmp_path / "many"
    d.mkdir()
    cube = make_cube()
    write_cube_fits(tmp_path / "one.fits", cube, wcs_header())
    good = tmp_path / "one.fits"
    for i in range(1000):
        target = d / f"img{i:04d}.fits"
        if i % 100 == 37:
            target.write_bytes(good.read_bytes()[: 2880 * (i // 100 + 2)])  # truncated at various points
        else:
            target.symlink_to(good)
    out = tmp_path / "cat.fits"
    assert detect(str(d / "*.fits"), "--model", toy_model_path, "--out", out, "--batch-size", "16") == 0
    summary = read_table(str(tmp_path / "cat_summary.fits"))
    failed = summary[summary["status"] == "failed"]
    assert len(summary) == 1000 and len(failed) == 10
    assert [str(s) for s in failed["image"]] == [str(d / f"img{i:04d}.fits") for i in range(37, 1000, 100)]
    assert all("truncated" in str(r) for r in failed["reason"])
    assert len(read_table(str(out))) == 990 * 3
    assert capsys.readouterr().err.count("clumpdet detect: failed: ") == 10


def test_overlay_draws_each_class_in_its_colour():
    from clumpdet.engine.metrics import Detections
    from clumpdet.engine.overlay import class_colour, overlay_name, overlay_names, render_overlay

    dets = Detections(np.array([[8.0, 16.0, 24.0, 32.0], [40.0, 40.0, 48.0, 44.0]]), np.array([0.9, 0.5]),
                      np.array([1, 2]))
    im = np.asarray(render_overlay(np.zeros((3, 64, 64), np.float32), dets, NATIVE.class_names, scale=1,
                                   labels=False))
    assert class_colour(1) != class_colour(2)
    assert tuple(im[16, 8]) == tuple(im[31, 23]) == class_colour(1)  # box covers pixels 8..23, 16..31
    assert tuple(im[40, 40]) == tuple(im[43, 47]) == class_colour(2)
    assert not im[24, 15].any() and not im[32, 24].any()  # inside and just outside stay black
    assert overlay_name("dir/sub/x_{g,r,i}.fits") == "dir_sub_x_g_r_i_.fits.png"
    assert overlay_names(["a/x.png", "b/x.png", "a/y.fits"]) == {
        "a/x.png": "a_x.png.png", "b/x.png": "b_x.png.png", "a/y.fits": "y.fits.png"}
