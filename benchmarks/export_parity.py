"""Export parity: ONNX Runtime vs the PyTorch reference ``predict()``, per preset × image set × batch.

Validates first, then (``--time``) times. For each preset the model is exported once
(with the preset's chain but ``final_score_thresh = 0.05``, so parity covers every
detection with score >= 0.05) and run at each batch size from that one file.

Image sets (400x400 RGB in [0, 1]):

* ``hubble``: crops of ``skimage.data.hubble_deep_field()`` (872x1000 RGB, shipped in
  scikit-image; NASA image, public domain per its docstring) on a regular grid,
  zoomed 2x with bilinear interpolation so the crops' galaxies are resolved;
* ``synthetic``: the PNGs under ``--synthetic DIR`` (``clumpdet simulate --out DIR``).

Without ``--checkpoint`` the models have random weights with data-calibrated
FrozenBatchNorm statistics (``calibrate_frozen_bn``), which makes scores vary but
says nothing about detection quality.

Usage::

    python benchmarks/export_parity.py --presets popp2024 native --n-hubble 8 \\
        --batch-sizes 1 3 8 [--synthetic DIR] [--checkpoint CKPT] [--time]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def hubble_images(n: int) -> np.ndarray:
    """``[n, 3, 400, 400]`` float32 in [0, 1]: 200x200 crops of the Hubble deep field, zoomed 2x."""
    import torch
    import torch.nn.functional as F
    from skimage.data import hubble_deep_field

    field = hubble_deep_field().astype(np.float32) / 255.0  # (872, 1000, 3)
    h, w = field.shape[:2]
    ys = np.linspace(0, h - 200, max(1, int(np.ceil(np.sqrt(n)))), dtype=int)
    xs = np.linspace(0, w - 200, max(1, int(np.ceil(n / len(ys)))), dtype=int)
    crops = [field[y : y + 200, x : x + 200] for y in ys for x in xs][:n]
    batch = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    zoomed = F.interpolate(batch, size=(400, 400), mode="bilinear", align_corners=False)
    return zoomed.clamp(0, 1).numpy()


def synthetic_images(directory: str, n: int) -> np.ndarray:
    """The first ``n`` 400x400 PNGs under ``directory`` (sorted), as ``[n, 3, 400, 400]`` float32."""
    from PIL import Image

    from clumpdet.engine.preprocess import rgb_uint8_to_input

    paths = sorted(Path(directory).rglob("*.png"))[:n]
    if not paths:
        msg = f"export_parity.py: no PNG files under {directory!r} (run 'clumpdet simulate --out DIR')"
        raise FileNotFoundError(msg)
    return np.stack([rgb_uint8_to_input(np.asarray(Image.open(p).convert("RGB"))) for p in paths])


def build(preset_name: str, checkpoint: str | None, calib: np.ndarray):
    """The reference model of the preset (loaded, or random with calibrated FrozenBN) in eval mode."""
    import torch

    from clumpdet.train.checkpoints import load_model
    from clumpdet.train.models import build_model, calibrate_frozen_bn
    from clumpdet.train.presets import get_preset

    preset = get_preset(preset_name)
    if checkpoint:
        return load_model(checkpoint, preset)
    torch.manual_seed(0)
    model = build_model(preset)
    x0, y0, cw, ch = preset.input.crop or (0, 0, preset.input.width, preset.input.height)
    calibrate_frozen_bn(model, torch.from_numpy(calib[:4, :, y0 : y0 + ch, x0 : x0 + cw]))
    return model.eval(), preset


def time_best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["popp2024", "native"])
    parser.add_argument("--checkpoint", default=None, help="checkpoint for the (single) preset")
    parser.add_argument("--synthetic", default=None, help="directory of simulated 400x400 PNGs")
    parser.add_argument("--n-hubble", type=int, default=8)
    parser.add_argument("--n-synthetic", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--proposals", type=int, default=None, help="RPN proposals per image (export option)")
    parser.add_argument("--roi-merge", choices=["auto", "canvas", "gather", "where"], default="auto")
    parser.add_argument("--time", action="store_true", help="also time ORT vs eager at batch 1")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out-dir", default=None, help="keep the exported .onnx files here")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch

    from clumpdet.engine.metrics import detections_from_batch, format_markdown_table
    from clumpdet.engine.parity import match_backends_all
    from clumpdet.export.checks import op_counts
    from clumpdet.export.onnx_export import export_onnx
    from clumpdet.train.predict import predict

    print(f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"onnx {onnx.__version__}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {platform.platform()}")
    sets = {"hubble": hubble_images(args.n_hubble)}
    if args.synthetic:
        sets["synthetic"] = synthetic_images(args.synthetic, args.n_synthetic)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="export_parity_"))
    rows, timings = [], []
    for name in args.presets:
        model, preset = build(name, args.checkpoint, sets["hubble"])
        chain = dataclasses.replace(preset.postprocess, final_score_thresh=0.05)
        t0 = time.perf_counter()
        path = export_onnx(model, preset, out_dir / f"{name}.onnx", postprocess=chain, proposals=args.proposals,
                           roi_merge=args.roi_merge)
        export_s = time.perf_counter() - t0
        counts = op_counts(onnx.load(str(path), load_external_data=False))
        print(f"\n{name}: exported in {export_s:.0f} s -> {path} ({path.stat().st_size / 1e6:.1f} MB, "
              f"{sum(counts.values())} nodes) ops {counts}")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for set_name, images in sets.items():
            ref = predict(model, torch.from_numpy(images), preset, postprocess=chain)
            for bs in args.batch_sizes:
                dets = []
                for i in range(0, len(images), bs):
                    dets += detections_from_batch(*sess.run(None, {"images": images[i : i + bs]}))
                s = match_backends_all(ref, dets, iou_thresh=0.99)
                rows.append({"preset": name, "images": set_name, "n_img": len(images), "batch": bs,
                             "n_ref": s["n_ref"], "n_onnx": s["n_other"], "matched": s["matched_fraction"],
                             "max_box_diff_px": s["max_box_diff"], "max_score_diff": s["max_score_diff"]})
        if args.time:
            one = sets["hubble"][:1]
            ort_s = time_best(lambda: sess.run(None, {"images": one}), args.repeat)
            eager_s = time_best(lambda: predict(model, torch.from_numpy(one), preset, postprocess=chain), args.repeat)
            timings.append({"preset": name, "batch": 1, "ort_ms_per_img": 1e3 * ort_s,
                            "torch_eager_ms_per_img": 1e3 * eager_s})
    print("\n" + format_markdown_table(rows))
    if timings:
        print("\n" + format_markdown_table(timings, digits=5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
