"""The machine's fp32 GEMM ceiling, measured in the same run as the backends.

A square ``n x n`` single-precision matrix product (``2 n^3`` FLOP) through numpy
(its BLAS: OpenBLAS in the wheels), through torch (oneDNN/MKL) and through
onnxruntime (MLAS, which also runs the engine's convolutions), with one warm-up
and the median of ``repeats`` timed products. The largest of the three is the
ceiling against which achieved FLOP/s are reported.

The int8 ceiling is a ``MatMulInteger`` (uint8 x int8 ->
int32, ``2 n^3`` integer operations) run by onnxruntime, i.e. the same MLAS
kernels (AVX-512 VNNI where the CPU has it) as the engine's int8 models.

On a shared machine one measurement catches whatever else runs at that moment;
:class:`GemmProbe` therefore also takes one sample of each library per timing
round of the benchmark (interleaved with the backends). The ceiling is the best
sample (the peak, as ``time_best`` takes the fastest run: interference only ever
slows a product down); the medians are reported beside it.
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
        ``ort_gflops``, ``ceiling_gflops`` (the largest), ``int8_gops`` and ``kernel``
        (onnxruntime's int8 GEMM; absent without onnx), ``numpy_blas`` (BLAS name when numpy tells).
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
    try:
        gemms = {"ort_gflops": OrtGemm(n, threads, seed, kind="fp32"), "int8_gops": OrtGemm(n, threads, seed)}
    except ImportError:
        out["ort_gflops"] = None
    else:
        for key, gemm in gemms.items():
            gemm.rate()  # warm-up
            out[key] = statistics.median(gemm.rate() for _ in range(repeats))
        out["kernel"] = "onnxruntime MatMulInteger u8 x s8 -> s32"
    out["ceiling_gflops"] = max(v for v in (out["numpy_gflops"], out["torch_gflops"], out["ort_gflops"])
                                if v is not None)
    try:
        cfg = np.show_config(mode="dicts")
        out["numpy_blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "")
    except (TypeError, AttributeError):
        out["numpy_blas"] = ""
    return out


class OrtGemm:
    """A square GEMM run by onnxruntime (the engine's own MLAS kernels); :meth:`rate` times one product.

    ``kind="int8"``: ``MatMulInteger`` uint8 x int8 -> int32; ``kind="fp32"``: ``MatMul`` float32.
    """

    def __init__(self, n: int = 2048, threads: int | None = None, seed: int = 0, kind: str = "int8") -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(seed)
        self.n = n
        if kind == "int8":
            self.a = rng.integers(0, 256, (n, n), dtype=np.uint8)
            b = rng.integers(-128, 128, (n, n), dtype=np.int8)
            op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        elif kind == "fp32":
            self.a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        else:
            msg = f"ceiling.py: kind must be 'int8' or 'fp32', got {kind!r}"
            raise ValueError(msg)
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], f"{kind}_gemm",
                                  [helper.make_tensor_value_info("a", a_type, [n, n])],
                                  [helper.make_tensor_value_info("y", y_type, [n, n])],
                                  [numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or 0)
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def rate(self) -> float:
        """G(FL)OP/s of one timed product (``2 n^3`` operations)."""
        t0 = time.perf_counter()
        self.session.run(None, {"a": self.a})
        return 2.0 * self.n**3 / (time.perf_counter() - t0) / 1e9


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
        self.samples: dict[str, list[float]] = {"numpy": [], "torch": [], "ort": [], "int8": []}
        try:
            self.ort: OrtGemm | None = OrtGemm(n, threads, seed, kind="fp32")
            self.int8: OrtGemm | None = OrtGemm(n, threads, seed, kind="int8")
        except ImportError:  # onnx missing: numpy and torch only
            self.ort = self.int8 = None

    def sample(self) -> None:
        """Time one product per library and one int8 product (G(FL)OP/s appended to :attr:`samples`)."""
        if self.ort is not None and self.int8 is not None:
            self.samples["ort"].append(self.ort.rate())
            self.samples["int8"].append(self.int8.rate())
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
        for lib in ("numpy", "torch", "ort"):
            vals = [v for v in [first.get(f"{lib}_gflops")] + self.samples[lib] if v is not None]
            out[f"{lib}_gflops_samples"] = vals
            out[f"{lib}_gflops"] = statistics.median(vals) if vals else None
            out[f"{lib}_gflops_max"] = max(vals) if vals else None
        out["ceiling_gflops"] = max(out[f"{lib}_gflops_max"] for lib in ("numpy", "torch", "ort")
                                    if out[f"{lib}_gflops_max"] is not None)
        ints = [v for v in [first.get("int8_gops")] + self.samples["int8"] if v is not None]
        out["int8_gops_samples"] = ints
        out["int8_gops"] = statistics.median(ints) if ints else None
        out["int8_gops_max"] = max(ints) if ints else None
        out["int8_ceiling_gops"] = out["int8_gops_max"]
        out["statistic"] = ("ceiling: best of the up-front measurement and one sample per timing round; "
                            "medians beside it")
        return out
