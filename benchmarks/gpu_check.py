"""GPU check of the PyTorch reference: CUDA vs CPU parity, then CUDA latency per batch size.

Run as ``python -m benchmarks.gpu_check --checkpoint CKPT --images DIR [--out results.md]`` on a
machine with a CUDA device. Validates first (detections on CUDA matched to the CPU's by IoU, same
label; TF32 is off inside ``predict()``), then times ``predict()`` after a warm-up, median of
repeats with ``torch.cuda.synchronize()``. Optionally also times ``popp2024`` with random weights
(calibrated FrozenBN): speed only, no quality meaning.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clumpdet.engine.metrics import format_markdown_table
from clumpdet.engine.parity import match_backends_all
from clumpdet.engine.preprocess import rgb_uint8_to_input
from clumpdet.train.checkpoints import load_model
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.predict import predict
from clumpdet.train.presets import POPP2024


def load_images(folder: Path, n: int) -> torch.Tensor:
    """``[n, 3, H, W]`` float32 in [0, 1] from the folder's PNGs (repeated if there are fewer)."""
    paths = sorted(folder.glob("*.png"))
    arrays = [rgb_uint8_to_input(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    return torch.from_numpy(np.stack([arrays[i % len(arrays)] for i in range(n)]))


def time_predict(model, images, preset, batch: int, repeats: int) -> dict:
    """Median and p95 ms per image of ``predict()`` on CUDA at one batch size."""
    x = images[:batch].cuda()
    predict(model, x, preset)  # warm-up
    torch.cuda.synchronize()
    per_img = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, x, preset)
        torch.cuda.synchronize()
        per_img.append((time.perf_counter() - t0) * 1000 / batch)
    return {"batch": batch, "ms_per_img_median": statistics.median(per_img),
            "ms_per_img_p95": float(np.percentile(per_img, 95)), "img_per_s": 1000 / statistics.median(per_img)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--popp2024", action="store_true", help="also time popp2024 (random weights)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    lines = [f"# GPU check on {torch.cuda.get_device_name(0)}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}; command: "
             f"`python -m benchmarks.gpu_check {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    model, preset = load_model(args.checkpoint)
    images = load_images(args.images, max(args.batches))
    ref = predict(model, images[:8], preset)
    gpu = predict(model.cuda(), images[:8].cuda(), preset)
    parity = match_backends_all(ref, gpu, iou_thresh=0.99)
    lines += [f"## {preset.name} ({args.checkpoint.name}): CUDA vs CPU parity on 8 images", "",
              format_markdown_table([parity]), "", f"## {preset.name}: CUDA latency of predict()", ""]
    lines.append(format_markdown_table([time_predict(model, images, preset, b, args.repeats) for b in args.batches]))
    if args.popp2024:
        popp = build_model(POPP2024).eval()
        calibrate_frozen_bn(popp, images[:4, :, 100:300, 100:300])
        popp = popp.cuda()
        rows = [time_predict(popp, images, POPP2024, b, max(3, args.repeats // 2)) for b in args.batches if b <= 8]
        lines += ["", "## popp2024 (random weights, calibrated FrozenBN; speed only): CUDA latency", "",
                  format_markdown_table(rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
