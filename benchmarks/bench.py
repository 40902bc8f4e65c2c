"""``python -m benchmarks.bench``: every backend side by side in one run, validated first, then timed.

Order (STYLE 11): environment; decode the images; build/load the reference and
export the engine and naive ONNX files; start one process per backend; validate
(parity with the reference, quality against truth, the ``sep`` baseline);
measure the machine's fp32 GEMM ceiling and count FLOPs; warm up; time the
model-only calls with repeats *interleaved across backends* (the machine is
shared: noise spreads over all rows alike); time end to end (file decode ->
catalogue written) the same way; read each process's peak RSS; write
``<out>/<name>.json|.md|_*.png``.

Example::

    python -m benchmarks.bench --preset native --checkpoint runs/native-sim/best.safetensors \\
        --data data/sim1000 --images 32 --batch-sizes 1 4 16 --repeats 5 --name native_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.backends import BackendProcess, BackendSpec
from benchmarks.bench_data import N_CALIB, ImageSet, decode_all, load_image_set
from benchmarks.bench_quality import DET_IOU, DET_MATCH_MIN, TOL, parity, quality, sep_quality
from benchmarks.report import environment, write_report
from clumpdet.engine.metrics import Detections

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = "data/sim1000"
#: Simulated when neither ``--data`` nor :data:`DEFAULT_IMAGES` exists: images 0..n-1 of seed 0,
#: i.e. the first images of ``clumpdet simulate --n 1000 --seed 0`` (each image depends on its index only).
FALLBACK_IMAGES = "data/bench_sim_seed0"
#: The reference of ``--preset native`` when no checkpoint is given: the bundled model, read back.
BUNDLED_MODEL = REPO / "models" / "clumpdet-native-sim.onnx"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REFERENCE = "torch-eager"


def _unavailable_rows(models) -> tuple[list[BackendSpec], list[dict]]:
    """Optional backends: specs for those present here, ``unavailable: <reason>`` rows for the rest."""
    import onnxruntime as ort
    import torch

    specs, rows = [], []
    if torch.cuda.is_available():
        specs.append(BackendSpec("torch-eager-cuda", "torch", models.checkpoint, options={"device": "cuda"}))
    else:
        rows.append({"name": "torch-eager-cuda", "status": "unavailable: torch.cuda.is_available() is False"})
    providers = ort.get_available_providers()
    for name, ep in (("engine-ort-cuda", "CUDAExecutionProvider"), ("engine-ort-tensorrt", "TensorrtExecutionProvider")):
        if ep in providers:
            specs.append(BackendSpec(name, "engine", models.engine_onnx, options={"providers": (ep, "CPUExecutionProvider")}))
        else:
            rows.append({"name": name, "status": f"unavailable: {ep} not in this onnxruntime build "
                                                  f"({', '.join(providers)}); install clumpdet[gpu]"})
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        rows.append({"name": "engine-tensorrt-plan", "status": "unavailable: the tensorrt package is not installed"})
    else:
        if not torch.cuda.is_available():
            rows.append({"name": "engine-tensorrt-plan", "status": "unavailable: no CUDA device"})
        else:
            rows.append({"name": "engine-tensorrt-plan", "status": "unavailable: plan building is not wired into "
                                                                   "the harness yet (export/tensorrt_build.py)"})
    return specs, rows


def _int8(models, images: ImageSet, notes: list[str], work: Path, threads: int | None) -> tuple[list[BackendSpec], list[dict]]:
    """The engine int8 row (:func:`clumpdet.export.quantize.quantize_backbone`, CPU target, minmax)."""
    try:
        from clumpdet.export.quantize import RECOMMENDED_ALSO, quantize_backbone
    except ImportError as err:
        return [], [{"name": "engine-ort-int8", "status": f"unavailable: clumpdet.export.quantize not importable ({err})"}]
    calib = images.calib_paths
    if not calib:
        calib = images.paths
        notes.append("int8 calibrated on the benchmark images themselves (the set has no other images)")
    else:
        notes.append(f"int8: backbone+FPN and {', '.join(RECOMMENDED_ALSO)} QDQ, minmax calibration on "
                     f"{len(calib)} other images of the set")
    try:
        out = quantize_backbone(models.engine_onnx, work / "engine_int8.onnx", calib, num_images=len(calib),
                                batch_size=4, target="cpu", also=RECOMMENDED_ALSO)
    except Exception as err:  # noqa: BLE001 - a row, not a crash
        return [], [{"name": "engine-ort-int8", "status": f"unavailable: quantization failed: {type(err).__name__}: {err}"[:300]}]
    return [BackendSpec("engine-ort-int8", "engine", str(out), precision="int8", threads=threads)], []


def _compare_spec(name: str, preset, x: np.ndarray, work: Path, threads: int | None):
    """Speed-only row: another preset's PyTorch reference (random calibrated weights) on the same images.

    Returns ``(spec, None)`` or ``(None, unavailable_row)``. Its detections are not
    compared (another model); it is timed at batch 1 in the same interleaved rounds.
    """
    from benchmarks.bench_models import reference_model
    from clumpdet.train.checkpoints import save_checkpoint
    from clumpdet.train.presets import get_preset

    label = f"{name}-torch-eager"
    other = get_preset(name)
    if (other.input.height, other.input.width) != (preset.input.height, preset.input.width):
        return None, {"name": label, "status": f"unavailable: {name} takes {other.input.height}x{other.input.width} "
                                               f"inputs, {preset.name} {preset.input.height}x{preset.input.width}"}
    model, other = reference_model(other, None, x)
    ckpt, _ = save_checkpoint(model, other, work / f"compare_{name}.safetensors",
                              extra={"source": "random weights, calibrated FrozenBN (speed only)"})
    return BackendSpec(label, "torch", str(ckpt), threads=threads, options={"speed_only": True}), None


def _unpack(packed) -> list[Detections]:
    return [Detections(b, s, lab) for b, s, lab in packed]


def _timing_summary(model_s: list[float], batch: int, e2e_s: list[float], n_e2e: int) -> dict:
    arr = np.asarray(model_s)
    med = float(np.median(arr))
    out = {"batch": batch, "repeats": len(arr), "model_s_per_call": arr.tolist(),
           "model_ms_median": 1e3 * med, "model_ms_p95": 1e3 * float(np.percentile(arr, 95)),
           "model_ms_per_image_median": 1e3 * med / batch, "model_images_per_s": batch / med}
    if e2e_s:
        m = statistics.median(e2e_s)
        out.update(e2e_s=e2e_s, e2e_images=n_e2e, e2e_s_median=m, e2e_images_per_s=n_e2e / m)
    return out


def run_bench(images: ImageSet, preset, *, checkpoint: str | None = None, batch_sizes=(1, 4, 16), repeats: int = 5,
              warmup: int = 1, e2e_repeats: int = 2, threads: int | None = None, naive: bool = True,
              proposals: int | None = None, extra_backends: tuple = (), ceiling_n: int = 2048, n_boot: int = 200,
              command: str = "", work_dir: str | None = None, timeout_s: float = 1800.0,
              compare_preset: str | None = None) -> dict:
    """Run the whole benchmark and return the result dict (:mod:`benchmarks.report` writes it).

    Parameters
    ----------
    images : ImageSet
        The image files, with truth or not.
    preset : Preset or str
        Architecture and contracts (a checkpoint of ours overrides it with its stored preset).
    checkpoint : str, optional
        Ours (``.safetensors``) or a published ``.pth``; ``None``: random calibrated weights (flagged).
    batch_sizes : sequence of int
        Timed batch sizes; the validation pass runs at the largest.
    repeats, warmup, e2e_repeats : int
        Timed model-only calls per backend and batch size; untimed warm-up calls; end-to-end passes.
    threads : int, optional
        Intra-op threads of every backend (``None``: each library's default, i.e. all cores).
    extra_backends : sequence of BackendSpec
        More rows (e.g. another export), compared to the reference like the others.
    compare_preset : str, optional
        Also time that preset's PyTorch reference (random weights, speed only, batch 1)
        in the same rounds, so that the ratio between presets is measured side by side.
    """
    from benchmarks.bench_models import prepare
    from benchmarks.ceiling import GemmProbe, gemm_ceiling
    from benchmarks.flops import count_flops
    from clumpdet.train.presets import get_preset

    t_start = time.perf_counter()
    env = environment()
    preset = get_preset(preset) if isinstance(preset, str) else preset
    batch_sizes = sorted({int(b) for b in batch_sizes})
    tmp = tempfile.TemporaryDirectory(prefix="clumpdet-bench-", dir=work_dir)
    work = Path(tmp.name)
    notes: list[str] = []
    procs: list[BackendProcess] = []
    try:
        x = decode_all(images.paths, preset.input)
        np.save(work / "images.npy", x)
        models = prepare(preset, checkpoint, x, work / "models", batch_sizes, proposals=proposals, naive=naive)
        preset = models.preset
        import onnx

        props = {p.key: p.value for p in onnx.load(models.engine_onnx, load_external_data=False).metadata_props}
        specs = [BackendSpec(REFERENCE, "torch", models.checkpoint, threads=threads),
                 BackendSpec("naive-torchvision-onnx", "naive", models.naive_onnx, threads=threads),
                 BackendSpec("engine-ort-fp32", "engine", models.engine_onnx, threads=threads)]
        if not naive:
            specs.pop(1)
        int8_specs, rows = _int8(models, images, notes, work / "models", threads)
        more, more_rows = _unavailable_rows(models)
        specs += int8_specs + more + [s for s in extra_backends]
        rows += more_rows
        if compare_preset and compare_preset != preset.name:
            spec, row = _compare_spec(compare_preset, preset, x, work / "models", threads)
            specs += [spec] if spec else []
            rows += [row] if row else []
        for s in specs:
            p = BackendProcess(s, props, str(work / "images.npy"), timeout_s=timeout_s)
            procs.append(p)
        live = [p for p in procs if not p.error]
        checked = [p for p in live if not p.spec.options.get("speed_only")]
        results: dict[str, dict] = {p.spec.name: {"name": p.spec.name, "kind": p.spec.kind, "precision": p.spec.precision,
                                                  "status": "ok" if not p.error else f"unavailable: {p.error}"}
                                    for p in procs}
        # 1. validate
        vb = min(max(batch_sizes), len(x))
        dets: dict[str, list[Detections]] = {}
        for p in checked:
            packed, secs = p.call("validate", vb)
            dets[p.spec.name] = _unpack(packed)
            results[p.spec.name]["validation_s"] = secs
        if REFERENCE not in dets:
            msg = f"bench.py: the reference backend failed: {results[REFERENCE]['status']}"
            raise RuntimeError(msg)
        thresh = preset.postprocess.final_score_thresh
        quals = {n: quality(d, images.truths, thresh, n_boot) for n, d in dets.items()} if images.truths else {}
        for p in checked:
            n = p.spec.name
            results[n]["quality"] = quals.get(n)
            results[n]["n_detections"] = int(sum(map(len, dets[n])))
            results[n]["parity"] = parity(dets[REFERENCE], dets[n], p.spec.precision, quals.get(REFERENCE), quals.get(n))
        results[REFERENCE]["parity"]["verdict"] = "reference"
        sep = None
        if images.truths is not None and images.fits_paths:
            sep = sep_quality(images.fits_paths, images.truths, n_boot)
        # 2. the ceiling and FLOPs, in the same run
        first = gemm_ceiling(ceiling_n, repeats=max(3, repeats), threads=threads)
        probe = GemmProbe(ceiling_n, threads=threads)
        flops = count_flops(models.model, preset)
        # 3. warm up, then interleaved repeats (rotate the order each round)
        def timed_batches(p):  # speed-only rows (another preset): batch 1 only
            return [min(batch_sizes)] if p.spec.options.get("speed_only") else batch_sizes

        for p in live:
            for b in timed_batches(p):
                for _ in range(warmup):
                    p.call("model", (b, 0))
        times: dict[tuple[str, int], list[float]] = {(p.spec.name, b): [] for p in live for b in timed_batches(p)}
        consistent = {p.spec.name: 1.0 for p in live}
        for r in range(repeats):
            order = live[r % len(live):] + live[: r % len(live)]
            for b in batch_sizes:
                for p in order:
                    if b not in timed_batches(p):
                        continue
                    dt, frac = p.call("model", (b, (r * b) % len(x)))
                    times[(p.spec.name, b)].append(dt)
                    consistent[p.spec.name] = min(consistent[p.spec.name], 1.0 if frac is None else frac)
            probe.sample()  # the ceiling sees the same machine as the backends
        e2e = {(p.spec.name, b): [] for p in live for b in batch_sizes}
        workers = min(2, os.cpu_count() or 1)
        for r in range(e2e_repeats):
            order = checked[r % len(checked):] + checked[: r % len(checked)]
            for b in batch_sizes:
                for p in order:
                    secs, _ = p.call("e2e", (b, list(images.paths), workers))
                    e2e[(p.spec.name, b)].append(secs)
            probe.sample()
        ceiling = probe.summary(first)
        for p in live:
            n = p.spec.name
            results[n]["peak_rss_bytes"] = p.call("rss")
            results[n]["batch_consistency_min_match"] = consistent[n]
            results[n]["timings"] = [_timing_summary(times[(n, b)], b, e2e[(n, b)], len(images))
                                     for b in timed_batches(p)]
            if p.spec.options.get("speed_only"):
                results[n].update(speed_only=True, preset=compare_preset)
                continue
            # int8 floor: backbone+FPN and RPN at the int8 rate, the rest at the fp32 rate
            int8_floor = ((flops["backbone_fpn"] + flops["rpn"]) / (ceiling["int8_ceiling_gops"] * 1e9)
                          + (flops["total"] - flops["backbone_fpn"] - flops["rpn"]) / (ceiling["ceiling_gflops"] * 1e9)
                          if ceiling.get("int8_ceiling_gops") else None)
            for t in results[n]["timings"]:
                t["achieved_gflops"] = flops["total"] * t["model_images_per_s"] / 1e9
                t["fraction_of_ceiling"] = t["achieved_gflops"] / ceiling["ceiling_gflops"]
                if p.spec.precision == "int8" and int8_floor:
                    t["fraction_of_int8_floor"] = int8_floor * t["model_images_per_s"]
        for n in results:
            for t in results[n].get("timings", []):
                for other, key in (("naive-torchvision-onnx", "speedup_vs_naive"), (REFERENCE, "speedup_vs_reference")):
                    ot = next((u for u in results.get(other, {}).get("timings", []) if u["batch"] == t["batch"]), None)
                    if ot:
                        t[key] = t["model_images_per_s"] / ot["model_images_per_s"]
                slow = results.get(f"{compare_preset}-torch-eager", {}).get("timings")
                if slow and not results[n].get("speed_only"):  # vs the other preset's reference at batch 1
                    t["speedup_vs_compare"] = t["model_images_per_s"] / slow[0]["model_images_per_s"]
    finally:
        for p in procs:
            p.close()
        tmp.cleanup()
    if models.random_weights:
        notes.append("RANDOM WEIGHTS (calibrated FrozenBN): quality columns are meaningless; parity and speed are real.")
    fails = [n for n, r in results.items() if r.get("parity", {}).get("verdict") == "FAIL"]
    if fails:
        notes.append(f"parity FAIL (still timed): {', '.join(fails)}")
    return {
        "name": "", "environment": env, "load_average_end": environment()["load_average_1_5_15"],
        "reference": REFERENCE, "wall_s": time.perf_counter() - t_start,
        "config": {"command": command, "preset": preset.name, "model_source": models.source,
                   "source_sha256": models.source_sha256, "random_weights": models.random_weights,
                   "images": images.name, "n_images": len(images), "has_truth": images.truths is not None,
                   "batch_sizes": batch_sizes, "repeats": repeats, "warmup": warmup, "e2e_repeats": e2e_repeats,
                   "threads": threads or "library default", "proposals": preset.rpn_post_nms_top_n_test,
                   "compare_preset": compare_preset,
                   "tol": TOL, "det_iou": DET_IOU, "det_match_min": DET_MATCH_MIN,
                   "naive_exports": {str(k): (v if v.startswith("unavailable") else os.path.basename(v))
                                     for k, v in models.naive_onnx.items()}},
        "flops": flops, "ceiling": ceiling, "sep": sep,
        "backends": list(results.values()) + rows, "notes": notes,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmarks.bench`` / ``clumpdet bench``."""
    parser.add_argument("--preset", default="native", help="preset name (default native)")
    parser.add_argument("--checkpoint", default=None,
                        help="ours (.safetensors), a published .pth, or an exported .onnx (weights read back); "
                             "default: the bundled model for native, random calibrated weights (flagged) otherwise")
    parser.add_argument("--random-weights", action="store_true", help="random calibrated weights even for native")
    parser.add_argument("--data", default=None,
                        help="'clumpdet simulate' directory, or image files/globs/dirs (default data/sim1000 if "
                             f"present, else {FALLBACK_IMAGES}, simulated on first use)")
    parser.add_argument("--compare-preset", default="popp2024",
                        help="also time this preset's PyTorch reference at batch 1, speed only ('none': skip)")
    parser.add_argument("--truth", default=None, help="COCO JSON truth for user images")
    parser.add_argument("--fits", action="store_true", help="simulated sets: time FITS decoding instead of PNG")
    parser.add_argument("--images", type=int, default=32, help="number of images used (default 32)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per backend and batch (default 7)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--e2e-repeats", type=int, default=2, help="end-to-end passes per backend and batch")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--proposals", type=int, default=None, help="RPN proposals per image (default: preset's)")
    parser.add_argument("--no-naive", action="store_true", help="skip torchvision's legacy export")
    parser.add_argument("--ceiling-n", type=int, default=2048, help="GEMM side for the fp32 ceiling")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for the intervals")
    parser.add_argument("--note", action="append", default=[], help="free-text note for the report (repeatable)")
    parser.add_argument("--name", default=None, help="result file stem (default <preset>_<n>img)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results directory (default benchmarks/results)")


def default_data(n_images: int) -> str:
    """:data:`DEFAULT_IMAGES` if it exists, else :data:`FALLBACK_IMAGES`, simulated if it lacks images."""
    if Path(DEFAULT_IMAGES).is_dir():
        return DEFAULT_IMAGES
    need = n_images + N_CALIB
    ann = Path(FALLBACK_IMAGES) / "annotations.json"
    if not ann.is_file() or len(json.loads(ann.read_text())["images"]) < need:
        from clumpdet.train.simulate import generate

        print(f"bench: simulating {need} cutouts (seed 0) into {FALLBACK_IMAGES}", file=sys.stderr)
        generate(need, 0, FALLBACK_IMAGES, workers=min(2, os.cpu_count() or 1))
    return FALLBACK_IMAGES


def default_checkpoint(preset: str, checkpoint: str | None, random_weights: bool) -> str | None:
    """The checkpoint to use: the one given, else the bundled model for ``native``, else ``None`` (random)."""
    if checkpoint or random_weights:
        return None if random_weights else checkpoint
    if preset != "native" or not BUNDLED_MODEL.is_file():
        return None
    try:  # as the report shows it: relative to where the command runs (a checkout's root)
        return str(BUNDLED_MODEL.relative_to(Path.cwd()))
    except ValueError:
        return str(BUNDLED_MODEL)


def run(args: argparse.Namespace) -> int:
    """Run with parsed options; print the Markdown report; return the exit status."""
    from benchmarks.report import markdown

    data = args.data or default_data(args.images)
    images = load_image_set(data, truth=args.truth, n_images=args.images, use_fits=args.fits)
    command = getattr(args, "command_line", None) or " ".join(shlex.quote(a) for a in sys.argv)
    checkpoint = default_checkpoint(args.preset, args.checkpoint, args.random_weights)
    compare = None if args.compare_preset in ("none", "", args.preset) else args.compare_preset
    result = run_bench(images, args.preset, checkpoint=checkpoint, batch_sizes=args.batch_sizes,
                       repeats=args.repeats, warmup=args.warmup, e2e_repeats=args.e2e_repeats, threads=args.threads,
                       naive=not args.no_naive, proposals=args.proposals, ceiling_n=args.ceiling_n,
                       n_boot=args.n_boot, command=command, compare_preset=compare)
    result["name"] = args.name or f"{result['config']['preset']}_{len(images)}img"
    result["notes"] += list(args.note)
    files = write_report(result, args.out, result["name"])
    print(markdown(result))
    print(f"\nwrote {files['json']}, {files['md']}, {', '.join(files['plots'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
