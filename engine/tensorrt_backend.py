"""Optional TensorRT 10 plan backend for :class:`clumpdet.engine.detector.Detector`.

UNTESTED in this repository's CI: it needs ``tensorrt`` (>= 10, the ``[tensorrt]``
extra), ``cuda-python`` (``cuda.bindings.runtime``) and an NVIDIA GPU. Written
against the documented TensorRT 10 Python API (name-based I/O tensors,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Importing this
module never imports TensorRT; constructing :class:`TensorRTBackend` does.

A plan carries no ONNX ``metadata_props``, so the exporter writes them next to it
as ``<plan>.json`` (a JSON object ``{key: json_string}``, exactly
``ModelMetadata.to_props()``). Plans are specific to the GPU and TensorRT version
that built them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from clumpdet.engine.contracts import INPUT_NAME, OUTPUT_NAMES


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as err:
            msg = "the TensorRT backend needs cuda-python (pip install cuda-python)"
            raise ImportError(msg) from err
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return ``(err, *values)``; raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        msg = f"CUDA error {err} in {what}"
        raise RuntimeError(msg)
    return values[0] if len(values) == 1 else values


class TensorRTBackend:
    """Run a serialized TensorRT plan; same interface as the onnxruntime backend.

    Parameters
    ----------
    path : str
        The plan file; its metadata is read from ``<path>.json``.

    Attributes
    ----------
    props : dict of str to str
        The model metadata (``ModelMetadata.to_props()`` layout).
    input_shape : tuple
        ``(-1, 3, H, W)`` (-1: dynamic batch).
    providers : list of str
        ``["TensorRT"]``.
    """

    def __init__(self, path: str) -> None:
        try:
            import tensorrt as trt
        except ImportError as err:
            msg = f"{path}: running a TensorRT plan needs tensorrt>=10 (pip install 'clumpdet[tensorrt]')"
            raise ValueError(msg) from err
        meta_path = plan_metadata_path(path)
        try:
            with open(meta_path, encoding="utf-8") as fh:
                self.props = {str(k): str(v) for k, v in json.load(fh).items()}
        except (OSError, ValueError, AttributeError) as err:
            msg = f"{meta_path}: cannot read the plan's metadata sidecar ({err})"
            raise ValueError(msg) from err
        self._trt = trt
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(path, "rb") as fh:
            self._engine = self._runtime.deserialize_cuda_engine(fh.read())
        if self._engine is None:
            msg = f"{path}: not a TensorRT plan for this GPU/TensorRT version (deserialisation failed)"
            raise ValueError(msg)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if INPUT_NAME not in names or any(n not in names for n in OUTPUT_NAMES):
            msg = f"{path}: I/O tensors {names} do not follow the clumpdet contract"
            raise ValueError(msg)
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.input_shape = tuple(self._engine.get_tensor_shape(INPUT_NAME))
        self.providers = ["TensorRT"]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run ``float32 [N, 3, H, W]``; return ``[num_dets, boxes, scores, labels]`` on the host."""
        trt, cudart, ctx = self._trt, self._cudart, self._context
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not ctx.set_input_shape(INPUT_NAME, tuple(batch.shape)):
            msg = f"TensorRT plan rejects input shape {batch.shape} (outside its optimisation profile?)"
            raise ValueError(msg)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ptr = self._device(INPUT_NAME, batch.nbytes)
        ctx.set_tensor_address(INPUT_NAME, ptr)
        _check(cudart.cudaMemcpyAsync(ptr, batch.ctypes.data, batch.nbytes, h2d, self._stream), "copy in")
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(ctx.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            outputs[name] = host
            ctx.set_tensor_address(name, self._device(name, max(host.nbytes, 1)))
        if not ctx.execute_async_v3(self._stream):
            msg = "TensorRT execute_async_v3 failed (see the TensorRT log above)"
            raise RuntimeError(msg)
        for name, host in outputs.items():
            src = self._buffers[name][0]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, src, host.nbytes, d2h, self._stream), "copy out")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        # Plans built with INT32 index outputs are widened to the contract's int64.
        return [outputs["num_dets"].astype(np.int64), outputs["boxes"], outputs["scores"],
                outputs["labels"].astype(np.int64)]

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                self._cudart.cudaFree(ptr)
            except Exception:  # noqa: BLE001, S110 - interpreter shutdown
                pass


def plan_metadata_path(plan_path: str | os.PathLike[str]) -> str:
    """Where the metadata sidecar of a plan lives: ``<plan>.json``."""
    return os.fspath(plan_path) + ".json"
