"""The machine's fp32 GEMM ceiling, measured in the same run as the backends.

A square ``n x n`` single-precision matrix product (``2 n^3`` FLOP) through numpy
(its BLAS: OpenBLAS in the wheels) and through torch (oneDNN/MKL), with one
warm-up and the median of ``repeats`` timed products. The larger of the two is
the ceiling against which achieved FLOP/s are reported.

On a shared machine one measurement catches whatever else runs at that moment;
:class:`GemmProbe` therefore also takes one sample of each library per timing
round of the benchmark (interleaved with the backends), and the ceiling is the
median over all samples.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_ceiling(n: int = 2048, repeats: int = 5, threads: int | None = None, seed: int = 0) -> dict:
    """Measured fp32 GEMM rate.

    Parameters
    ----------
    n : int
        Matrix side (float32 ``(n, n) @ (n, n)``).
    repeats : int
        Timed products per library (after one warm-up); the median is reported.
    threads : int or None
        torch intra-op threads for the measurement (``None``: unchanged).
        numpy's BLAS uses its own thread setting (``OPENBLAS_NUM_THREADS``).

    Returns
    -------
    dict
        ``n``, ``flop`` (``2 n^3``), ``numpy_gflops``, ``torch_gflops``,
        ``ceiling_gflops`` (the larger), ``numpy_blas`` (BLAS name when numpy tells).
    """
    if n < 1 or repeats < 1:
        msg = f"ceiling.py: n and repeats must be >= 1, got {n}, {repeats}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    out = {"n": n, "flop": flop, "repeats": repeats, "statistic": "median"}
    out["numpy_gflops"] = flop / _median_time(lambda: a @ b, repeats) / 1e9
    try:
        import torch
    except ImportError:
        out["torch_gflops"] = None
    else:
        saved = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            out["torch_gflops"] = flop / _median_time(lambda: torch.mm(ta, tb), repeats) / 1e9
            out["torch_threads"] = torch.get_num_threads()
        finally:
            torch.set_num_threads(saved)
    out["ceiling_gflops"] = max(v for v in (out["numpy_gflops"], out["torch_gflops"]) if v is not None)
    try:
        cfg = np.show_config(mode="dicts")
        out["numpy_blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "")
    except (TypeError, AttributeError):
        out["numpy_blas"] = ""
    return out


class GemmProbe:
    """Repeated single GEMM samples, taken between the benchmark's timing rounds.

    Parameters
    ----------
    n : int
        Matrix side (float32 ``(n, n) @ (n, n)``).
    threads : int or None
        torch intra-op threads for the torch sample (``None``: unchanged).
    """

    def __init__(self, n: int = 2048, threads: int | None = None, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.threads = n, threads
        self.a = rng.standard_normal((n, n), dtype=np.float32)
        self.b = rng.standard_normal((n, n), dtype=np.float32)
        self.flop = 2.0 * n**3
        self.samples: dict[str, list[float]] = {"numpy": [], "torch": []}

    def sample(self) -> None:
        """Time one product per library (GFLOP/s appended to :attr:`samples`)."""
        t0 = time.perf_counter()
        _ = self.a @ self.b
        self.samples["numpy"].append(self.flop / (time.perf_counter() - t0) / 1e9)
        try:
            import torch
        except ImportError:
            return
        saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            ta, tb = torch.from_numpy(self.a), torch.from_numpy(self.b)
            t0 = time.perf_counter()
            torch.mm(ta, tb)
            self.samples["torch"].append(self.flop / (time.perf_counter() - t0) / 1e9)
        finally:
            torch.set_num_threads(saved)

    def summary(self, first: dict) -> dict:
        """Merge with :func:`gemm_ceiling`'s result ``first``: medians over every sample, and maxima."""
        out = dict(first)
        for lib in ("numpy", "torch"):
            vals = [v for v in [first.get(f"{lib}_gflops")] + self.samples[lib] if v is not None]
            out[f"{lib}_gflops_samples"] = vals
            out[f"{lib}_gflops"] = statistics.median(vals) if vals else None
            out[f"{lib}_gflops_max"] = max(vals) if vals else None
        out["ceiling_gflops"] = max(v for v in (out["numpy_gflops"], out["torch_gflops"]) if v is not None)
        out["statistic"] = "median over the up-front measurement and one sample per timing round"
        return out
