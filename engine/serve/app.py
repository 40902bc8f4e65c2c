"""The ASGI app of ``clumpdet serve`` (Starlette): Open Inference Protocol v2 over HTTP/REST.

Endpoints (``{name}`` is the served model's name, version ``1``):

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``
    Server metadata (extensions ``binary_tensor_data``), liveness, readiness.
``GET /v2/models/{name}[/versions/1]``, ``.../ready``, ``.../config``
    Model metadata read from the ONNX (inputs ``images`` FP32 ``[-1, 3, H, W]``;
    outputs ``num_dets`` INT64 ``[-1]``, ``boxes`` FP32 ``[-1, K, 4]``,
    ``scores`` FP32 ``[-1, K]``, ``labels`` INT64 ``[-1, K]``, DESIGN §3, plus the
    clumpdet metadata under ``parameters``), readiness, and a Triton-style config.
``POST /v2/models/{name}[/versions/1]/infer``
    v2 inference with JSON or binary tensors (:mod:`~clumpdet.engine.serve.protocol`).
    ``images`` float32 ``(n, 3, H, W)`` RGB in [0, 1], ``1 <= n <= max_batch``.
    Boxes are ``(x1, y1, x2, y2)`` model-input pixels, pixel ``i`` spanning ``[i, i+1)``.
``POST /v2/models/{name}/detect``
    Convenience: a FITS/PNG/JPEG file (raw body, or multipart field ``file``) ->
    catalogue rows in original-image pixels with RA/Dec (:mod:`~clumpdet.engine.serve.upload`).
``GET /metrics``
    Prometheus text (:mod:`~clumpdet.engine.serve.metrics`).

Errors are ``{"error": "<one line>"}`` (what ``tritonclient`` reads): 400 malformed
request / wrong shape or dtype / corrupt file, 404 unknown model or version,
413 body too large, 415 unknown file type or encoding, 500 the model failed on
this request, 503 queue full or not ready.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from clumpdet.engine import __version__
from clumpdet.engine.contracts import INPUT_NAME, OUTPUT_NAMES
from clumpdet.engine.readers import InputError
from clumpdet.engine.serve.batcher import DynamicBatcher, Overloaded
from clumpdet.engine.serve.metrics import ServeMetrics
from clumpdet.engine.serve.protocol import (
    HEADER_LENGTH, ProtocolError, decompress, encode_infer_response, parse_infer_request,
)
from clumpdet.engine.serve.upload import catalogue_json, decode_upload, safe_name, sniff_suffix

VERSION = "1"
_ORT_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(int32)": "INT32"}


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of one server.

    Parameters
    ----------
    model_name : str
        Name under ``/v2/models/``.
    max_batch : int
        Most images per model call, and per request.
    max_queue_delay_ms : float
        Longest wait for a batch to fill.
    max_queue_images : int
        Most images waiting; beyond, requests get 503.
    max_body_bytes : int
        Largest request body (after decompression); beyond, 413.
    """

    model_name: str
    max_batch: int = 8
    max_queue_delay_ms: float = 5.0
    max_queue_images: int = 64
    max_body_bytes: int = 64 << 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        msg = f"request body of {declared} bytes exceeds the server's limit of {limit} bytes"
        raise ProtocolError(msg, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            msg = f"request body exceeds the server's limit of {limit} bytes"
            raise ProtocolError(msg, 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _io_metadata(detector) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs as v2 tensor metadata, from the ONNX session (contract for TensorRT plans)."""
    session = getattr(detector._backend, "session", None)
    if session is not None:
        def spec(t):
            return {"name": t.name, "datatype": _ORT_TYPES.get(t.type, t.type),
                    "shape": [d if isinstance(d, int) else -1 for d in t.shape]}
        outs = {o.name: o for o in session.get_outputs()}
        return [spec(i) for i in session.get_inputs()], [spec(outs[n]) for n in OUTPUT_NAMES]
    (h, w), k = detector.input_size, detector.metadata.postprocess.max_detections
    return ([{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, h, w]}],
            [{"name": "num_dets", "datatype": "INT64", "shape": [-1]},
             {"name": "boxes", "datatype": "FP32", "shape": [-1, k, 4]},
             {"name": "scores", "datatype": "FP32", "shape": [-1, k]},
             {"name": "labels", "datatype": "INT64", "shape": [-1, k]}])


def detections_to_tensors(dets, k: int) -> dict[str, np.ndarray]:
    """Per-image :class:`Detections` -> the contract's zero-padded output tensors (DESIGN §3)."""
    n = len(dets)
    out = {"num_dets": np.zeros(n, np.int64), "boxes": np.zeros((n, k, 4), np.float32),
           "scores": np.zeros((n, k), np.float32), "labels": np.zeros((n, k), np.int64)}
    for i, d in enumerate(dets):
        m = len(d)
        out["num_dets"][i] = m
        out["boxes"][i, :m], out["scores"][i, :m], out["labels"][i, :m] = d.boxes, d.scores, d.labels
    return out


def create_app(detector, config: ServeConfig) -> Starlette:
    """Build the app serving ``detector`` (a :class:`clumpdet.engine.detector.Detector`).

    The batcher starts and stops with the app's lifespan (uvicorn runs it).
    """
    metrics = ServeMetrics()
    batcher = DynamicBatcher(detector.detect, config.max_batch, config.max_queue_delay_ms / 1000.0,
                             config.max_queue_images, metrics)
    metrics.queue_images = lambda: batcher.queued_images
    (height, width), k = detector.input_size, detector.metadata.postprocess.max_detections
    inputs_meta, outputs_meta = _io_metadata(detector)
    model_params = {"clumpdet": dataclasses.asdict(detector.metadata), "model_sha256": detector.model_sha256}

    def counted(endpoint: str, fn: Callable) -> Callable:
        async def handler(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                resp = await fn(request)
            except ProtocolError as err:
                if err.status == 413:
                    metrics.reject("body_too_large")
                resp = _error(err.status, str(err))
            except Exception as err:  # noqa: BLE001 - a bug must cost one request, not the server
                resp = _error(500, f"internal error: {type(err).__name__}: {' '.join(str(err).split())}")
            metrics.request(endpoint, resp.status_code, time.perf_counter() - t0)
            return resp
        return handler

    def check_model(request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version", VERSION)
        if name != config.model_name:
            msg = f"unknown model {name!r}; this server serves {config.model_name!r}"
            raise ProtocolError(msg, 404)
        if version != VERSION:
            msg = f"model {name!r} has no version {version!r} (only {VERSION!r})"
            raise ProtocolError(msg, 404)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "clumpdet", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if batcher.running else 503)

    async def model_metadata(request: Request) -> Response:
        check_model(request)
        return JSONResponse({"name": config.model_name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                             "inputs": inputs_meta, "outputs": outputs_meta, "parameters": model_params})

    async def model_ready(request: Request) -> Response:
        check_model(request)
        return Response(status_code=200 if batcher.running else 503)

    async def model_config(request: Request) -> Response:
        check_model(request)
        def dims(t):
            scalar = {"reshape": {"shape": []}} if len(t["shape"]) == 1 else {}
            return {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"][1:] or [1], **scalar}
        return JSONResponse({
            "name": config.model_name, "platform": "onnxruntime_onnx", "max_batch_size": config.max_batch,
            "input": [dims(t) for t in inputs_meta], "output": [dims(t) for t in outputs_meta],
            "dynamic_batching": {"max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000)},
        })

    async def run_images(images: np.ndarray):
        try:
            return await batcher.submit(images)
        except Overloaded as err:
            raise ProtocolError(str(err), 503) from err
        except ValueError as err:
            raise ProtocolError(str(err)) from err
        except Exception as err:  # noqa: BLE001 - the model failed on this request alone
            text = " ".join(str(err).split()) or type(err).__name__
            raise ProtocolError(f"the model failed on this request: {type(err).__name__}: {text}", 500) from err

    async def infer(request: Request) -> Response:
        check_model(request)
        body = decompress(await read_body(request, config.max_body_bytes),
                          request.headers.get("content-encoding"), config.max_body_bytes)
        req = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        if set(req.inputs) != {INPUT_NAME}:
            msg = f"model {config.model_name!r} takes exactly one input {INPUT_NAME!r}, got {sorted(req.inputs)}"
            raise ProtocolError(msg)
        images = req.inputs[INPUT_NAME]
        if images.dtype != np.float32:
            msg = f"input {INPUT_NAME!r} must be FP32 (RGB scaled to [0, 1]), got {images.dtype}"
            raise ProtocolError(msg)
        if images.ndim != 4 or images.shape[1:] != (3, height, width) or len(images) == 0:
            msg = f"input {INPUT_NAME!r} must have shape [n, 3, {height}, {width}] with n >= 1, got {list(images.shape)}"
            raise ProtocolError(msg)
        if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
            msg = f"input {INPUT_NAME!r} must be finite RGB scaled to [0, 1] (DESIGN §3); scale 8-bit data by 1/255"
            raise ProtocolError(msg)
        dets = await run_images(images)
        body, headers = encode_infer_response(config.model_name, VERSION, req, detections_to_tensors(dets, k))
        return Response(body, headers=headers)

    async def detect_upload(request: Request) -> Response:
        check_model(request)
        body = await read_body(request, config.max_body_bytes)
        name = request.query_params.get("name")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}
            try:
                async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
                    upload = form.get("file")
                    if upload is None or isinstance(upload, str):
                        msg = "multipart upload needs a file field named 'file'"
                        raise ProtocolError(msg)
                    name, body = name or upload.filename, await upload.read()
            except HTTPException as err:
                raise ProtocolError(f"malformed multipart body: {err.detail}") from err
        suffix = sniff_suffix(body[:16])
        if suffix is None:
            msg = "upload is not a FITS, gzipped FITS, PNG or JPEG file (checked by its first bytes)"
            raise ProtocolError(msg, 415)
        name = safe_name(name, suffix)
        try:
            cutout = await run_in_threadpool(decode_upload, body, name, suffix, detector.metadata.input)
        except InputError as err:
            raise ProtocolError(str(err)) from err
        dets = await run_images(cutout.image[None])
        result = await run_in_threadpool(catalogue_json, detector, cutout, dets[0])
        return JSONResponse({"model_name": config.model_name, "model_version": VERSION, **result})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", counted("server_metadata", server_metadata)),
        Route("/v2/health/live", counted("live", live)),
        Route("/v2/health/ready", counted("ready", ready)),
        Route("/metrics", prometheus),
    ]
    for base in (model, versioned):
        routes += [
            Route(base, counted("model_metadata", model_metadata)),
            Route(base + "/ready", counted("model_ready", model_ready)),
            Route(base + "/config", counted("model_config", model_config)),
            Route(base + "/infer", counted("infer", infer), methods=["POST"]),
        ]
    routes.append(Route(model + "/detect", counted("detect", detect_upload), methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, config
    return app
