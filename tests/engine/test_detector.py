"""Detector: reads its contract from the model's metadata and returns known truth."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import expected_boxes, make_cube, write_cube_fits

from clumpdet.engine.detector import Detector, resolve_providers
from clumpdet.engine.metrics import Detections
from clumpdet.engine.preprocess import cube_to_input
from clumpdet.train.presets import NATIVE


@pytest.fixture(scope="module")
def detector(toy_model_path):
    return Detector(toy_model_path, intra_op_threads=1)


def model_input(sources=None, seed=0):
    cube = make_cube(seed=seed) if sources is None else make_cube(sources=sources, seed=seed)
    return cube_to_input(cube[::-1], NATIVE.input.lupton)  # file order g, r, i -> (i, r, g)


def found(dets: Detections) -> dict[tuple[float, ...], int]:
    return {tuple(float(v) for v in b): int(lab) for b, lab in zip(dets.boxes, dets.labels)}


def test_everything_comes_from_metadata(detector, toy_model_path):
    meta = detector.metadata
    assert meta.preset == "native" and detector.class_names == NATIVE.class_names
    assert detector.input_size == (NATIVE.input.height, NATIVE.input.width)
    assert meta.input == NATIVE.input and meta.postprocess == NATIVE.postprocess
    assert detector.score_threshold == NATIVE.postprocess.final_score_thresh
    assert detector.providers == ["CPUExecutionProvider"]
    assert len(detector.model_sha256) == 64 and detector.model_name == "toy.onnx"


def test_detect_finds_the_injected_sources(detector):
    (dets,) = detector.detect(model_input()[None])
    assert isinstance(dets, Detections)
    assert found(dets) == {tuple(map(float, k)): v for k, v in expected_boxes().items()}
    assert np.all(np.diff(dets.scores) <= 0) and np.all(dets.scores >= detector.score_threshold)
    (empty,) = detector.detect(model_input(sources=())[None])  # an image with no detections
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_results_do_not_depend_on_the_batch(detector):
    images = np.stack([model_input(seed=s) for s in range(3)] + [model_input(sources=())])
    together = detector.detect(images)
    assert len(together) == 4 and len(detector.detect(images[:0])) == 0
    for image, dets in zip(images, together):
        (alone,) = detector.detect(image[None])
        np.testing.assert_array_equal(alone.boxes, dets.boxes)
        np.testing.assert_array_equal(alone.scores, dets.scores)
        np.testing.assert_array_equal(alone.labels, dets.labels)


def test_threshold_can_only_be_raised(toy_model_path, detector):
    (ref,) = detector.detect(model_input()[None])
    cut = float(np.median(ref.scores))
    strict = Detector(toy_model_path, score_threshold=cut)
    (dets,) = strict.detect(model_input()[None])
    assert 0 < len(dets) < len(ref) or np.all(ref.scores >= cut)
    assert np.all(dets.scores >= cut)
    with pytest.raises(ValueError, match="below the model's final threshold 0.3; the exported graph already"):
        Detector(toy_model_path, score_threshold=0.1)


def test_detect_validates_its_batch(detector):
    with pytest.raises(ValueError, match=r"batch must have shape \(N, 3, 400, 400\), got \(3, 400, 400\)"):
        detector.detect(model_input())
    with pytest.raises(ValueError, match="dtype uint8"):
        detector.detect(np.zeros((1, 3, 400, 400), np.uint8))
    (dets,) = detector.detect(model_input()[None].astype(np.float64))  # cast, not refused
    assert len(dets) == 3


def test_providers(toy_model_path):
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="'NoSuchExecutionProvider' is not available"):
        Detector(toy_model_path, providers=["NoSuchExecutionProvider"])


def test_detect_files_keeps_order_and_failures(detector, tmp_path):
    first = write_cube_fits(tmp_path / "a.fits", make_cube())
    second = write_cube_fits(tmp_path / "b.fits", make_cube(seed=1))
    paths = [first, str(tmp_path / "missing.png"), second, first]  # duplicates are run once
    results = detector.detect_files(paths, batch_size=2)
    assert [r.source for r in results] == [first, str(tmp_path / "missing.png"), second]
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].error == f"{tmp_path / 'missing.png'}: no such file"
    assert found(results[2].detections) == found(results[0].detections)
    assert results[0].cutout.image is None and results[0].cutout.orig_shape == (400, 400)
    kept = detector.detect_files([first], keep_images=True)
    assert kept[0].cutout.image.shape == (3, 400, 400)


def test_tensorrt_plan_needs_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        (tmp_path / "m.plan").write_bytes(b"\0" * 16)
        with pytest.raises(ValueError, match=r"m.plan: running a TensorRT plan needs tensorrt>=10"):
            Detector(tmp_path / "m.plan")
    else:
        pytest.skip("tensorrt is installed; the plan backend is exercised by the GPU tests")
