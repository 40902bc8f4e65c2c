"""Pipelined runner: same results as a plain loop, input order, bounded look-ahead, bad files skipped."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_cube, write_cube_fits
from PIL import Image

from clumpdet.engine.detector import Detector
from clumpdet.engine.inputs import Source
from clumpdet.engine.readers import read_cutout
from clumpdet.engine.runner import run_detector


@pytest.fixture(scope="module")
def detector(toy_model_path):
    return Detector(toy_model_path, intra_op_threads=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    paths = []
    for i in range(11):
        if i in (3, 7):
            (root / f"bad{i}.fits").write_bytes(b"broken" * 100)
            paths.append(str(root / f"bad{i}.fits"))
        elif i == 5:
            Image.new("RGB", (400, 400)).save(root / "black.png")  # no detections
            paths.append(str(root / "black.png"))
        else:
            sources = ((8 * i, 8 * i, "red"), (300, 8 * i, "blue"))
            paths.append(write_cube_fits(root / f"img{i:02d}.fits", make_cube(sources=sources, seed=i)))
    return paths


def test_pipelined_equals_a_plain_loop(detector, files):
    sources = [Source(p, (p,)) for p in files]
    results = list(run_detector(detector, sources, batch_size=4, workers=2))
    assert [r.source for r in results] == files
    assert [r.status for r in results].count("failed") == 2
    assert results[5].status == "no_detections"
    for src, res in zip(sources, results):
        try:
            cut = read_cutout(src, detector.metadata.input)
        except ValueError as err:
            assert res.status == "failed" and res.error == str(err)
            continue
        (dets,) = detector.detect(cut.image[None])
        np.testing.assert_array_equal(res.detections.boxes, dets.boxes)
        np.testing.assert_array_equal(res.detections.scores, dets.scores)
        np.testing.assert_array_equal(res.detections.labels, dets.labels)
        np.testing.assert_array_equal(res.cutout.image, cut.image)
    ok = results[0].detections
    assert len(ok) == 2 and set(ok.labels.tolist()) == {1, 2}


def test_look_ahead_is_bounded(detector, files):
    consumed = []

    def lazy():
        for i in range(40):
            consumed.append(i)
            yield Source(f"job{i}", (files[i % len(files)],))

    batch, prefetch = 3, 1
    yielded = 0
    for _ in run_detector(detector, lazy(), batch_size=batch, workers=2, prefetch_batches=prefetch):
        yielded += 1
        assert len(consumed) - yielded <= batch * (prefetch + 2)
    assert yielded == 40


def test_bad_arguments(detector):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(run_detector(detector, [], batch_size=0))
