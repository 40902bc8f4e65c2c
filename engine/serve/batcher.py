"""Dynamic batching: gather concurrent requests into one model call, answer each on its own.

Policy (as Triton's dynamic batcher): when the model is free, take the waiting
requests in arrival order up to ``max_batch`` images; if fewer are waiting, wait
at most ``max_delay_s`` for more, then run what is there. While a batch runs,
new requests queue, so under load batches fill without waiting. A request is
never split across model calls (``1 <= images <= max_batch``).

Isolation: when a model call raises, every request of that batch is retried on
its own (as :func:`clumpdet.engine.runner._detect_batch` does), so only the
request that makes the model fail gets the error.

Bounds: at most ``max_queue_images`` images wait; :meth:`DynamicBatcher.submit`
raises :class:`Overloaded` beyond that (the app answers 503).

The model runs in one worker thread (onnxruntime releases the GIL), the queue
in the asyncio event loop of the server.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clumpdet.engine.serve.metrics import ServeMetrics


class Overloaded(RuntimeError):
    """The queue is full (answer 503), or the batcher is stopping."""


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    """Queue of image batches in front of one model function.

    Parameters
    ----------
    fn : callable
        ``fn(images) -> sequence`` with ``images`` float32 ``(N, 3, H, W)``,
        returning one result per image (e.g. :meth:`Detector.detect`).
    max_batch : int
        Most images per model call (>= 1; 1 disables batching).
    max_delay_s : float
        Longest wait for a batch to fill once a request is waiting (>= 0).
    max_queue_images : int
        Most images allowed to wait (>= ``max_batch``).
    metrics : ServeMetrics or None
        Receives batch sizes, model-call times and failures.
    """

    def __init__(self, fn: Callable[[np.ndarray], Sequence[Any]], max_batch: int, max_delay_s: float,
                 max_queue_images: int, metrics: ServeMetrics | None = None) -> None:
        if max_batch < 1 or max_delay_s < 0 or max_queue_images < max_batch:
            msg = (f"batcher.py: need max_batch >= 1, max_delay_s >= 0 and max_queue_images >= max_batch, got "
                   f"{max_batch}, {max_delay_s}, {max_queue_images}")
            raise ValueError(msg)
        self.fn, self.max_batch, self.max_delay_s = fn, int(max_batch), float(max_delay_s)
        self.max_queue_images = int(max_queue_images)
        self.metrics = metrics or ServeMetrics()
        self._queue: deque[_Item] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued_images(self) -> int:
        """Images waiting for the model."""
        return self._queued

    @property
    def running(self) -> bool:
        """Whether the worker is accepting requests."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker task (call inside the server's event loop)."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clumpdet-model")
        self._task = asyncio.get_running_loop().create_task(self._work(), name="clumpdet-batcher")

    async def stop(self) -> None:
        """Stop the worker; waiting requests fail with :class:`Overloaded`."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Overloaded("server is shutting down"))
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> list[Any]:
        """Queue ``images`` (float32 ``(n, 3, H, W)``, ``1 <= n <= max_batch``); return their results.

        Raises
        ------
        ValueError
            ``n`` outside ``[1, max_batch]``.
        Overloaded
            The queue holds too many images, or the batcher is not running.
        Exception
            Whatever the model function raised for these images alone.
        """
        n = len(images)
        if not 1 <= n <= self.max_batch:
            msg = f"a request may hold 1 to {self.max_batch} images (the server's --max-batch), got {n}"
            raise ValueError(msg)
        if not self.running:
            msg = "the model worker is not running"
            raise Overloaded(msg)
        if self._queued + n > self.max_queue_images:
            self.metrics.reject("queue_full")
            msg = f"server overloaded: {self._queued} images already queued (limit {self.max_queue_images}); retry later"
            raise Overloaded(msg)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(images, future))
        self._queued += n
        self._wake.set()
        return await future

    async def _wait(self, timeout: float | None) -> bool:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _next_group(self) -> list[_Item]:
        while not self._queue:
            await self._wait(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while self._queued < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait(remaining):
                break
        group, total = [], 0
        while self._queue and total + len(self._queue[0].images) <= self.max_batch:
            item = self._queue.popleft()
            self._queued -= len(item.images)
            if not item.future.done():  # skip requests whose client went away
                group.append(item)
                total += len(item.images)
        return group

    def _run(self, arrays: list[np.ndarray]) -> list[list[Any] | BaseException]:
        """Model call for a group (worker thread); on failure retry each request alone."""
        t0 = time.perf_counter()
        try:
            flat = list(self.fn(np.concatenate(arrays) if len(arrays) > 1 else arrays[0]))
        except Exception:  # noqa: BLE001 - isolate the culprit below
            self.metrics.failure("batch")
        else:
            self.metrics.batch(sum(len(a) for a in arrays), time.perf_counter() - t0)
            out, start = [], 0
            for a in arrays:
                out.append(flat[start : start + len(a)])
                start += len(a)
            return out
        results: list[list[Any] | BaseException] = []
        for a in arrays:
            t1 = time.perf_counter()
            try:
                results.append(list(self.fn(a)))
                self.metrics.batch(len(a), time.perf_counter() - t1)
            except Exception as err:  # noqa: BLE001 - this request's own failure
                self.metrics.failure("request")
                results.append(err)
        return results

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._next_group()
            if not group:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, [i.images for i in group])
            except asyncio.CancelledError:
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(Overloaded("server is shutting down"))
                raise
            except Exception as err:  # noqa: BLE001 - never let the worker die
                results = [err] * len(group)
            for item, res in zip(group, results):
                if item.future.done():
                    continue
                if isinstance(res, BaseException):
                    item.future.set_exception(res)
                else:
                    item.future.set_result(res)
