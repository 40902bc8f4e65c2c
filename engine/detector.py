"""The engine's Python API: run an exported detector (DESIGN §3) on batches or files.

Everything the detector needs (class names, input size, Lupton stretch,
thresholds) is read from the model's metadata; nothing is declared here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from clumpdet.engine.contracts import INPUT_NAME, OUTPUT_NAMES, ModelMetadata
from clumpdet.engine.hashing import sha256_file
from clumpdet.engine.metrics import Detections, detections_from_batch

if TYPE_CHECKING:
    from clumpdet.engine.runner import ImageResult

#: Output names of the exported-model contract, in this order.
#: Short provider names accepted besides onnxruntime's own names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
PLAN_SUFFIXES = (".plan", ".engine", ".trt")


def resolve_providers(providers: Sequence[str]) -> list[str]:
    """Map short names (``cpu``, ``cuda``, ``tensorrt``) to onnxruntime's and check availability."""
    available = ort.get_available_providers()
    out = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.strip().lower(), p.strip())
        if name not in available:
            msg = (
                f"execution provider {p!r} is not available in this onnxruntime build "
                f"(available: {', '.join(available)}); for CUDA install 'clumpdet[gpu]'"
            )
            raise ValueError(msg)
        out.append(name)
    if not out:
        msg = "at least one execution provider is needed"
        raise ValueError(msg)
    return out


class _OrtBackend:
    """onnxruntime session with throughput-oriented options."""

    def __init__(self, path: str, providers: list[str], intra_op_threads: int | None,
                 inter_op_threads: int | None, allow_spinning: bool,
                 provider_options: Sequence[dict[str, Any]] | None) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = True
        so.enable_mem_pattern = True  # shapes repeat batch after batch
        so.intra_op_num_threads = int(intra_op_threads or 0)  # 0: onnxruntime's default (physical cores)
        so.inter_op_num_threads = int(inter_op_threads or 0)
        # Spinning threads steal the cores the decode workers need between runs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, so, providers=providers, provider_options=provider_options)
        except Exception as err:  # noqa: BLE001 - ort raises InvalidProtobuf, Fail, InvalidGraph, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            msg = f"{path}: not a loadable ONNX model ({first})"
            raise ValueError(msg) from err
        self.props = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT_NAME] or any(n not in outputs for n in OUTPUT_NAMES):
            msg = (
                f"{path}: inputs {[i.name for i in inputs]} / outputs {outputs} do not follow the clumpdet "
                f"contract (input {INPUT_NAME!r}; outputs {', '.join(OUTPUT_NAMES)})"
            )
            raise ValueError(msg)
        self.input_shape = tuple(inputs[0].shape)
        self.providers = self.session.get_providers()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})


class Detector:
    """An exported clumpdet model, ready to detect.

    Parameters
    ----------
    model_path : str or os.PathLike
        An exported ``.onnx`` (DESIGN §3), or a TensorRT plan (``.plan``,
        ``.engine``) with its metadata in ``<plan>.json`` (needs ``tensorrt``).
    providers : sequence of str
        onnxruntime execution providers in order of preference; short names
        ``cpu``, ``cuda``, ``tensorrt`` are accepted.
    intra_op_threads, inter_op_threads : int or None
        onnxruntime thread pools; ``None`` lets onnxruntime choose.
    score_threshold : float or None
        Final score threshold. The graph already dropped everything below the
        model's ``postprocess.final_score_thresh``, so this may only *raise* it;
        ``None`` keeps the model's.
    allow_spinning : bool
        Let onnxruntime's idle threads spin (lower latency, but steals CPU from
        decode workers; off by default).
    provider_options : sequence of dict or None
        Per-provider options, same order as ``providers``.

    Raises
    ------
    ValueError
        One line naming the file: missing file, not ONNX, no clumpdet metadata,
        inputs/outputs off-contract, unavailable provider, threshold too low.
    """

    def __init__(self, model_path: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int | None = None, inter_op_threads: int | None = None,
                 score_threshold: float | None = None, allow_spinning: bool = False,
                 provider_options: Sequence[dict[str, Any]] | None = None) -> None:
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            msg = f"{path}: no such model file"
            raise ValueError(msg)
        self.model_path = path
        if path.lower().endswith(PLAN_SUFFIXES):
            from clumpdet.engine.tensorrt_backend import TensorRTBackend

            self._backend: Any = TensorRTBackend(path)
        else:
            self._backend = _OrtBackend(path, resolve_providers(providers), intra_op_threads,
                                        inter_op_threads, allow_spinning, provider_options)
        self.metadata = ModelMetadata.from_props(self._backend.props, source=path)
        spec = self.metadata.input
        shape = self._backend.input_shape
        if len(shape) != 4 or tuple(shape[1:]) != (3, spec.height, spec.width):
            msg = f"{path}: input shape {shape} disagrees with the metadata's [N, 3, {spec.height}, {spec.width}]"
            raise ValueError(msg)
        model_thresh = self.metadata.postprocess.final_score_thresh
        if score_threshold is not None and score_threshold < model_thresh:
            msg = (
                f"{path}: score threshold {score_threshold} is below the model's final threshold {model_thresh}; "
                "the exported graph already dropped those detections, so a threshold can only be raised"
            )
            raise ValueError(msg)
        self.score_threshold = model_thresh if score_threshold is None else float(score_threshold)
        self._sha256: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names by label id (0 is background)."""
        return self.metadata.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input."""
        return self.metadata.input.height, self.metadata.input.width

    @property
    def providers(self) -> list[str]:
        """Execution providers actually in use."""
        return list(self._backend.providers)

    @property
    def model_name(self) -> str:
        """File name of the model."""
        return os.path.basename(self.model_path)

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file (hex), computed once."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.model_path)
        return self._sha256

    def detect(self, batch: np.ndarray) -> list[Detections]:
        """Run the model on a batch of model inputs.

        Parameters
        ----------
        batch : numpy.ndarray
            float32 ``(N, 3, H, W)`` RGB in [0, 1] (``H, W`` = :attr:`input_size`),
            numpy ``[row, column]`` order; e.g. stacked :attr:`Cutout.image`.

        Returns
        -------
        list of Detections
            One per image, sorted by descending score, score >= :attr:`score_threshold`.
            Boxes are ``(x1, y1, x2, y2)`` in *model-input* pixels, pixel ``i``
            spanning ``[i, i + 1)``.
        """
        batch = np.asarray(batch)
        h, w = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            msg = f"{self.model_name}: batch must have shape (N, 3, {h}, {w}), got {batch.shape}"
            raise ValueError(msg)
        if not np.issubdtype(batch.dtype, np.floating):
            msg = f"{self.model_name}: batch must be float32 in [0, 1], got dtype {batch.dtype}"
            raise ValueError(msg)
        if len(batch) == 0:
            return []
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        num, boxes, scores, labels = self._backend.run(batch)
        k = self.metadata.postprocess.max_detections
        num = np.asarray(num)
        if num.shape != (len(batch),) or np.any(num < 0) or np.any(num > np.shape(scores)[1]) or np.shape(scores)[1] != k:
            msg = f"{self.model_name}: outputs break the contract (num_dets {num.tolist()}, K={np.shape(scores)[1]}, expected {k})"
            raise RuntimeError(msg)
        dets = detections_from_batch(num, boxes, scores, labels)
        if self.score_threshold > self.metadata.postprocess.final_score_thresh:
            dets = [d.above(self.score_threshold) for d in dets]
        return dets

    def detect_files(self, paths: Sequence[str], batch_size: int = 8, workers: int | None = None,
                     keep_images: bool = False) -> list[ImageResult]:
        """Read, preprocess and detect on files (pipelined, :func:`clumpdet.engine.runner.run_detector`).

        Parameters
        ----------
        paths : sequence of str
            Paths, globs, directories or ``@lists`` (:func:`clumpdet.engine.inputs.expand_inputs`).
        batch_size, workers : int
            Images per model call; decode threads.
        keep_images : bool
            Keep each :attr:`Cutout.image` (1.9 MB for 400x400); by default it is
            replaced by ``None`` so that memory stays small for long lists.

        Returns
        -------
        list of ImageResult
            One per source, in input order; failures carry their error instead of detections.
        """
        import dataclasses

        from clumpdet.engine.inputs import expand_inputs
        from clumpdet.engine.runner import run_detector

        sources = expand_inputs(paths, self.metadata.input.lupton.bands)
        results = []
        for r in run_detector(self, sources, batch_size=batch_size, workers=workers):
            if r.cutout is not None and not keep_images:
                r.cutout = dataclasses.replace(r.cutout, image=None)
            results.append(r)
        return results
