"""The classical sep baseline runs on a small simulated set and returns real metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.sep_baseline import detect, load_truth, main, run_baseline
from clumpdet.train.simulate import generate


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim8")
    generate(8, 2, root, workers=1)
    return root


def test_baseline_metrics(small_set, tmp_path, capsys):
    out = tmp_path / "sep.json"
    assert main([str(small_set), "--json", str(out), "--n-boot", "20"]) == 0
    assert "completeness" in capsys.readouterr().out
    res = json.loads(out.read_text())
    n_truth = len(json.loads((small_set / "annotations.json").read_text())["annotations"])
    assert res["n_images"] == 8
    pts = res["operating_points"]
    assert [p["min_snr"] for p in pts] == [0.0, 5.0, 10.0]
    for p in pts:
        o = p["overall"]
        assert o["n_true"] == n_truth
        assert 0.0 <= o["completeness"] <= 1.0 and 0.0 <= o["purity"] <= 1.0
        # the nucleus rule drops at most one detection per image
        assert 0 <= p["overall_nucleus_kept"]["n_pred"] - o["n_pred"] <= 8
        assert sum(r["n_true"] for r in p["clump_completeness_by_flux_fraction"]) <= n_truth
    # raising the S/N cut never adds predictions or matches
    assert pts[0]["overall"]["n_pred"] >= pts[1]["overall"]["n_pred"] >= pts[2]["overall"]["n_pred"]
    assert pts[0]["overall"]["n_matched"] >= pts[2]["overall"]["n_matched"]
    # bright clumps (20-50% of the host flux) are found by a classical detector
    bright = pts[2]["clump_completeness_by_flux_fraction"][-1]
    assert bright["n_true"] > 0 and bright["completeness"] >= 0.5


def test_detect_boxes_in_central_region(small_set):
    images, truths = load_truth(small_set)
    assert len(images) == len(truths) == 8
    for im in images:
        dets, with_nucleus = detect(small_set / im["fits_file"])
        assert len(with_nucleus) - len(dets) in (0, 1)
        centres = 0.5 * (dets.boxes[:, :2] + dets.boxes[:, 2:])
        assert np.all((centres >= 100) & (centres < 300))
        assert np.all((dets.scores > 0) & (dets.scores < 1)) and np.all(dets.labels == 1)


def test_run_baseline_is_deterministic(small_set):
    a = run_baseline(small_set, n_boot=0)
    b = run_baseline(small_set, n_boot=0)
    assert json.dumps(a) == json.dumps(b)
