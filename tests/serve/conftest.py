"""Fixtures: a small real detector (exported once with the real exporter) and a real server on loopback.

The server is ``uvicorn`` running :func:`clumpdet.engine.serve.app.create_app` in a
background thread, on a free port of 127.0.0.1; clients are the real
``tritonclient.http`` and ``httpx``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clumpdet.engine.cli_serve import bind, make_server
from clumpdet.engine.detector import Detector
from clumpdet.engine.serve.app import ServeConfig, create_app

MODEL_NAME = "clumpdet_small"


class LiveServer:
    """``create_app(detector, config)`` served by uvicorn in a daemon thread on 127.0.0.1:<free port>."""

    def __init__(self, detector: Detector, config: ServeConfig) -> None:
        self.app = create_app(detector, config)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.host_port = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host_port}"
        self.config = config
        self.server = make_server(self.app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                msg = "test server did not start"
                raise RuntimeError(msg)
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """A small native-architecture detector (128x128 input, K=10), exported by the real exporter."""
    torch = pytest.importorskip("torch", reason="exporting the test model needs the [export] extra")
    from clumpdet.export.onnx_export import export_onnx
    from tests.export.helpers import SMALL_NATIVE, calibrated

    torch.set_num_threads(1)
    model = calibrated(SMALL_NATIVE, 1)
    return str(export_onnx(model, SMALL_NATIVE, tmp_path_factory.mktemp("serve_model") / "native_small.onnx"))


@pytest.fixture(scope="session")
def detector(model_path) -> Detector:
    """The engine's Python API on the test model (the reference the server must agree with)."""
    return Detector(model_path, intra_op_threads=1)


@pytest.fixture(scope="session")
def server(detector):
    """A server with dynamic batching: up to 4 images per call, 30 ms delay, 4 MiB bodies."""
    live = LiveServer(detector, ServeConfig(model_name=MODEL_NAME, max_batch=4, max_queue_delay_ms=30,
                                            max_queue_images=32, max_body_bytes=4 << 20))
    yield live
    live.close()


def images(n: int, seed: int, size: int = 128) -> np.ndarray:
    """float32 ``(n, 3, size, size)`` in [0, 1]: noise plus Gaussian blobs (varied detections)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = rng.uniform(0.0, 0.3, size=(n, 3, size, size))
    for img in out:
        for _ in range(6):
            cx, cy, s = rng.uniform(20, size - 20, size=2).tolist() + [rng.uniform(1.5, 6)]
            img += rng.uniform(0.2, 0.7, size=(3, 1, 1)) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return np.clip(out, 0, 1).astype(np.float32)


def assert_same_detections(num, boxes, scores, labels, expected) -> None:
    """Server outputs (padded, DESIGN §3) equal the engine's ``Detections`` image by image."""
    assert len(num) == len(expected)
    for i, det in enumerate(expected):
        n = len(det)
        assert int(num[i]) == n
        np.testing.assert_allclose(boxes[i, :n], det.boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scores[i, :n], det.scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(labels[i, :n], det.labels)
        assert not np.any(boxes[i, n:]) and not np.any(scores[i, n:]) and not np.any(labels[i, n:])


@pytest.fixture
def make_server_for(detector):
    """Start extra servers with other settings; closed after the test."""
    started = []

    def start(**kw) -> LiveServer:
        live = LiveServer(detector, ServeConfig(model_name=MODEL_NAME, **kw))
        started.append(live)
        return live

    yield start
    for live in started:
        live.close()
