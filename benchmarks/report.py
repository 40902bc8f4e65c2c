"""Benchmark report: environment, JSON, Markdown table and plots (matplotlib, Agg backend).

Plots: images/s vs batch size per backend (model-only solid, end-to-end dashed);
completeness vs clump flux fraction per backend, with the ``sep`` baseline beside them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path

from clumpdet.engine.metrics import format_markdown_table


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
                              if f in have)
    except OSError:
        pass
    return []


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict:
    """The machine and library versions (photutils ``print_environment`` style)."""
    import numpy as np
    import onnxruntime as ort

    env = {
        "cpu_model": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
        "load_average_1_5_15": _load(), "gpu": _gpu_name(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                "OPENBLAS_CORETYPE")},
    }
    for mod in ("torch", "torchvision", "onnx", "sep", "timm"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


def _fmt(v, digits: int = 4):
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.{digits}g}")
    return v


def table_rows(result: dict) -> list[dict]:
    """One row per backend and batch size (unavailable backends: one row with the reason)."""
    rows = []
    compare = result["config"].get("compare_preset")
    for be in result["backends"]:
        if be["status"] != "ok":
            rows.append({"backend": be["name"], "parity": be["status"]})
            continue
        if be.get("speed_only"):
            rows += [{"backend": be["name"], "parity": f"speed only ({be['preset']}, random weights)",
                      "batch": t["batch"], "ms/img median": _fmt(t["model_ms_per_image_median"]),
                      "ms/call p95": _fmt(t["model_ms_p95"]), "img/s model": _fmt(t["model_images_per_s"]),
                      "peak RSS MB": _fmt(be.get("peak_rss_bytes", float("nan")) / 1e6)} for t in be["timings"]]
            continue
        par = be["parity"]
        for t in be["timings"]:
            rows.append({
                "backend": be["name"], "parity": par["verdict"], "batch": t["batch"],
                "ms/img median": _fmt(t["model_ms_per_image_median"]), "ms/call p95": _fmt(t["model_ms_p95"]),
                "img/s model": _fmt(t["model_images_per_s"]), "img/s e2e": _fmt(t.get("e2e_images_per_s")),
                "x vs naive": _fmt(t.get("speedup_vs_naive")), "x vs eager": _fmt(t.get("speedup_vs_reference")),
                **({f"x vs {compare} eager b1": _fmt(t.get("speedup_vs_compare"))} if compare else {}),
                "GFLOP/s": _fmt(t.get("achieved_gflops")), "of ceiling": _fmt(t.get("fraction_of_ceiling")),
                "of int8 floor": _fmt(t.get("fraction_of_int8_floor")) if "fraction_of_int8_floor" in t else "",
                "peak RSS MB": _fmt(be.get("peak_rss_bytes", float("nan")) / 1e6),
                "|dC|": _fmt(par.get("abs_delta_completeness")), "|dP|": _fmt(par.get("abs_delta_purity")),
                "det match": _fmt(par["detection"]["matched_fraction"]),
                "C": _fmt(be["quality"]["completeness"]) if be.get("quality") else "",
                "P": _fmt(be["quality"]["purity"]) if be.get("quality") else "",
            })
    return rows


def markdown(result: dict) -> str:
    """The Markdown report: setup, warnings, the main table, FLOPs and ceiling, sep."""
    env, cfg = result["environment"], result["config"]
    lines = [f"# Benchmark `{result['name']}`", ""]
    if cfg["random_weights"]:
        lines += ["> **RANDOM WEIGHTS** (FrozenBN calibrated): completeness/purity columns are meaningless; "
                  "parity and speed are real.", ""]
    lines += [
        f"- command: `{cfg['command']}`",
        f"- machine: {env['cpu_model']}, {env['logical_cpus']} logical CPUs ({', '.join(env['cpu_flags'])}); "
        f"GPU: {env['gpu'] or 'none'}; load average at start {env['load_average_1_5_15']}, "
        f"at end {result.get('load_average_end')}",
        f"- versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"onnxruntime {env['onnxruntime']} ({', '.join(env['ort_providers'])}), onnx {env['onnx']}",
        f"- preset `{cfg['preset']}`, model: {cfg['model_source']}; {cfg['n_images']} images from "
        f"`{cfg['images']}`; batch sizes {cfg['batch_sizes']}, {cfg['repeats']} repeats (interleaved across "
        f"backends) after {cfg['warmup']} warm-up, {cfg['e2e_repeats']} end-to-end repeats; threads {cfg['threads']}",
        f"- parity vs `{result['reference']}`: fp32 needs detection match >= {cfg['det_match_min']} (IoU >= "
        f"{cfg['det_iou']}, same label) and |dC|, |dP| <= {cfg['tol']['fp32']}; int8/fp16 |dC|, |dP| <= "
        f"{cfg['tol']['int8']}. FAIL rows are still timed.",
        "- naive peer: torchvision's legacy ONNX export (dynamo=False, opset 11) at a fixed batch, onnxruntime "
        "CPU; our class-agnostic NMS + final threshold applied after it in numpy.",
        "", format_markdown_table(table_rows(result)), "",
    ]
    fl, ce = result["flops"], result["ceiling"]
    lines += ["## FLOPs per image and the machine's ceiling", "",
              format_markdown_table([{"stage": k, "GFLOP/img": _fmt(fl[k] / 1e9),
                                      "share": _fmt(fl[k] / fl["total"] if fl["total"] else float("nan")),
                                      "ms/img at ceiling": _fmt(1e3 * fl[k] / (ce["ceiling_gflops"] * 1e9))}
                                     for k in ("backbone_fpn", "rpn", "box_head", "postprocess", "total")]),
              "", f"Box head on {fl['proposals']} proposals/img. fp32 GEMM (n={ce['n']}; {ce['statistic']}; "
              f"{len(ce.get('numpy_gflops_samples', []))} samples per library), median / best GFLOP/s: numpy "
              f"{_fmt(ce['numpy_gflops'])} / {_fmt(ce.get('numpy_gflops_max'))}, torch {_fmt(ce['torch_gflops'])} / "
              f"{_fmt(ce.get('torch_gflops_max'))}, onnxruntime {_fmt(ce.get('ort_gflops'))} / "
              f"{_fmt(ce.get('ort_gflops_max'))} -> ceiling {_fmt(ce['ceiling_gflops'])} GFLOP/s; fp32 floor at the "
              f"ceiling: {_fmt(1e3 * fl['total'] / (ce['ceiling_gflops'] * 1e9))} ms/img."]
    if ce.get("int8_ceiling_gops"):
        top = ce["int8_ceiling_gops"]
        floor = (fl["backbone_fpn"] + fl["rpn"]) / top + (fl["box_head"] + fl["postprocess"]) / ce["ceiling_gflops"]
        lines += ["", f"int8 GEMM ({ce.get('kernel', 'MatMulInteger')}, n={ce['n']}), median / best: "
                  f"{_fmt(ce['int8_gops'])} / {_fmt(top)} GOP/s -> int8 ceiling {_fmt(top)} GOP/s, "
                  f"{_fmt(top / ce['ceiling_gflops'])}x the fp32 ceiling; int8 floor with backbone+FPN and RPN at "
                  f"that rate and the rest at the fp32 ceiling: {_fmt(1e3 * floor / 1e9)} ms/img "
                  "('of int8 floor' = floor / measured time)."]
    lines += [""]
    if result.get("sep"):
        s = result["sep"]
        lines += ["## sep baseline (same images)", "",
                  format_markdown_table([{"min S/N": p["min_snr"], "C": _fmt(p["completeness"]),
                                          "P": _fmt(p["purity"])} for p in s["operating_points"]]), ""]
    if any(b.get("precision") == "int8" and b["status"] == "ok" for b in result["backends"]):
        lines += ["int8 rows: 'GFLOP/s' and 'of ceiling' count the same FLOPs against the *fp32* ceiling, so they "
                  "can exceed 1.", ""]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(lines)


def plot(result: dict, out_dir: Path, stem: str) -> list[str]:
    """Write ``<stem>_throughput.png`` and (with truth) ``<stem>_completeness.png``; return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for be in (b for b in result["backends"] if b["status"] == "ok"):
        ts = be["timings"]
        verdict = "speed only" if be.get("speed_only") else be["parity"]["verdict"]
        tag = "" if verdict == "PASS" else f" [{verdict}]"
        line, = ax.plot([t["batch"] for t in ts], [t["model_images_per_s"] for t in ts], "o-",
                        label=f"{be['name']}{tag}")
        e2e = [t.get("e2e_images_per_s") for t in ts]
        if all(v is not None for v in e2e):
            ax.plot([t["batch"] for t in ts], e2e, "s--", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (solid: model only, dashed: end to end)")
    ax.set_title(f"{result['config']['preset']}: throughput ({result['environment']['logical_cpus']} CPUs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / f"{stem}_throughput.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    with_bins = [b for b in result["backends"] if b["status"] == "ok" and b.get("quality")]
    if with_bins:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        series = [(b["name"], b["quality"]["completeness_by_flux_fraction"]) for b in with_bins]
        if result.get("sep"):
            series.append((f"sep (S/N >= {result['sep']['plot_min_snr']:g})", result["sep"]["completeness_by_flux_fraction"]))
        width = 0.8 / len(series)
        for k, (name, bins) in enumerate(series):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(bins))]
            ax.bar(xs, [b["completeness"] if b["n_true"] else 0 for b in bins], width, label=name)
        labels = [f"{100 * b['lo']:g}-{100 * b['hi']:g}%\n(n={b['n_true']})" for b in series[0][1]]
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("clump flux fraction")
        ax.set_ylabel("completeness")
        ax.set_ylim(0, 1.05)
        title = "completeness vs flux fraction"
        if result["config"]["random_weights"]:
            title += " (RANDOM WEIGHTS: meaningless)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"{stem}_completeness.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths


def write_report(result: dict, out_dir: str | Path, name: str) -> dict:
    """Write ``<name>.json``, ``<name>.md`` and the plots under ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(result, out, name)
    result["files"] = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md"), "plots": pngs}
    (out / f"{name}.md").write_text(markdown(result) + "\n")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    return result["files"]


def _json_default(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    msg = f"report.py: cannot serialise {type(v).__name__}"
    raise TypeError(msg)
