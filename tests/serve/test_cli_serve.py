"""``clumpdet serve`` as a process, the metrics endpoint, and the serve package staying torch-free."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from clumpdet.engine.cli import SUBCOMMANDS

from .conftest import MODEL_NAME, images


def test_cli_serves_on_loopback_and_stops(model_path):
    assert SUBCOMMANDS["serve"][0] == "clumpdet.engine.cli_serve"
    cmd = [sys.executable, "-m", "clumpdet.engine.cli", "serve", "--model", model_path, "--port", "0",
           "--name", "cli_model", "--max-batch", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("clumpdet serve: listening on http://127.0.0.1:"), (line, proc.poll())
        url = line.split()[-1]
        assert httpx.get(url + "/v2/health/ready", timeout=30).status_code == 200
        meta = httpx.get(url + "/v2/models/cli_model", timeout=30).json()
        assert meta["name"] == "cli_model" and meta["inputs"][0]["shape"] == [-1, 3, 128, 128]
        assert httpx.get(url + "/v2/models/cli_model/config", timeout=30).json()["max_batch_size"] == 2
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (its documented behaviour).
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--max-batch", "0"], "--max-batch"),
    (["--max-batch", "4", "--max-queue", "2"], "--max-queue (2) must be >= --max-batch (4)"),
])
def test_cli_usage_errors(model_path, args, message):
    cmd = [sys.executable, "-m", "clumpdet.engine.cli", "serve", "--model", model_path, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and message in result.stderr


def test_cli_refuses_a_missing_model(tmp_path):
    cmd = [sys.executable, "-m", "clumpdet.engine.cli", "serve", "--model", str(tmp_path / "none.onnx")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "no such model file" in result.stderr


def test_metrics_count_requests_batches_and_latency(server):
    x = images(2, seed=20)
    request = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 3, 128, 128],
                           "data": x.reshape(-1).tolist()}]}
    assert httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=request, timeout=30).status_code == 200
    text = httpx.get(server.url + "/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    assert samples['clumpdet_requests_total{endpoint="infer",code="200"}'] >= 1
    assert samples["clumpdet_batch_size_count"] >= 1 and samples["clumpdet_inference_images_total"] >= 2
    assert samples['clumpdet_batch_size_bucket{le="+Inf"}'] == samples["clumpdet_batch_size_count"]
    assert samples['clumpdet_request_duration_seconds_count{endpoint="infer"}'] >= 1
    assert "clumpdet_queue_images 0" in text and "# TYPE clumpdet_batch_size histogram" in text


def test_serve_modules_import_without_torch():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision", "timm", "onnxscript"}:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import importlib, pkgutil
        import clumpdet.engine.serve as serve
        for m in pkgutil.iter_modules(serve.__path__, "clumpdet.engine.serve."):
            importlib.import_module(m.name)
        importlib.import_module("clumpdet.engine.cli_serve")
        bad = [m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision", "timm"}
               or m.startswith(("clumpdet.train", "clumpdet.export"))]
        assert not bad, bad
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
