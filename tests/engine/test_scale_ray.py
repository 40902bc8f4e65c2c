"""``clumpdet detect --ray``: a local Ray instance (2 CPUs) writes the same catalogue and summary as the local path."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from conftest import make_cube, wcs_header, write_cube_fits
from PIL import Image

from clumpdet.engine.catalogue import read_table
from clumpdet.engine.cli import main
from clumpdet.engine.preprocess import lupton_rgb_uint8
from clumpdet.train.presets import NATIVE

ray = pytest.importorskip("ray", reason="the Ray scale-out needs the [scale] extra (ray[data])")
pytest.importorskip("ray.data", reason="the Ray scale-out needs the [scale] extra (ray[data])")

from clumpdet.engine.scale_ray import plan_resources  # noqa: E402 - after the skip


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU local Ray instance with its session files under the test's tmp."""
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20,
             _temp_dir=str(tmp), configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Seven sources: FITS cubes with WCS, a PNG, a band-split triplet, a corrupt file, an empty image."""
    d = tmp_path_factory.mktemp("cutouts")
    for seed in range(3):
        sources = ((200, 96, "red"), (104 + 8 * seed, 240, "blue"), (296, 304 - 16 * seed, "red"))
        write_cube_fits(d / f"a{seed}.fits", make_cube(sources=sources, seed=seed), wcs_header())
    cube = make_cube()
    Image.fromarray(lupton_rgb_uint8(cube[::-1], NATIVE.input.lupton)).save(d / "b.png")
    for j, band in enumerate("gri"):
        fits.PrimaryHDU(cube[j], header=wcs_header()).writeto(d / f"c_{band}.fits")
    (d / "d.fits").write_bytes(b"corrupt" * 500)
    Image.new("RGB", (400, 400)).save(d / "e.png")
    return d


def detect(*args):
    return main(["detect", *map(str, args), "--threads", "1", "--batch-size", "2", "--quiet"])


def assert_same_tables(got, want):
    assert got.colnames == want.colnames
    assert len(got) == len(want)
    for name in want.colnames:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        if g.dtype.kind == "f":
            np.testing.assert_array_equal(g, w, err_msg=name)  # same model, same bytes in: identical
        else:
            assert [str(v) for v in g] == [str(v) for v in w], name
    for key in ("MODELSHA", "THRESH", "CLASSES", "PRESET"):
        assert got.meta[key] == want.meta[key]


def test_ray_catalogue_equals_local(local_ray, inputs, toy_model_path, tmp_path, capsys):
    local, remote = tmp_path / "local.ecsv", tmp_path / "ray.ecsv"
    assert detect(inputs, "--model", toy_model_path, "--out", local, "--workers", "1") == 0
    assert detect(inputs, "--model", toy_model_path, "--out", remote, "--ray", "--ray-actors", "2") == 0
    err = capsys.readouterr().err
    assert f"failed: {inputs / 'd.fits'}: corrupt or truncated FITS file" in err
    summary = read_table(str(tmp_path / "ray_summary.ecsv"))
    assert [str(s) for s in summary["status"]] == ["ok"] * 5 + ["failed", "no_detections"]
    assert list(summary["n_dets"]) == [3] * 5 + [0, 0]
    assert_same_tables(summary, read_table(str(tmp_path / "local_summary.ecsv")))
    cat = read_table(str(remote))
    assert len(cat) == 15 and np.all(np.isfinite(cat["ra"][:9]))  # the FITS cubes carry a WCS
    assert_same_tables(cat, read_table(str(local)))


def test_ray_resume_retries_failures_and_skips_done(local_ray, inputs, toy_model_path, tmp_path, capsys):
    out = tmp_path / "cat.fits"
    first = [inputs / "a0.fits", inputs / "d.fits", inputs / "e.png"]
    assert detect(*first, "--model", toy_model_path, "--out", out, "--ray") == 0
    assert detect(inputs, "--model", toy_model_path, "--out", out, "--ray", "--resume") == 0
    err = capsys.readouterr().err
    assert err.count("d.fits: corrupt or truncated FITS file") == 2  # retried once, still listed
    summary = read_table(str(tmp_path / "cat_summary.fits"))
    names = [str(s).rsplit("/", 1)[1] for s in summary["image"]]
    assert names == ["a0.fits", "e.png", "a1.fits", "a2.fits", "b.png", "c_{g,r,i}.fits", "d.fits"]
    assert [str(s) for s in summary["status"]] == ["ok", "no_detections", "ok", "ok", "ok", "ok", "failed"]
    cat = read_table(str(out))
    assert len(cat) == 15 and sorted(set(str(s) for s in cat["image"])) == sorted(
        str(s) for s, st in zip(summary["image"], summary["status"]) if st == "ok")


def test_usage_errors(inputs, toy_model_path, tmp_path, capsys):
    assert detect(inputs, "--model", toy_model_path, "--out", tmp_path / "x.ecsv", "--ray-actors", "2") == 2
    assert detect(inputs, "--model", toy_model_path, "--out", tmp_path / "x.ecsv", "--ray", "--overlays",
                  tmp_path / "ov") == 2
    err = capsys.readouterr().err
    assert "--address and --ray-actors need --ray" in err and "--overlays is not supported with --ray" in err


@pytest.mark.parametrize(("cpus", "actors", "threads", "want"), [(2, 2, 1, 0.5), (2, 1, 1, 1.0), (64, 8, 4, 4.0),
                                                                 (4, 2, 4, 1.5), (1, 1, 1, 0.05)])
def test_actors_leave_a_cpu_for_decoding(cpus, actors, threads, want):
    res = plan_resources(cpus, actors, threads, gpu=False)
    assert res == {"num_cpus": want, "num_gpus": 0.0}
    assert actors * res["num_cpus"] <= max(cpus - 1, 0.05 * actors)
    assert plan_resources(cpus, actors, threads, gpu=True)["num_gpus"] == 1.0
    with pytest.raises(ValueError, match="at least 1 actor"):
        plan_resources(cpus, 0, threads, gpu=False)
