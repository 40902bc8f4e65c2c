"""Done-when: ``tritonclient.http`` against the server gets the engine's detections (DESIGN §3 outputs)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import MODEL_NAME, assert_same_detections, images

th = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = ("num_dets", "boxes", "scores", "labels")


def _infer(client, x, binary=True, compression=None, outputs=None):
    inp = th.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    req_out = [th.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    return client.infer(MODEL_NAME, [inp], outputs=req_out, request_compression_algorithm=compression)


def _arrays(result):
    return [result.as_numpy(n) for n in OUTPUTS]


def test_tritonclient_gets_the_engines_detections(server, detector):
    client = th.InferenceServerClient(server.host_port)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    x = images(3, seed=10)
    expected = detector.detect(x)
    assert sum(len(d) for d in expected) > 0  # a meaningful comparison
    binary = _arrays(_infer(client, x))
    assert binary[0].dtype == np.int64 and binary[1].dtype == np.float32 and binary[1].shape == (3, 10, 4)
    assert_same_detections(*binary, expected)
    as_json = _arrays(_infer(client, x, binary=False, outputs=OUTPUTS))
    assert_same_detections(*as_json, expected)
    gz = _arrays(_infer(client, x[:1], compression="gzip"))
    assert_same_detections(*gz, expected[:1])
    # Only the outputs asked for come back.
    only = _infer(client, x[:1], outputs=("scores",))
    assert only.as_numpy("boxes") is None and only.as_numpy("scores").shape == (1, 10)


def test_concurrent_requests_are_batched_and_answered_individually(server, detector):
    x = images(8, seed=11)
    expected = detector.detect(x)
    before = server.app.state.metrics.batch_size.count
    client = th.InferenceServerClient(server.host_port, concurrency=8)
    pending = []
    for i in range(8):
        inp = th.InferInput("images", [1, 3, 128, 128], "FP32")
        inp.set_data_from_numpy(x[i : i + 1])
        pending.append(client.async_infer(MODEL_NAME, [inp], request_id=f"req-{i}"))
    for i, p in enumerate(pending):
        result = p.get_result()
        assert result.get_response()["id"] == f"req-{i}"
        assert_same_detections(*_arrays(result), expected[i : i + 1])
    client.close()
    calls = server.app.state.metrics.batch_size.count - before
    assert calls < 8  # at least two requests shared a model call (max batch 4, 30 ms delay)


def test_model_metadata_comes_from_the_onnx(server, detector):
    client = th.InferenceServerClient(server.host_port)
    meta = client.get_model_metadata(MODEL_NAME)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 128, 128]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("num_dets", "INT64", [-1]), ("boxes", "FP32", [-1, 10, 4]), ("scores", "FP32", [-1, 10]),
        ("labels", "INT64", [-1, 10])]
    assert meta["parameters"]["clumpdet"]["class_names"] == list(detector.class_names)
    assert meta["parameters"]["model_sha256"] == detector.model_sha256
    config = client.get_model_config(MODEL_NAME)
    assert config["max_batch_size"] == 4 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 30000
    server_meta = client.get_server_metadata()
    assert "binary_tensor_data" in server_meta["extensions"]


def test_unknown_model_and_version_are_404(server):
    client = th.InferenceServerClient(server.host_port)
    x = images(1, seed=0)
    inp = th.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
        client.infer("nope", [inp])
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.infer(MODEL_NAME, [inp], model_version="7")
    assert not client.is_model_ready("nope")
    result = client.infer(MODEL_NAME, [inp], model_version="1")  # the versioned path works
    assert result.as_numpy("num_dets").shape == (1,)
