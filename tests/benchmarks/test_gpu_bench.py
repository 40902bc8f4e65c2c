"""benchmarks/gpu_bench.py's logic on the CPU: validation against the reference, timing rows, refusals.

The CUDA-only variants cannot run here; they must come back as rows saying why,
and the variants that can run must match the CPU reference exactly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.gpu_bench import bench_model, markdown

from tests.export.helpers import SMALL_NATIVE, calibrated, make_images

REPO = Path(__file__).resolve().parents[2]


def test_cpu_variants_validate_and_time_and_cuda_ones_say_why():
    model = calibrated(SMALL_NATIVE, 2)
    images = make_images(4, seed=8).numpy()
    args = SimpleNamespace(validate=4, batches=[1, 2], repeats=2, warmup=1)
    rows = bench_model("small", model, SMALL_NATIVE, images, args, time.perf_counter() + 600, device="cpu",
                       variants=("torch-eager-fp32", "wrapper-eager-fp32", "wrapper-cuda-graph"))
    by = {r["variant"]: r for r in rows}
    for name in ("torch-eager-fp32", "wrapper-eager-fp32"):
        assert by[name]["status"] == "ok"
        assert by[name]["n_ref"] > 0 and by[name]["matched_fraction"] == 1.0
        assert [t["batch"] for t in by[name]["timings"]] == [1, 2]
        assert all(t["images_per_s"] > 0 for t in by[name]["timings"])
    assert by["wrapper-cuda-graph"]["status"] == "unavailable: RuntimeError: wrapper-cuda-graph needs a CUDA device"
    late = bench_model("small", model, SMALL_NATIVE, images, args, time.perf_counter() - 1, device="cpu",
                       variants=("torch-eager-fp32",))
    assert late[0]["status"].startswith("skipped")
    text = markdown({"environment": {"gpu": "none", "torch": "", "cuda": "", "cudnn": "", "command": "test"},
                     "models": {"small": "random"}, "rows": rows, "wall_s": 1.0})
    assert text.count("| small | wrapper-eager-fp32 | ok |") == 2


def test_gpu_sh_without_cuda_exits_2_and_writes_nothing(tmp_path):
    if not Path("/bin/bash").exists():
        pytest.skip("needs bash")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA device" in proc.stderr
    assert not any((tmp_path / "out").glob("*.json"))
