"""Scale ``clumpdet detect`` out with Ray Data (``clumpdet detect ... --ray [--address ADDR]``).

The job is the local one spread over a Ray cluster: the driver expands the
inputs, opens the model (metadata, sha256), and writes the catalogue and
summary with the same code as the local path (:mod:`clumpdet.engine.cli_detect`,
:mod:`clumpdet.engine.catalogue`), so ``--resume``, failure listing and the
output files are identical. Only :func:`clumpdet.engine.runner.run_detector`
is replaced by :func:`run_detector_ray`, which yields the same
:class:`~clumpdet.engine.runner.ImageResult` s in input order:

1. ``ray.data.from_items`` over the sources (paths only; nothing is read on the driver);
2. ``map_batches(_decode_batch)``: stateless tasks read and preprocess
   (:func:`clumpdet.engine.readers.read_cutout`) and pass the model input on as
   uint8 RGB (4x smaller than float32; converting back is exact);
3. ``map_batches(_DetectActor, compute=ActorPoolStrategy(size=n))``: a pool of actors, each
   opening the model **once**, runs the batches; GPUs per actor when the
   providers ask for CUDA/TensorRT;
4. the driver streams the results back in input order.

CPU reservation: every actor asks for a *fraction* of a CPU so that the actors
together leave at least one CPU for the decode tasks. (Measured trap: on
2 cores, reading followed by ``map_batches(..., concurrency=2)`` with one CPU
per actor deadlocked: the actors held every CPU and the read tasks never ran;
reproduced here with ray 2.60 and this job: 2 actors x 1 CPU hang, 2 x 0.5 finish.)
Ray's ``num_cpus`` is a scheduling reservation only; the actual threads of
each actor's onnxruntime session are set by ``threads``.

Inputs and the model must be readable at the same (absolute) paths on every
node, e.g. on a shared file system, and every node needs clumpdet installed
(the workers import this module). Failure reasons name the absolute path; the
catalogue's ``image`` column keeps the source id as given. Ray is imported
only when a job runs (extra ``[scale]``); the job sets Ray Data's
``preserve_order`` in the driver's ``DataContext``.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from clumpdet.engine.contracts import InputSpec
from clumpdet.engine.inputs import Source
from clumpdet.engine.readers import MAX_SIZE_MISMATCH, read_cutout
from clumpdet.engine.runner import ImageResult, _detect_batch, one_line

if TYPE_CHECKING:
    from clumpdet.engine.detector import Detector

#: Providers that put an actor on a GPU.
GPU_PROVIDERS = ("cuda", "cudaexecutionprovider", "tensorrt", "trt", "tensorrtexecutionprovider")
#: Upper bound on the number of input blocks (each block is decoded by one task).
MAX_BLOCKS = 4096


def import_ray():
    """Import ``ray`` and ``ray.data`` or raise ``ValueError`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        msg = f"--ray needs Ray Data: pip install 'clumpdet[scale]' (or 'ray[data]') ({err})"
        raise ValueError(msg) from None
    return ray


def _decode_batch(batch: dict[str, np.ndarray], spec: InputSpec, max_size_mismatch: float) -> dict[str, np.ndarray]:
    """Read and preprocess a batch of sources (a Ray task).

    Parameters
    ----------
    batch : dict
        ``"source"``: object array of pickled :class:`Source`.
    spec : InputSpec
        The model's input contract.

    Returns
    -------
    dict
        ``"rgb"``: uint8 ``(B, H, W, 3)`` model input (zeros where decoding
        failed), ``"result"``: pickled :class:`ImageResult` with the cutout's
        ``image`` dropped, or the error.
    """
    rgbs, results = [], []
    for blob in batch["source"]:
        src: Source = pickle.loads(blob)
        try:
            cut = read_cutout(src, spec, max_size_mismatch)
            # rgb_uint8_to_input divides by 255 in float32; rint(x * 255) recovers the bytes exactly.
            rgbs.append(np.rint(cut.image.transpose(1, 2, 0) * np.float32(255.0)).astype(np.uint8))
            res = ImageResult(src.id, cutout=replace(cut, image=None))
        except Exception as err:  # noqa: BLE001 - one bad file never stops the job
            rgbs.append(np.zeros((spec.height, spec.width, 3), dtype=np.uint8))
            res = ImageResult(src.id, error=one_line(src.id, err))
        results.append(pickle.dumps(res))
    return {"rgb": np.stack(rgbs), "result": np.array(results, dtype=object)}


class _DetectActor:
    """Ray actor: opens the model once and detects on decoded batches."""

    def __init__(self, model_path: str, providers: Sequence[str], threads: int | None,
                 score_threshold: float | None) -> None:
        from clumpdet.engine.detector import Detector

        self.detector = Detector(model_path, providers=providers, intra_op_threads=threads,
                                 inter_op_threads=1, score_threshold=score_threshold)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clumpdet.engine.preprocess import rgb_uint8_to_input

        results = [pickle.loads(b) for b in batch["result"]]
        todo = [i for i, r in enumerate(results) if r.error is None]
        if todo:
            images = [rgb_uint8_to_input(batch["rgb"][i]) for i in todo]
            cutouts = [replace(results[i].cutout, image=img) for i, img in zip(todo, images)]
            try:
                outs = _detect_batch(self.detector, cutouts)
            except Exception as err:  # noqa: BLE001
                outs = [err] * len(todo)
            for i, out in zip(todo, outs):
                if isinstance(out, BaseException):
                    results[i].error = one_line(results[i].source, out)
                else:
                    results[i].detections = out
        return {"result": np.array([pickle.dumps(r) for r in results], dtype=object)}


def plan_resources(total_cpus: float, actors: int, threads: int | None, gpu: bool) -> dict[str, float]:
    """Ray resources per actor: a CPU share that leaves >= 1 CPU for decode tasks.

    Parameters
    ----------
    total_cpus : float
        CPUs of the cluster (``ray.cluster_resources()["CPU"]``).
    actors : int
        Size of the actor pool.
    threads : int or None
        onnxruntime threads per actor (``None``: 1 CPU wanted).
    gpu : bool
        Give each actor one GPU.

    Returns
    -------
    dict
        ``{"num_cpus": float, "num_gpus": float}``.
    """
    if actors < 1:
        msg = f"the Ray actor pool needs at least 1 actor, got {actors}"
        raise ValueError(msg)
    want = float(threads or 1)
    share = (total_cpus - 1.0) / actors
    num_cpus = max(0.05, min(want, math.floor(share * 100) / 100))
    return {"num_cpus": num_cpus, "num_gpus": 1.0 if gpu else 0.0}


def run_detector_ray(detector: Detector, sources: Sequence[Source], *, model_path: str,
                     providers: Sequence[str] = ("cpu",), batch_size: int = 8, actors: int | None = None,
                     threads: int | None = None, score_threshold: float | None = None,
                     max_size_mismatch: float = MAX_SIZE_MISMATCH,
                     address: str | None = None) -> Iterator[ImageResult]:
    """Detect on every source with a Ray actor pool; yield one :class:`ImageResult` per source, in input order.

    Parameters
    ----------
    detector : Detector
        The model opened on the driver (its metadata gives the input contract).
    sources : sequence of Source
        From :func:`clumpdet.engine.inputs.expand_inputs`; paths must be readable on every node.
    model_path : str
        The model, opened once per actor (same path on every node).
    providers : sequence of str
        onnxruntime providers in the actors; ``cuda``/``tensorrt`` give each actor one GPU.
    batch_size : int
        Images per model call (and per decode task).
    actors : int or None
        Actor pool size; default one per GPU with GPU providers, else
        ``max(1, (CPUs - 1) // threads)``.
    threads : int or None
        onnxruntime intra-op threads per actor (default 1).
    score_threshold, max_size_mismatch
        As for :class:`Detector` and :func:`read_cutout`.
    address : str or None
        Ray cluster to join (``ray.init(address=...)``, e.g. ``auto`` or
        ``ray://head:10001``); ``None`` uses an already initialised Ray, else
        ``RAY_ADDRESS``, else starts a local instance.

    Yields
    ------
    ImageResult
        With ``cutout.image`` set to ``None``; detections in model-input pixels.
    """
    ray = import_ray()
    if not sources:
        return
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    elif address is not None:
        msg = f"Ray is already initialised in this process; cannot also connect to {address!r}"
        raise ValueError(msg)
    with warnings.catch_warnings():
        # ray 2.60: building the default DataContext sets its own deprecated fields
        # (use_push_based_shuffle, use_polars, use_arrow_tensor_v2) and warns about them.
        warnings.filterwarnings("ignore", r"`use_\w+` is deprecated", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the catalogue comes out in input order, as locally
    ctx.enable_progress_bars = False
    threads = threads or 1
    gpu = any(p.strip().lower() in GPU_PROVIDERS for p in providers)
    resources = ray.cluster_resources()
    total_cpus = float(resources.get("CPU", 1.0))
    if actors is None:
        actors = max(1, int(resources.get("GPU", 0))) if gpu else max(1, int((total_cpus - 1) // threads))
    res = plan_resources(total_cpus, actors, threads, gpu)
    spec = detector.metadata.input
    n_blocks = max(1, min(math.ceil(len(sources) / batch_size), MAX_BLOCKS))
    # Workers may run in another directory (or on another node): send absolute paths, keep the ids.
    items = [{"source": pickle.dumps(replace(s, paths=tuple(os.path.abspath(p) for p in s.paths)))} for s in sources]
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    # Decode tasks reserve memory for their batch (float64 flux cube, uint8 RGB, float32 input):
    # besides being true, this keeps decoding a stage of its own, since Ray Data fuses a task map
    # into the following actor map when their resources are equal, and decoding would then run
    # serially inside the (possibly GPU) actors.
    decode_bytes = batch_size * spec.height * spec.width * 3 * (8 + 1 + 4) * 2
    ds = ds.map_batches(_decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                        memory=decode_bytes, fn_kwargs={"spec": spec, "max_size_mismatch": max_size_mismatch})
    ds = ds.map_batches(_DetectActor, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"model_path": os.path.abspath(model_path), "providers": list(providers),
                                               "threads": threads, "score_threshold": score_threshold},
                        **res)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for blob in batch["result"]:
            yield pickle.loads(blob)

