"""Pipelined batch runner: decode in worker threads while the model runs.

Sources are decoded (:func:`clumpdet.engine.readers.read_cutout`) by a thread
pool, at most ``batch_size * (prefetch_batches + 2)`` at a time, so memory is
bounded whatever the number of files; while the model runs batch ``k`` the
workers decode the batches after it (onnxruntime and most numpy/Pillow/astropy
work release the GIL). Results come out in input order. A source that fails
to decode, or an image the model fails on, becomes a failed
:class:`ImageResult` with a one-line reason; the job carries on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clumpdet.engine.inputs import Source
from clumpdet.engine.metrics import Detections
from clumpdet.engine.readers import MAX_SIZE_MISMATCH, Cutout, InputError, read_cutout

if TYPE_CHECKING:
    from clumpdet.engine.detector import Detector


@dataclass
class ImageResult:
    """What happened to one source.

    Parameters
    ----------
    source : str
        Source id (the catalogue's ``image``).
    cutout : Cutout or None
        The decoded input (``None`` if decoding failed); keeps the model input
        image for overlays, drop it once used.
    detections : Detections or None
        Boxes in *model-input* pixels (``x1, y1, x2, y2``, pixel ``i`` spans
        ``[i, i + 1)``); ``None`` on failure.
    error : str or None
        One line naming the file and the problem when the source failed.
    """

    source: str
    cutout: Cutout | None = None
    detections: Detections | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """``"failed"``, ``"no_detections"`` or ``"ok"``."""
        if self.error is not None or self.detections is None:
            return "failed"
        return "ok" if len(self.detections) else "no_detections"


def one_line(source: str, err: BaseException) -> str:
    """A one-line reason naming the source."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, InputError):
        return text
    return f"{source}: {type(err).__name__}: {text}"


def _detect_batch(detector: Detector, cutouts: list[Cutout]) -> list[Detections | BaseException]:
    """Detect on a batch; on failure retry one by one so a bad image cannot sink the others."""
    try:
        return list(detector.detect(np.stack([c.image for c in cutouts])))
    except Exception:  # noqa: BLE001 - isolate the culprit below
        if len(cutouts) == 1:
            raise
    out: list[Detections | BaseException] = []
    for c in cutouts:
        try:
            out.append(detector.detect(c.image[None])[0])
        except Exception as err:  # noqa: BLE001
            out.append(err)
    return out


def run_detector(detector: Detector, sources: Iterable[Source], batch_size: int = 8, workers: int | None = None,
                 prefetch_batches: int = 2, max_size_mismatch: float = MAX_SIZE_MISMATCH) -> Iterator[ImageResult]:
    """Detect on every source, pipelined; yield one :class:`ImageResult` per source, in input order.

    Parameters
    ----------
    detector : Detector
        The model; its metadata gives the input size and the Lupton stretch.
    sources : iterable of Source
        May be a lazy iterable; it is consumed as the job advances.
    batch_size : int
        Sources per model call (failed decodes leave a batch smaller).
    workers : int or None
        Decode threads; default ``min(4, os.cpu_count())``.
    prefetch_batches : int
        Batches decoded ahead of the one running.
    max_size_mismatch : float
        Passed to :func:`~clumpdet.engine.readers.read_cutout`.
    """
    if batch_size < 1 or prefetch_batches < 0:
        msg = f"batch_size must be >= 1 and prefetch_batches >= 0, got {batch_size}, {prefetch_batches}"
        raise ValueError(msg)
    spec = detector.metadata.input
    workers = workers or min(4, os.cpu_count() or 1)
    capacity = batch_size * (prefetch_batches + 1)
    it = iter(sources)
    pending: deque[tuple[Source, Future[Cutout]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clumpdet-read")

    def top_up() -> None:
        while len(pending) < capacity:
            src = next(it, None)
            if src is None:
                return
            pending.append((src, pool.submit(read_cutout, src, spec, max_size_mismatch)))

    try:
        top_up()
        while pending:
            group = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
            top_up()  # the workers decode ahead while this batch waits and runs
            results = []
            for src, fut in group:
                try:
                    results.append(ImageResult(src.id, cutout=fut.result()))
                except Exception as err:  # noqa: BLE001 - one bad file never stops the job
                    results.append(ImageResult(src.id, error=one_line(src.id, err)))
            todo = [r for r in results if r.cutout is not None]
            if todo:
                try:
                    outs = _detect_batch(detector, [r.cutout for r in todo])
                except Exception as err:  # noqa: BLE001
                    outs = [err] * len(todo)
                for r, out in zip(todo, outs):
                    if isinstance(out, BaseException):
                        r.error = one_line(r.source, out)
                    else:
                        r.detections = out
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
