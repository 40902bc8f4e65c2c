"""Server metrics in the Prometheus text exposition format (version 0.0.4), no dependency.

Exposed at ``GET /metrics``:

``clumpdet_requests_total{endpoint, code}``
    Requests answered, by endpoint (``infer``, ``detect``, ``metadata``, ...) and HTTP status.
``clumpdet_request_duration_seconds{endpoint}``
    Histogram of request latency (body read to response ready).
``clumpdet_batch_size``
    Histogram of images per model call (what dynamic batching achieved).
``clumpdet_inference_duration_seconds``
    Histogram of model-call time.
``clumpdet_inference_images_total``
    Images run through the model.
``clumpdet_failures_total{kind}``
    ``batch``: model calls that raised (their requests were retried one by one);
    ``request``: requests whose own model call failed.
``clumpdet_rejected_total{reason}``
    Requests refused with 503 (``queue_full``) or 413 (``body_too_large``).
``clumpdet_queue_images``
    Gauge: images waiting for the model.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + inner + "}"


def _num(x: float) -> str:
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: tuple[tuple[str, str], ...]) -> list[str]:
        out, running = [], 0
        for edge, c in zip((*self.buckets, float("inf")), self.counts):
            running += c
            le = "+Inf" if edge == float("inf") else _num(edge)
            out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class ServeMetrics:
    """Thread-safe counters and histograms of one server.

    Parameters
    ----------
    queue_images : callable or None
        Returns the number of images waiting (read at render time).
    """

    def __init__(self, queue_images: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self.queue_images = queue_images
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.inference = _Histogram(LATENCY_BUCKETS)
        self.images = 0
        self.failures: dict[str, int] = {"batch": 0, "request": 0}
        self.rejected: dict[str, int] = {"queue_full": 0, "body_too_large": 0}

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self._lock:
            self.requests[(endpoint, code)] = self.requests.get((endpoint, code), 0) + 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        """Count one model call of ``size`` images."""
        with self._lock:
            self.batch_size.observe(size)
            self.inference.observe(seconds)
            self.images += size

    def failure(self, kind: str, n: int = 1) -> None:
        """Count failures: ``batch`` or ``request``."""
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + n

    def reject(self, reason: str) -> None:
        """Count a refused request: ``queue_full`` or ``body_too_large``."""
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        with self._lock:
            out = ["# HELP clumpdet_requests_total Requests answered, by endpoint and HTTP status.",
                   "# TYPE clumpdet_requests_total counter"]
            for (ep, code), n in sorted(self.requests.items()):
                out.append(f"clumpdet_requests_total{_labels((('endpoint', ep), ('code', str(code))))} {n}")
            out += ["# HELP clumpdet_request_duration_seconds Request latency.",
                    "# TYPE clumpdet_request_duration_seconds histogram"]
            for ep, h in sorted(self.latency.items()):
                out += h.lines("clumpdet_request_duration_seconds", (("endpoint", ep),))
            out += ["# HELP clumpdet_batch_size Images per model call.", "# TYPE clumpdet_batch_size histogram"]
            out += self.batch_size.lines("clumpdet_batch_size", ())
            out += ["# HELP clumpdet_inference_duration_seconds Model-call time.",
                    "# TYPE clumpdet_inference_duration_seconds histogram"]
            out += self.inference.lines("clumpdet_inference_duration_seconds", ())
            out += ["# HELP clumpdet_inference_images_total Images run through the model.",
                    "# TYPE clumpdet_inference_images_total counter", f"clumpdet_inference_images_total {self.images}"]
            out += ["# HELP clumpdet_failures_total Failed model calls (batch) and failed requests (request).",
                    "# TYPE clumpdet_failures_total counter"]
            out += [f"clumpdet_failures_total{_labels((('kind', k),))} {n}" for k, n in sorted(self.failures.items())]
            out += ["# HELP clumpdet_rejected_total Requests refused because of load or size.",
                    "# TYPE clumpdet_rejected_total counter"]
            out += [f"clumpdet_rejected_total{_labels((('reason', k),))} {n}" for k, n in sorted(self.rejected.items())]
        queued = self.queue_images() if self.queue_images is not None else 0
        out += ["# HELP clumpdet_queue_images Images waiting for the model.", "# TYPE clumpdet_queue_images gauge",
                f"clumpdet_queue_images {queued}"]
        return "\n".join(out) + "\n"
