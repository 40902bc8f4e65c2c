"""Malformed requests get a clear 4xx, overload gets 503, a failing request never sinks its batch."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import numpy as np
import pytest

from clumpdet.engine.serve.batcher import DynamicBatcher, Overloaded

from .conftest import MODEL_NAME, assert_same_detections, images

INFER = f"/v2/models/{MODEL_NAME}/infer"


def _json_request(x: np.ndarray, datatype: str = "FP32", shape=None) -> dict:
    return {"inputs": [{"name": "images", "datatype": datatype, "shape": list(shape or x.shape),
                        "data": x.reshape(-1).tolist()}]}


def _binary_request(x: np.ndarray, declared: int | None = None) -> tuple[bytes, dict]:
    raw = x.tobytes()
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": declared if declared is not None else len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def _decode_binary(resp: httpx.Response) -> dict[str, np.ndarray]:
    """Outputs of a binary-tensor response, decoded by hand (independent of tritonclient)."""
    n = int(resp.headers["Inference-Header-Content-Length"])
    head = json.loads(resp.content[:n])
    raw, arrays = resp.content[n:], {}
    for out in head["outputs"]:
        size = out["parameters"]["binary_data_size"]
        dtype = {"INT64": np.int64, "FP32": np.float32}[out["datatype"]]
        arrays[out["name"]] = np.frombuffer(raw[:size], dtype=dtype).reshape(out["shape"])
        raw = raw[size:]
    assert not raw
    return arrays


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    (b"{not json", {}, 400, "malformed JSON"),
    (b"[1, 2]", {}, 400, "must be a JSON object"),
    (b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}]}', {}, 400,
     "exactly one input 'images'"),
    (b'{"inputs": [{"name": "images", "datatype": "FP99", "shape": [1], "data": [0]}]}', {}, 400,
     "unsupported datatype 'FP99'"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0, 1]}]}', {}, 400,
     "needs 48"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3], "data": []}]}', {}, 400,
     "non-negative integers"),
    (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1]}]}', {}, 400, "neither 'data'"),
    (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "not a length within"),
    (b"{}", {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding"),
    (b"\x1f\x8bnot-gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
])
def test_malformed_requests_get_a_clear_4xx(server, body, headers, status, message):
    resp = httpx.post(server.url + INFER, content=body, headers=headers, timeout=30)
    assert resp.status_code == status
    assert message in resp.json()["error"]


def test_wrong_shapes_dtypes_and_values(server):
    x = images(1, seed=1)
    cases = [
        (_json_request(x.astype(np.float64), datatype="FP64"), "must be FP32"),
        (_json_request(x[:, :, :64]), "must have shape [n, 3, 128, 128]"),
        (_json_request(x * 255), "scaled to [0, 1]"),
    ]
    for request, message in cases:
        resp = httpx.post(server.url + INFER, json=request, timeout=30)
        assert resp.status_code == 400, resp.text
        assert message in resp.json()["error"]
    body, headers = _binary_request(np.concatenate([x] * 5))  # more images than --max-batch
    resp = httpx.post(server.url + INFER, content=body, headers=headers, timeout=30)
    assert resp.status_code == 400 and "1 to 4 images" in resp.json()["error"]
    body, headers = _binary_request(x, declared=100)
    resp = httpx.post(server.url + INFER, content=body, headers=headers, timeout=30)
    assert resp.status_code == 400 and "binary_data_size 100 does not match" in resp.json()["error"]
    body, headers = _binary_request(x)
    resp = httpx.post(server.url + INFER, content=body[:-10], headers=headers, timeout=30)
    assert resp.status_code == 400 and "body ends after" in resp.json()["error"]


def test_oversize_bodies_are_refused(server):
    big = b"{" + b" " * (5 << 20) + b"}"  # 5 MiB > the 4 MiB limit
    resp = httpx.post(server.url + INFER, content=big, timeout=30)
    assert resp.status_code == 413 and "exceeds the server's limit" in resp.json()["error"]
    bomb = gzip.compress(b" " * (6 << 20))  # small on the wire, too large once decompressed
    resp = httpx.post(server.url + INFER, content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert resp.status_code == 413
    assert 'clumpdet_rejected_total{reason="body_too_large"}' in httpx.get(server.url + "/metrics").text


def test_server_keeps_serving_after_errors(server, detector):
    x = images(2, seed=2)
    for _ in range(3):
        httpx.post(server.url + INFER, content=b"{oops", timeout=30)
    body, headers = _binary_request(x)
    resp = httpx.post(server.url + INFER, content=body, headers=headers, timeout=30)
    assert resp.status_code == 200
    arrays = _decode_binary(resp)
    assert_same_detections(arrays["num_dets"], arrays["boxes"], arrays["scores"], arrays["labels"], detector.detect(x))


def test_overload_answers_503_and_recovers(make_server_for, detector):
    live = make_server_for(max_batch=1, max_queue_delay_ms=0, max_queue_images=1)
    x = images(1, seed=3)
    body, headers = _binary_request(x)  # binary: parsing is far quicker than the model, so requests pile up

    async def flood():
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            return await asyncio.gather(*(client.post(INFER, content=body, headers=headers) for _ in range(16)))

    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1
    assert all("overloaded" in r.json()["error"] for r in responses if r.status_code == 503)
    expected = detector.detect(x)
    for r in responses:
        if r.status_code == 200:
            outs = _decode_binary(r)
            assert_same_detections(outs["num_dets"], outs["boxes"], outs["scores"], outs["labels"], expected)
    assert httpx.post(live.url + INFER, content=body, headers=headers, timeout=30).status_code == 200
    assert 'clumpdet_rejected_total{reason="queue_full"}' in httpx.get(live.url + "/metrics").text


def test_a_failing_request_fails_alone(detector):
    """A model call that raises is retried request by request; only the culprit gets the error."""
    calls = []

    def fn(batch: np.ndarray):
        calls.append(len(batch))
        if np.any(np.isnan(batch)):  # the culprit: the real model returns garbage, this refuses
            msg = "NaN in model input"
            raise FloatingPointError(msg)
        return detector.detect(batch)

    x = images(3, seed=4)
    bad = x[1:2].copy()
    bad[0, 0, 0, 0] = np.nan

    async def main():
        batcher = DynamicBatcher(fn, max_batch=4, max_delay_s=0.2, max_queue_images=8)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit(x[:1]), batcher.submit(bad), batcher.submit(x[2:3]),
                                        return_exceptions=True), batcher.metrics.failures
        finally:
            await batcher.stop()

    (first, second, third), failures = asyncio.run(main())
    assert calls == [3, 1, 1, 1]  # one batch of three, then each request alone
    assert isinstance(second, FloatingPointError)
    expected = detector.detect(x[[0, 2]])
    np.testing.assert_allclose(first[0].scores, expected[0].scores, atol=1e-5)
    np.testing.assert_allclose(third[0].scores, expected[1].scores, atol=1e-5)
    assert failures == {"batch": 1, "request": 1}


def test_batcher_queue_is_bounded(detector):
    async def main():
        batcher = DynamicBatcher(detector.detect, max_batch=2, max_delay_s=0.05, max_queue_images=2)
        await batcher.start()
        try:
            x = images(1, seed=5)
            # All five are queued before the worker runs: two fit, three are refused.
            return await asyncio.gather(*(batcher.submit(x) for _ in range(5)), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert [isinstance(r, Overloaded) for r in results] == [False, False, True, True, True]
    with pytest.raises(ValueError, match="max_queue_images >= max_batch"):
        DynamicBatcher(detector.detect, max_batch=4, max_delay_s=0, max_queue_images=2)
