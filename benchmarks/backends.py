"""One small adapter per backend, each run in its own process (so peak RSS is its own).

Every adapter exposes ``detect(batch) -> list[Detections]`` on float32
``[N, 3, H, W]`` RGB in [0, 1] (the engine's decoded input, uncropped) and the
attributes :class:`clumpdet.engine.catalogue.CatalogueBuilder` and
:func:`clumpdet.engine.runner.run_detector` read, so that the end-to-end timing
(file decode -> catalogue written) goes through the very same pipelined reader
and catalogue writer for every backend. Boxes: ``(x1, y1, x2, y2)`` in model-input
pixels, pixel ``i`` spanning ``[i, i + 1)``.

Kinds:

``torch``
    The reference, :func:`clumpdet.train.predict.predict` (eager; ``device`` option).
``naive``
    torchvision's legacy ONNX export at a fixed batch in onnxruntime; the graph
    stops after the per-class chain, so the class-agnostic NMS and final
    threshold of the preset are applied here in numpy (:func:`agnostic_chain`)
    and the crop offset is added. A batch smaller than an exported size is
    padded with blank images (their outputs dropped).
``engine``
    :class:`clumpdet.engine.detector.Detector` on an exported ``.onnx`` (fp32 or
    int8) or TensorRT plan, with the execution providers given.

The parent talks to a child over a pipe (:class:`BackendProcess`): one command
at a time, so repeats of different backends can be interleaved.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.engine.hashing import sha256_file
from clumpdet.engine.metrics import Detections
from clumpdet.engine.parity import match_backends_all


@dataclass(frozen=True)
class BackendSpec:
    """What one backend process loads.

    Parameters
    ----------
    name : str
        Row label in the report.
    kind : {"torch", "naive", "engine"}
        Adapter (module docstring).
    model : str or dict of int to str
        Checkpoint (``torch``), ONNX/plan path (``engine``), or batch -> ONNX (``naive``).
    precision : str
        ``"fp32"``, ``"fp16"`` or ``"int8"``: selects the parity tolerance.
    threads : int or None
        Intra-op threads (torch / onnxruntime); ``None``: the library's default.
    options : dict
        ``device`` (torch), ``providers`` (engine).
    """

    name: str
    kind: str
    model: Any
    precision: str = "fp32"
    threads: int | None = None
    options: dict = field(default_factory=dict)


def agnostic_chain(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float | None,
                   final_thresh: float) -> Detections:
    """Class-agnostic greedy NMS at ``iou`` (skipped when ``None``), then ``score >= final_thresh``.

    numpy twin of :func:`clumpdet.train.predict.apply_agnostic_chain` (same order:
    descending score, stable; a box is dropped when its IoU with a kept box is ``> iou``).
    ``boxes`` ``(P, 4)`` float, ``scores`` ``(P,)``, ``labels`` ``(P,)``.
    """
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    if iou is None:
        keep = list(order)
    else:
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        alive = np.ones(len(order), dtype=bool)
        for pos, i in enumerate(order):
            if not alive[pos]:
                continue
            keep.append(i)
            rest = order[pos + 1:]
            iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
            ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
            inter = iw * ih
            union = area[i] + area[rest] - inter
            ov = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            alive[pos + 1:] &= ov <= iou
    keep_arr = np.array(keep, dtype=np.int64)
    keep_arr = keep_arr[scores[keep_arr] >= final_thresh] if len(keep_arr) else keep_arr
    return Detections(boxes[keep_arr], scores[keep_arr], labels[keep_arr])


class _Adapter:
    """Common attributes for the catalogue writer; ``metadata`` is the engine model's contract."""

    def __init__(self, metadata: ModelMetadata, name: str, model_file: str) -> None:
        self.metadata = metadata
        self.class_names = metadata.class_names
        self.score_threshold = metadata.postprocess.final_score_thresh
        self.model_name = name
        self._file = model_file
        self._sha: str | None = None

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file (hex), computed once."""
        if self._sha is None:
            self._sha = sha256_file(self._file)
        return self._sha


class TorchAdapter(_Adapter):
    """The PyTorch reference :func:`~clumpdet.train.predict.predict` on a checkpoint."""

    def __init__(self, spec: BackendSpec, metadata: ModelMetadata) -> None:
        import torch

        from clumpdet.train.checkpoints import load_model

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.torch = torch
        self.model, self.preset = load_model(spec.model)
        self.model.to(spec.options.get("device", "cpu"))
        super().__init__(metadata, spec.name, spec.model)

    def detect(self, batch: np.ndarray) -> list[Detections]:
        from clumpdet.train.predict import predict

        return predict(self.model, self.torch.from_numpy(np.ascontiguousarray(batch, np.float32)), self.preset)


class NaiveAdapter(_Adapter):
    """torchvision's legacy ONNX export in onnxruntime + the agnostic chain in numpy."""

    def __init__(self, spec: BackendSpec, metadata: ModelMetadata) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(spec.threads or 0)
        so.log_severity_level = 3
        self.sessions = {int(b): ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
                         for b, p in spec.model.items() if not str(p).startswith("unavailable")}
        if not self.sessions:
            msg = "backends.py: naive peer has no exported batch size"
            raise ValueError(msg)
        spec_in = metadata.input
        self.crop = spec_in.crop or (0, 0, spec_in.width, spec_in.height)
        super().__init__(metadata, spec.name, next(iter(spec.model.values())))

    def detect(self, batch: np.ndarray) -> list[Detections]:
        n = len(batch)
        size = min((b for b in self.sessions if b >= n), default=None)
        if size is None:  # larger than any export: split
            big = max(self.sessions)
            return [d for i in range(0, n, big) for d in self.detect(batch[i:i + big])]
        x0, y0, cw, ch = self.crop
        crops = np.ascontiguousarray(batch[:, :, y0:y0 + ch, x0:x0 + cw], dtype=np.float32)
        if size > n:
            crops = np.concatenate([crops, np.zeros((size - n, *crops.shape[1:]), np.float32)])
        sess = self.sessions[size]
        outs = sess.run(None, {i.name: crops[k] for k, i in enumerate(sess.get_inputs())})
        pp = self.metadata.postprocess
        offset = np.array([x0, y0, x0, y0], dtype=np.float64)
        dets = []
        for k in range(n):
            triple = outs[3 * k:3 * k + 3]
            boxes = next(o for o in triple if o.ndim == 2)
            labels = next(o for o in triple if o.ndim == 1 and np.issubdtype(o.dtype, np.integer))
            scores = next(o for o in triple if o.ndim == 1 and np.issubdtype(o.dtype, np.floating))
            d = agnostic_chain(boxes, scores, labels, pp.agnostic_nms_iou, pp.final_score_thresh)
            dets.append(Detections(d.boxes + offset, d.scores, d.labels))
        return dets


def make_adapter(spec: BackendSpec, metadata: ModelMetadata):
    """Build the adapter of ``spec`` (in the process that will run it)."""
    if spec.kind == "torch":
        return TorchAdapter(spec, metadata)
    if spec.kind == "naive":
        return NaiveAdapter(spec, metadata)
    if spec.kind == "engine":
        from clumpdet.engine.detector import Detector

        return Detector(spec.model, providers=spec.options.get("providers", ("cpu",)), intra_op_threads=spec.threads)
    msg = f"backends.py: unknown backend kind {spec.kind!r}"
    raise ValueError(msg)


def _e2e(adapter, paths: list[str], batch: int, workers: int) -> int:
    """Decode every file, detect, build and write the catalogue; returns the detections written."""
    from clumpdet.engine.catalogue import CatalogueBuilder, write_table
    from clumpdet.engine.inputs import expand_inputs
    from clumpdet.engine.runner import run_detector

    sources = expand_inputs(paths, adapter.metadata.input.lupton.bands)
    builder = CatalogueBuilder(adapter)
    for r in run_detector(adapter, sources, batch_size=batch, workers=workers):
        if r.error:
            msg = f"backends.py: end-to-end run failed on {r.source}: {r.error}"
            raise RuntimeError(msg)
        builder.add(r)
    cat = builder.catalogue()
    with tempfile.TemporaryDirectory(prefix="bench-cat-") as tmp:
        write_table(cat, os.path.join(tmp, "catalogue.ecsv"))
        write_table(builder.summary(), os.path.join(tmp, "summary.ecsv"))
    return len(cat)


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    ``VmHWM`` of ``/proc/self/status`` where there is one: ``getrusage``'s
    ``ru_maxrss`` survives ``execve`` on Linux, so a spawned child would report
    its parent's peak as its own. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _pack(dets: list[Detections]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [(d.boxes, d.scores, d.labels) for d in dets]


def _child(spec: BackendSpec, props: dict, images_npy: str, conn) -> None:
    """Backend process: build the adapter, then answer commands until ``stop``."""
    try:
        metadata = ModelMetadata.from_props(props, source="benchmark")
        images = np.load(images_npy, mmap_mode="r")
        adapter = make_adapter(spec, metadata)
        conn.send(("ready", None))
    except Exception as err:  # noqa: BLE001 - reported as the row's reason
        conn.send(("error", f"{type(err).__name__}: {err}".splitlines()[0][:300]))
        return
    valid: list[Detections] = []
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == "stop":
                conn.send(("ok", None))
                return
            if cmd == "validate":  # all images, batch arg; keep them for consistency checks
                t0 = time.perf_counter()
                valid = [d for i in range(0, len(images), arg) for d in adapter.detect(np.array(images[i:i + arg]))]
                conn.send(("ok", (_pack(valid), time.perf_counter() - t0)))
            elif cmd == "model":  # (batch, start): time one call on images[start:start+batch] (wrapping)
                b, start = arg
                idx = [(start + k) % len(images) for k in range(b)]
                x = np.array(images[idx])
                t0 = time.perf_counter()
                dets = adapter.detect(x)
                dt = time.perf_counter() - t0
                s = match_backends_all([valid[i] for i in idx], dets, iou_thresh=0.999) if valid else None
                conn.send(("ok", (dt, None if s is None else s["matched_fraction"])))
            elif cmd == "e2e":  # (batch, paths, workers)
                b, paths, workers = arg
                t0 = time.perf_counter()
                n = _e2e(adapter, paths, b, workers)
                conn.send(("ok", (time.perf_counter() - t0, n)))
            elif cmd == "rss":
                conn.send(("ok", peak_rss_bytes()))
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception as err:  # noqa: BLE001
            tb = traceback.format_exc(limit=3).splitlines()[-1]
            conn.send(("error", f"{type(err).__name__}: {err}"[:300] + f" ({tb[:200]})"))


class BackendProcess:
    """A backend in its own (spawned) process; :meth:`call` sends one command and waits."""

    def __init__(self, spec: BackendSpec, props: dict, images_npy: str, timeout_s: float = 1800.0) -> None:
        ctx = mp.get_context("spawn")
        self.spec = spec
        self.timeout_s = timeout_s
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(spec, props, images_npy, child), daemon=True,
                                name=f"bench-{spec.name}")
        self.proc.start()
        child.close()
        status, value = self._recv()
        self.error: str | None = value if status == "error" else None

    def _recv(self):
        if not self.conn.poll(self.timeout_s):
            msg = f"backends.py: backend {self.spec.name!r} did not answer in {self.timeout_s:.0f} s"
            raise TimeoutError(msg)
        try:
            return self.conn.recv()
        except EOFError:
            return "error", f"backend process exited (code {self.proc.exitcode})"

    def call(self, cmd: str, arg: Any = None) -> Any:
        """Run ``cmd`` in the child; raise ``RuntimeError`` with the child's reason on failure."""
        if self.error:
            msg = self.error
            raise RuntimeError(msg)
        self.conn.send((cmd, arg))
        status, value = self._recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        """Stop the child (politely, then by its own pid)."""
        if self.proc.is_alive() and not self.error:
            try:
                self.conn.send(("stop", None))
                self.conn.poll(30)
            except (BrokenPipeError, OSError):
                pass
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
        self.conn.close()
