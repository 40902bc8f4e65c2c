"""GPU timings of the PyTorch reference and of the export wrapper, validated first (``benchmarks/gpu.sh``).

For each model (the bundled ``native`` model's checkpoint, and ``popp2024`` with
random calibrated weights: speed only), on one CUDA device, in one run:

``torch-eager-fp32``
    :func:`clumpdet.train.predict.predict` with TF32 off: the parity reference on CUDA.
``torch-eager-tf32``
    The same with TF32 convolutions and matmuls switched on.
``torch-fp16-backbone``
    The backbone + FPN under ``torch.autocast(float16)``, its maps cast back to
    float32; heads, box decoding and NMS in float32 (DESIGN §3).
``torch-compile-backbone``
    The backbone + FPN through ``torch.compile(dynamic=True)`` (one compile for
    every batch size; the compile time is reported separately).
``wrapper-eager-fp32`` / ``wrapper-fp16-backbone``
    :class:`clumpdet.export.wrapper.ExportWrapper`, the fixed-shape graph the
    ONNX file holds, run eagerly on CUDA.
``wrapper-cuda-graph``
    The wrapper captured into a CUDA graph per batch size, where capture works.

Validation (STYLE 11): every variant's detections on the validation images are
matched by IoU to the CPU float32 reference (:func:`clumpdet.engine.parity.match_backends_all`);
the matched fraction is reported beside the timings. A variant that raises gets a
row saying why. Timing: warm-up calls, then ``--repeats`` calls per batch size with
``torch.cuda.synchronize()``, median and p95. A time budget stops the run before
the device lease does: variants not reached get a ``skipped`` row.

``python -m benchmarks.gpu_bench --out RESULTS_DIR [--checkpoint CKPT] [--budget-s 270]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clumpdet.engine.metrics import Detections, format_markdown_table
from clumpdet.engine.parity import match_backends_all
from clumpdet.train.checkpoints import load_model
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.predict import predict, tf32_mode
from clumpdet.train.presets import POPP2024, get_preset

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "clumpdet-native-sim.onnx"
VARIANTS = ("torch-eager-fp32", "torch-eager-tf32", "torch-fp16-backbone", "torch-compile-backbone",
            "wrapper-eager-fp32", "wrapper-fp16-backbone", "wrapper-cuda-graph")
#: Variants that only mean something on a CUDA device.
CUDA_ONLY = frozenset({"torch-eager-tf32", "torch-fp16-backbone", "wrapper-fp16-backbone", "wrapper-cuda-graph"})


def load_images(folder: Path, n: int) -> np.ndarray:
    """``[n, 3, 400, 400]`` float32 in [0, 1] from the folder's PNGs, repeated cyclically if there are fewer."""
    from PIL import Image

    from clumpdet.engine.preprocess import rgb_uint8_to_input

    paths = sorted(folder.glob("*.png"))
    if not paths:
        msg = f"gpu_bench.py: no PNG files in {folder}"
        raise FileNotFoundError(msg)
    arrays = [rgb_uint8_to_input(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    return np.stack([arrays[i % len(arrays)] for i in range(n)])


def native_model(checkpoint: str | None):
    """``(model, preset, source)``: our checkpoint, else the bundled ONNX's weights, else random (flagged)."""
    if checkpoint:
        model, preset = load_model(checkpoint)
        return model, preset, checkpoint
    try:
        from clumpdet.export.reconstruct import reconstruct_model

        model, preset = reconstruct_model(BUNDLED)
        return model, preset, f"{BUNDLED.name} (weights read back from the ONNX)"
    except ValueError as err:
        print(f"gpu_bench: {err}; using random weights for native", file=sys.stderr)
    torch.manual_seed(0)
    return build_model(get_preset("native")).eval(), get_preset("native"), "random weights (speed only)"


class _Fp16Backbone(torch.nn.Module):
    """Backbone + FPN under float16 autocast; the maps handed on in float32."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.inner = backbone
        self.out_channels = backbone.out_channels

    def forward(self, x):
        with torch.autocast("cuda", dtype=torch.float16):
            feats = self.inner(x)
        return type(feats)((k, v.float()) for k, v in feats.items())


def _wrapper_dets(outs, n: int) -> list[Detections]:
    num, boxes, scores, labels = (t.cpu().numpy() for t in outs)
    return [Detections(boxes[i, :num[i]], scores[i, :num[i]], labels[i, :num[i]]) for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_variant(name: str, model, preset):
    """``(call, note)``: ``call(x) -> list[Detections]`` for variant ``name`` (``x`` on the model's device).

    Raises if the variant cannot be built here (e.g. a CUDA-only variant on the CPU).
    """
    import copy

    from clumpdet.export.wrapper import ExportWrapper

    device = next(model.parameters()).device
    if name in CUDA_ONLY and device.type != "cuda":
        msg = f"{name} needs a CUDA device"
        raise RuntimeError(msg)
    if name == "torch-eager-fp32":
        return (lambda x: predict(model, x, preset)), "TF32 off (predict's default on CUDA)"
    if name == "torch-eager-tf32":
        def call(x):
            with tf32_mode(True):
                return predict(model, x, preset, tf32=True)
        return call, "TF32 convolutions and matmuls"
    if name in ("torch-fp16-backbone", "torch-compile-backbone"):
        m = copy.deepcopy(model)
        m.backbone = _Fp16Backbone(m.backbone) if name == "torch-fp16-backbone" else torch.compile(
            m.backbone, dynamic=True)
        return (lambda x: predict(m, x, preset)), ("autocast float16 backbone+FPN" if "fp16" in name
                                                   else "torch.compile(backbone, dynamic=True), fp32")
    if name.startswith("wrapper"):
        m = copy.deepcopy(model)
        if name == "wrapper-fp16-backbone":
            m.backbone = _Fp16Backbone(m.backbone)
        wrapper = ExportWrapper(m, preset).to(device).eval()
        if name == "wrapper-cuda-graph":
            return _graph_call(wrapper), "torch.cuda.CUDAGraph per batch size, fp32"

        def run(x):
            with torch.no_grad(), tf32_mode(False):
                return _wrapper_dets(wrapper(x), len(x))
        return run, "fixed-shape export wrapper, eager" + (", fp16 backbone" if "fp16" in name else ", fp32")
    msg = f"gpu_bench.py: unknown variant {name!r}"
    raise ValueError(msg)


def _graph_call(wrapper):
    """Capture ``wrapper`` once per input shape; replay afterwards."""
    graphs: dict = {}

    def call(x):
        key = tuple(x.shape)
        if key not in graphs:
            static = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.no_grad(), tf32_mode(False), torch.cuda.stream(stream):
                for _ in range(2):
                    wrapper(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), tf32_mode(False), torch.cuda.graph(graph):
                outs = wrapper(static)
            graphs[key] = (graph, static, outs)
        graph, static, outs = graphs[key]
        static.copy_(x)
        graph.replay()
        return _wrapper_dets(outs, len(x))
    return call


def time_variant(call, x_all: torch.Tensor, batch: int, repeats: int, warmup: int) -> dict:
    """Median / p95 ms per call and images/s of ``call`` on the first ``batch`` images (device synchronised)."""
    x = x_all[:batch]
    for _ in range(warmup):
        call(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(x)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "ms_per_call_median": 1e3 * med, "ms_per_call_p95": 1e3 * float(np.percentile(times, 95)),
            "ms_per_image": 1e3 * med / batch, "images_per_s": batch / med}


def bench_model(label: str, model, preset, images: np.ndarray, args, deadline: float, *,
                device: str = "cuda", variants=VARIANTS) -> list[dict]:
    """Every variant of one model on ``device``: validate against the CPU fp32 reference, then time.

    ``images``: float32 ``[n, 3, H, W]`` in [0, 1]; ``args`` needs ``validate``, ``batches``,
    ``repeats``, ``warmup``. Returns one row per variant (``status`` ok / unavailable / skipped).
    """
    n_val = min(args.validate, len(images))
    cpu_ref = predict(model, torch.from_numpy(images[:n_val]), preset)
    model = model.to(device).eval()
    x_all = torch.from_numpy(images).to(device)
    rows = []
    for name in variants:
        row = {"model": label, "variant": name}
        if time.perf_counter() > deadline:
            rows.append({**row, "status": "skipped: time budget spent"})
            continue
        try:
            t0 = time.perf_counter()
            call, note = make_variant(name, model, preset)
            got = call(x_all[:n_val])
            first_s = time.perf_counter() - t0
            par = match_backends_all(cpu_ref, got, iou_thresh=0.9)
            row.update(status="ok", note=note, first_call_s=first_s, matched_fraction=par["matched_fraction"],
                       n_ref=par["n_ref"], n_other=par["n_other"], max_score_diff=par["max_score_diff"],
                       timings=[time_variant(call, x_all, b, args.repeats, args.warmup) for b in args.batches])
        except Exception as err:  # noqa: BLE001 - a row saying why, then the next variant
            row["status"] = f"unavailable: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    return rows


def environment() -> dict:
    """GPU name, versions and the command line."""
    return {"gpu": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "command": " ".join(sys.argv)}


def markdown(result: dict) -> str:
    """The report as Markdown: one table row per model, variant and batch size."""
    env = result["environment"]
    lines = [f"# GPU benchmark on {env['gpu']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; command `{env['command']}`; "
             f"wall {result['wall_s']:.0f} s", ""]
    lines += [f"- {k}: {v}" for k, v in result["models"].items()] + [""]
    table = []
    for r in result["rows"]:
        base = {"model": r["model"], "variant": r["variant"], "status": r["status"],
                "matched vs CPU fp32": r.get("matched_fraction", "")}
        for t in r.get("timings") or [{}]:
            table.append({**base, "batch": t.get("batch", ""), "ms/img": t.get("ms_per_image", ""),
                          "ms/call p95": t.get("ms_per_call_p95", ""), "img/s": t.get("images_per_s", "")})
    return "\n".join(lines) + format_markdown_table(table) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 without a CUDA device."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--checkpoint", default=None, help="native checkpoint (default: the bundled ONNX's weights)")
    parser.add_argument("--images", type=Path, default=REPO / "examples" / "cutouts")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--validate", type=int, default=8, help="images matched against the CPU reference")
    parser.add_argument("--no-popp2024", action="store_true")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting variants after this long")
    parser.add_argument("--name", default="gpu_bench")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    images = load_images(args.images, max(args.batches + [args.validate]))
    model, preset, source = native_model(args.checkpoint)
    models = {"native": source}
    rows = bench_model("native", model, preset, images, args, deadline)
    if not args.no_popp2024:
        torch.manual_seed(0)
        popp = build_model(POPP2024).eval()
        calibrate_frozen_bn(popp, torch.from_numpy(images[:4, :, 100:300, 100:300]))
        models["popp2024"] = "random weights, FrozenBN calibrated on 4 images (speed only)"
        rows += bench_model("popp2024", popp, POPP2024, images, args, deadline)
    result = {"environment": environment(), "models": models, "rows": rows, "wall_s": time.perf_counter() - t0,
              "config": {"batches": args.batches, "repeats": args.repeats, "warmup": args.warmup,
                         "validate": args.validate, "budget_s": args.budget_s}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
