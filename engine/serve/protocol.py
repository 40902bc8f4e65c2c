"""Open Inference Protocol v2 (KServe v2 / Triton) inference requests and responses over HTTP.

Request body: a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``;
with the *binary tensor data* extension (what ``tritonclient.http`` sends) the
JSON header is followed by the raw tensors, the header's length in the HTTP
header ``Inference-Header-Content-Length`` and each binary input marked
``"parameters": {"binary_data_size": nbytes}``. Binary data is little-endian,
C (row-major) order, as numpy writes it. ``Content-Encoding: gzip`` or
``deflate`` bodies are decompressed (bounded).

Response: JSON ``{"model_name", "model_version", "id"?, "outputs": [...]}``;
outputs asked for with ``"binary_data": true`` (or all outputs when the request
has ``"parameters": {"binary_data_output": true}``) are sent as raw bytes after
the JSON, whose length goes into ``Inference-Header-Content-Length``.

Every problem with a request raises :class:`ProtocolError`, carrying the HTTP
status (400 unless stated) and a one-line message for the ``{"error": ...}`` body.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: v2 datatype name -> numpy dtype (little-endian). BYTES is not used by detectors.
V2_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
NUMPY_TO_V2 = {dt.str if dt.itemsize > 1 else dt.name: name for name, dt in V2_TO_NUMPY.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(ValueError):
    """A malformed or unsuitable request; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def v2_datatype(dtype: np.dtype) -> str:
    """v2 datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    key = dt.str if dt.itemsize > 1 else dt.name
    if key not in NUMPY_TO_V2:
        msg = f"protocol.py: no v2 datatype for numpy dtype {dtype}"
        raise ValueError(msg)
    return NUMPY_TO_V2[key]


@dataclass
class InferRequest:
    """A decoded inference request.

    Parameters
    ----------
    id : str or None
        The client's request id, echoed in the response.
    inputs : dict of str to numpy.ndarray
        Tensors by name, with the declared shape and dtype.
    outputs : dict of str to bool or None
        Requested outputs by name -> send as binary; ``None``: all outputs.
    binary_default : bool
        Binary encoding for outputs not listed (``binary_data_output``).
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] | None = None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (``gzip``, ``deflate``, ``identity``), refusing output over ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        msg = f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)"
        raise ProtocolError(msg, 415)
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        msg = f"body is not valid {enc} data ({err})"
        raise ProtocolError(msg) from err
    if len(out) > limit:
        msg = f"decompressed body exceeds the server's limit of {limit} bytes"
        raise ProtocolError(msg, 413)
    if not d.eof:
        msg = f"{enc} body is truncated"
        raise ProtocolError(msg)
    return out


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"malformed JSON in the {what}: {err}"
        raise ProtocolError(msg) from err
    if not isinstance(obj, dict):
        msg = f"the {what} must be a JSON object, got {type(obj).__name__}"
        raise ProtocolError(msg)
    return obj


def _shape(spec: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        msg = f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}"
        raise ProtocolError(msg)
    return tuple(shape)


def _tensor(spec: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        msg = f"each input must be an object with a string 'name', got {str(spec)[:80]!r}"
        raise ProtocolError(msg)
    name = spec["name"]
    datatype = spec.get("datatype")
    if datatype not in V2_TO_NUMPY:
        msg = f"input {name!r}: unsupported datatype {datatype!r} (one of {', '.join(V2_TO_NUMPY)})"
        raise ProtocolError(msg)
    dtype, shape = V2_TO_NUMPY[datatype], _shape(spec, name)
    count = int(np.prod(shape, dtype=np.int64))
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0:
            msg = f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}"
            raise ProtocolError(msg)
        if size != count * dtype.itemsize:
            msg = (f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} of {datatype} "
                   f"({count * dtype.itemsize} bytes)")
            raise ProtocolError(msg)
        if offset + size > len(binary):
            msg = f"input {name!r}: body ends after {len(binary) - offset} of its {size} binary bytes"
            raise ProtocolError(msg)
        arr = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        return name, arr, offset + size
    data = spec.get("data")
    if data is None:
        msg = f"input {name!r}: neither 'data' nor parameters.binary_data_size given"
        raise ProtocolError(msg)
    try:
        arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as err:
        msg = f"input {name!r}: 'data' is not an array of {datatype} ({err})"
        raise ProtocolError(msg) from err
    if arr.size != count:
        msg = f"input {name!r}: 'data' holds {arr.size} elements but shape {list(shape)} needs {count}"
        raise ProtocolError(msg)
    return name, arr.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an (already decompressed) inference request body.

    Parameters
    ----------
    body : bytes
        The request body.
    header_length : str or None
        Value of ``Inference-Header-Content-Length``; ``None`` for a pure JSON body.

    Returns
    -------
    InferRequest

    Raises
    ------
    ProtocolError
        Malformed JSON, bad tensor declarations, binary sizes that do not add up.
    """
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if n < 0 or n > len(body):
            msg = f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body"
            raise ProtocolError(msg)
        head, binary = body[:n], memoryview(body)[n:]
    req = _json_object(head, "inference request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        msg = "the inference request needs a non-empty 'inputs' list"
        raise ProtocolError(msg)
    tensors, offset = {}, 0
    for spec in inputs:
        name, arr, offset = _tensor(spec, binary, offset)
        if name in tensors:
            msg = f"input {name!r} is given twice"
            raise ProtocolError(msg)
        tensors[name] = arr
    if offset != len(binary):
        msg = f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        raise ProtocolError(msg)
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        msg = "'parameters' must be a JSON object"
        raise ProtocolError(msg)
    outputs = None
    if req.get("outputs") is not None:
        if not isinstance(req["outputs"], list):
            msg = "'outputs' must be a list"
            raise ProtocolError(msg)
        outputs = {}
        for out in req["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                msg = f"each requested output must be an object with a string 'name', got {str(out)[:80]!r}"
                raise ProtocolError(msg)
            p = out.get("parameters") or {}
            outputs[out["name"]] = bool(p.get("binary_data", params.get("binary_data_output", False)))
    rid = req.get("id")
    return InferRequest(id=None if rid is None else str(rid), inputs=tensors, outputs=outputs,
                        binary_default=bool(params.get("binary_data_output", False)), parameters=params)


def encode_infer_response(model_name: str, model_version: str, request: InferRequest,
                          tensors: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Encode the outputs a request asked for.

    Parameters
    ----------
    model_name, model_version : str
        Echoed in the response.
    request : InferRequest
        Says which outputs, and which in binary.
    tensors : dict of str to numpy.ndarray
        All outputs of the model for this request, in output order.

    Returns
    -------
    body : bytes
        JSON header followed by the binary outputs, if any.
    headers : dict of str to str
        ``Content-Type`` and, with binary outputs, ``Inference-Header-Content-Length``.
    """
    wanted = request.outputs if request.outputs is not None else dict.fromkeys(tensors, request.binary_default)
    unknown = [n for n in wanted if n not in tensors]
    if unknown:
        msg = f"unknown output(s) {', '.join(map(repr, unknown))}; the model has {', '.join(tensors)}"
        raise ProtocolError(msg)
    outs, chunks = [], []
    for name, binary in wanted.items():
        arr = np.ascontiguousarray(tensors[name])
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outs.append(entry)
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outs}
    if request.id is not None:
        resp["id"] = request.id
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *chunks]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
