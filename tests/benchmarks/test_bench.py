"""The benchmark harness end to end: real backends on 4 simulated images at a reduced model size.

One run (module fixture) of :func:`benchmarks.bench.run_bench` with the PyTorch
reference, torchvision's legacy export (the naive peer), the engine's fp32 and
int8 ONNX, and a deliberately broken engine export (final score threshold raised
from the reference's 0.05 to the median reference score): it must be flagged FAIL
and still be timed.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.backends import BackendSpec, agnostic_chain, peak_rss_bytes
from benchmarks.bench import REFERENCE, run_bench
from benchmarks.bench_data import decode_all, load_image_set
from benchmarks.report import markdown, write_report
from clumpdet.engine.contracts import InputSpec, PostProcessConfig
from clumpdet.export.onnx_export import export_onnx
from clumpdet.train.checkpoints import save_checkpoint
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.predict import apply_agnostic_chain, predict
from clumpdet.train.presets import NATIVE
from clumpdet.train.simulate import generate

#: native's architecture on a 64x64 internal image with a small proposal budget; threshold
#: 0.05 so that random calibrated weights give detections to compare.
TINY = NATIVE.with_options(
    input=InputSpec(height=400, width=400, crop=(100, 100, 200, 200), internal_size=(64, 64)),
    rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, postprocess=PostProcessConfig(final_score_thresh=0.05),
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    generate(4, 5, root, workers=1)
    images = load_image_set(str(root))
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.from_numpy(decode_all(images.paths, TINY.input))
    calibrate_frozen_bn(model, x[:, :, 100:300, 100:300])
    model.eval()
    work = tmp_path_factory.mktemp("models")
    ckpt, _ = save_checkpoint(model, TINY, work / "tiny.safetensors")
    scores = np.concatenate([d.scores for d in predict(model, x, TINY)])
    assert len(scores) >= 4
    wrong = float(np.median(scores))  # drops about half of the reference's detections
    broken = export_onnx(model, TINY, work / "broken.onnx",
                         postprocess=dataclasses.replace(TINY.postprocess, final_score_thresh=wrong))
    result = run_bench(images, TINY, checkpoint=str(ckpt), batch_sizes=(1, 2), repeats=2, e2e_repeats=1,
                       threads=1, ceiling_n=256, n_boot=0, command="pytest",
                       extra_backends=(BackendSpec("broken-threshold", "engine", str(broken), threads=1),),
                       compare_preset="popp2024")
    result["name"] = "tiny"
    return result, images


def _by_name(result):
    return {b["name"]: b for b in result["backends"]}


@pytest.mark.slow
def test_json_structure(bench, tmp_path):
    result, images = bench
    files = write_report(result, tmp_path, "tiny")
    loaded = json.loads((tmp_path / "tiny.json").read_text())
    assert loaded["config"]["n_images"] == 4 and loaded["config"]["batch_sizes"] == [1, 2]
    assert loaded["config"]["random_weights"] is False and loaded["config"]["has_truth"] is True
    env = loaded["environment"]
    for key in ("cpu_model", "logical_cpus", "onnxruntime", "torch", "ort_providers", "gpu"):
        assert key in env
    assert set(loaded["flops"]) >= {"backbone_fpn", "rpn", "box_head", "total"}
    assert loaded["flops"]["total"] == sum(loaded["flops"][k] for k in ("backbone_fpn", "rpn", "box_head", "postprocess"))
    assert loaded["flops"]["backbone_fpn"] > 0 and loaded["flops"]["box_head"] > 0
    assert loaded["ceiling"]["ceiling_gflops"] > 0
    ce = loaded["ceiling"]
    assert ce["int8_gops"] > 0 and len(ce["int8_gops_samples"]) == 1 + 2 + 1
    assert ce["int8_ceiling_gops"] == max(ce["int8_gops_samples"])  # the best sample: interference only slows
    assert ce["ceiling_gflops"] == max(max(ce[f"{lib}_gflops_samples"]) for lib in ("numpy", "torch", "ort"))
    md = (tmp_path / "tiny.md").read_text()
    assert "-> int8 ceiling" in md
    assert "| backend | parity |" in md and "naive" in md
    assert len(files["plots"]) == 2 and all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in files["plots"])
    rows = _by_name(loaded)
    for name in (REFERENCE, "naive-torchvision-onnx", "engine-ort-fp32", "engine-ort-int8", "broken-threshold"):
        be = rows[name]
        assert be["status"] == "ok", be["status"]
        assert [t["batch"] for t in be["timings"]] == [1, 2]
        for t in be["timings"]:
            assert t["repeats"] == 2 and t["model_ms_p95"] >= t["model_ms_median"] > 0
            assert t["model_images_per_s"] > 0 and t["e2e_images_per_s"] > 0
            assert 0 < t["fraction_of_ceiling"] and t["achieved_gflops"] > 0
        assert be["peak_rss_bytes"] > 50e6
        assert be["quality"]["class_agnostic"]["n_true"] == sum(map(len, images.truths))
    assert all(0 < t["fraction_of_int8_floor"] for t in rows["engine-ort-int8"]["timings"])
    # the other preset's reference: timed at batch 1 in the same rounds, never validated against this one
    slow = rows["popp2024-torch-eager"]
    assert slow["speed_only"] and slow["preset"] == "popp2024" and "parity" not in slow
    assert [t["batch"] for t in slow["timings"]] == [1] and slow["timings"][0]["repeats"] == 2
    fast = rows["engine-ort-fp32"]["timings"][0]
    assert fast["speedup_vs_compare"] == pytest.approx(fast["model_images_per_s"] / slow["timings"][0]["model_images_per_s"])
    assert fast["speedup_vs_compare"] > 1  # a 64 px native model beats an 800 px ResNet-50
    assert "speed only (popp2024" in md
    # optional backends that this machine lacks are rows with a reason, not crashes
    for name in ("engine-ort-cuda", "engine-tensorrt-plan"):
        if rows[name]["status"] != "ok":
            assert rows[name]["status"].startswith("unavailable: ")


@pytest.mark.slow
def test_parity_column(bench):
    result, _ = bench
    rows = _by_name(result)
    assert rows[REFERENCE]["parity"]["verdict"] == "reference"
    for name in ("naive-torchvision-onnx", "engine-ort-fp32"):
        par = rows[name]["parity"]
        assert par["verdict"] == "PASS", par
        assert par["detection"]["matched_fraction"] >= 0.99 and par["abs_delta_completeness"] <= 0.005
        assert rows[name]["batch_consistency_min_match"] == 1.0
    assert rows["engine-ort-int8"]["parity"]["tolerance"] == 0.01
    assert rows[REFERENCE]["n_detections"] > 0


@pytest.mark.slow
def test_broken_backend_flagged_but_timed(bench):
    result, _ = bench
    rows = _by_name(result)
    broken, ref = rows["broken-threshold"], rows[REFERENCE]
    assert ref["n_detections"] > broken["n_detections"]  # the lower-scored ones are gone
    assert broken["parity"]["verdict"] == "FAIL" and broken["parity"]["reasons"]
    assert all(t["model_images_per_s"] > 0 for t in broken["timings"])
    assert any("broken-threshold" in n for n in result["notes"])
    assert "FAIL" in markdown(result)


def test_agnostic_chain_matches_torch():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 12, (60, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 60).astype(np.float32)
    labels = rng.integers(1, 3, 60)
    ours = agnostic_chain(boxes, scores, labels, 0.2, 0.3)
    tb, ts, tl = apply_agnostic_chain(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                      PostProcessConfig(agnostic_nms_iou=0.2, final_score_thresh=0.3))
    np.testing.assert_allclose(ours.boxes, tb.numpy())
    np.testing.assert_allclose(ours.scores, ts.numpy())
    np.testing.assert_array_equal(ours.labels, tl.numpy())
    assert 0 < len(ours) < 60
    assert len(agnostic_chain(boxes, scores, labels, None, 0.0)) == 60


def test_peak_rss_positive():
    assert peak_rss_bytes() > 10e6


def test_cli_outside_checkout_points_to_script(tmp_path):
    code = "import sys; from clumpdet.engine.cli import main; sys.exit(main(['bench']))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2
    assert "python -m benchmarks.bench" in out.stderr
