"""examples/cpp: the exported ONNX runs from C++ (ONNX Runtime C++ API) and agrees with the Python engine.

Builds ``examples/cpp/build.sh`` (headers from Debian 13's libonnxruntime-dev,
library from the onnxruntime wheel; cached in the git-ignored
``examples/cpp/build``), exports a small real detector (``tests/export``'s
native-architecture model), and compares the program's detections with
:class:`clumpdet.engine.detector.Detector` on the same model inputs, fed as a
raw float32 file, a FITS cube and a FITS file with three image HDUs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import Detections

ROOT = Path(__file__).resolve().parents[2]
CPP = ROOT / "examples" / "cpp"
TOL = 1e-4


@pytest.fixture(scope="module")
def binary() -> Path:
    """The built ``clumpdet_detect``; skipped when a build prerequisite is missing."""
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(CPP / "build.sh")], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    if proc.returncode == 3:
        pytest.skip(f"cannot build examples/cpp: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"examples/cpp/build.sh failed:\n{proc.stdout}\n{proc.stderr}"
    path = CPP / "build" / "clumpdet_detect"
    assert os.access(path, os.X_OK)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A small real export (native architecture: padded internal input, K > per-image top-k)."""
    torch = pytest.importorskip("torch", reason="exporting the test model needs torch (the [export] extra)")
    pytest.importorskip("clumpdet.export.onnx_export", reason="exporting the test model needs the [export] extra")
    from clumpdet.export.onnx_export import export_onnx
    from tests.export.helpers import SMALL_NATIVE, calibrated

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("cpp_model") / "native_small.onnx"
    return str(export_onnx(calibrated(SMALL_NATIVE, 1), SMALL_NATIVE, path))


def parse_output(text: str) -> list[tuple[Detections, list[str]]]:
    """Parse ``clumpdet_detect``'s stdout: ``# <file>: <n> detections`` then ``label name score x1 y1 x2 y2``.

    Returns one ``(Detections, class names)`` per image; boxes in model-input pixels.
    """
    images: list[list[tuple]] = []
    counts = []
    for line in text.splitlines():
        if line.startswith("# "):
            counts.append(int(line.rsplit(":", 1)[1].split()[0]))
            images.append([])
            continue
        parts = line.split()
        label, name, nums = int(parts[0]), " ".join(parts[1:-5]), [float(v) for v in parts[-5:]]
        images[-1].append((label, name, *nums))
    out = []
    for rows, n in zip(images, counts):
        assert len(rows) == n
        arr = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 5)
        labels = np.array([r[0] for r in rows], dtype=np.int64)
        out.append((Detections(boxes=arr[:, 1:], scores=arr[:, 0], labels=labels), [r[1] for r in rows]))
    return out


def test_cpp_program_matches_python_engine(binary, model, tmp_path):
    from tests.export.helpers import make_images

    spec = importlib.util.spec_from_file_location("write_cutout", CPP / "write_cutout.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    write_model_input = helper.write_model_input
    detector = Detector(model, intra_op_threads=1)
    h, w = detector.input_size
    images = make_images(3, seed=7, size=h).numpy()
    images[2, :, : h // 2] = 0.0  # a half-black image
    raw = write_model_input(images[0], str(tmp_path / "a.f32"))
    cube = write_model_input(images[1], str(tmp_path / "b.fits"))
    hdus = str(tmp_path / "c.fits")  # three 2-D image extensions, R, G, B
    planes = [fits.ImageHDU(p.astype(">f4"), name=n) for p, n in zip(images[2], "RGB")]
    fits.HDUList([fits.PrimaryHDU(), *planes]).writeto(hdus)

    proc = subprocess.run([str(binary), "--threads", "1", model, raw, cube, hdus], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = parse_output(proc.stdout)
    want = detector.detect(images)
    assert len(got) == 3
    assert all(len(d) for d in want), "the test model should detect something in every image"
    for (g, names), e in zip(got, want):
        assert len(g) == len(e)
        np.testing.assert_array_equal(g.labels, e.labels)
        assert names == [detector.class_names[i] for i in e.labels]
        np.testing.assert_allclose(g.scores, e.scores, rtol=0, atol=TOL)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=0, atol=TOL)
    assert f"input [N, 3, {h}, {w}]" in proc.stderr


def test_write_cutout_feeds_the_engines_preprocessing(binary, model, tmp_path):
    """A FITS flux cube -> write_cutout.py (engine reader + Lupton stretch) -> C++ equals Detector.detect_files."""
    detector = Detector(model, intra_op_threads=1)
    h, w = detector.input_size
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    flux = rng.normal(0.0, 0.02, size=(3, h, w))
    for cx, cy, s in ((40, 50, 4.0), (80, 70, 2.0), (64, 64, 12.0)):
        flux += np.array([2.0, 3.0, 4.0])[:, None, None] * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    src = tmp_path / "galaxy.fits"
    fits.PrimaryHDU(flux.astype(np.float32)).writeto(src)
    out = tmp_path / "galaxy.f32"
    proc = subprocess.run([sys.executable, str(CPP / "write_cutout.py"), model, str(src), str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["offset", "0", "0"]
    assert out.stat().st_size == 3 * h * w * 4
    (want,) = [r.detections for r in detector.detect_files([str(src)])]
    run = subprocess.run([str(binary), "--threads", "1", model, str(out)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    ((got, _),) = parse_output(run.stdout)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=TOL)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=TOL)


def test_cpp_program_reports_bad_input(binary, model, tmp_path):
    short = tmp_path / "short.f32"
    short.write_bytes(np.zeros(10, dtype="<f4").tobytes())
    proc = subprocess.run([str(binary), model, str(short)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "short.f32: 40 bytes, expected" in proc.stderr
    proc = subprocess.run([str(binary), str(short), str(short)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1 and "onnxruntime error" in proc.stderr
