"""``clumpdet predict``: run the PyTorch reference detector on PNG cutouts.

Minimal by design (the production path is ``clumpdet detect`` on an exported
model): reads RGB PNGs of the preset's input size, runs
:func:`clumpdet.train.predict.predict` and writes one row per detection:
``image det_id label label_id score x1 y1 x2 y2`` with boxes in input pixels,
pixel ``i`` spanning ``[i, i + 1)`` (the model convention, not the §5 catalogue's).
Imports torch at module level: this subcommand needs it, and ``clumpdet``
then names the extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from astropy.table import Table
from PIL import Image

from clumpdet.engine.preprocess import rgb_uint8_to_input
from clumpdet.train.checkpoints import load_model
from clumpdet.train.predict import predict
from clumpdet.train.presets import PRESETS, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``clumpdet predict``."""
    parser.add_argument("images", nargs="+", type=Path, help="RGB PNG cutouts of the preset's input size")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="architecture of a published .pth checkpoint (default popp2024); "
                        "our .safetensors checkpoints carry their own")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="published .pth state dict or our .safetensors (with its .json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output table (format from the extension: .ecsv, .csv, .fits, ...); default stdout")
    parser.add_argument("--final-score-thresh", type=float, default=None,
                        help="override the preset's final score threshold")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def read_png(path: Path, height: int, width: int) -> np.ndarray:
    """Read an RGB PNG as the float32 ``(3, H, W)`` model input; errors name the file."""
    with Image.open(path) as img:
        if img.mode != "RGB":
            msg = f"cli_predict.py: {str(path)!r} is {img.mode}, expected an RGB image"
            raise ValueError(msg)
        rgb = np.asarray(img)
    if rgb.shape[:2] != (height, width):
        msg = f"cli_predict.py: {str(path)!r} is {rgb.shape[0]}x{rgb.shape[1]}, the model takes {height}x{width}"
        raise ValueError(msg)
    return rgb_uint8_to_input(rgb)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    model, preset = load_model(args.checkpoint, None if args.preset is None else get_preset(args.preset))
    model.to(args.device)
    config = preset.postprocess
    if args.final_score_thresh is not None:
        config = dataclasses.replace(config, final_score_thresh=args.final_score_thresh)
    rows: list[tuple] = []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        batch = torch.from_numpy(np.stack([read_png(p, preset.input.height, preset.input.width) for p in paths]))
        for path, det in zip(paths, predict(model, batch, preset, postprocess=config)):
            for i in range(len(det)):
                label = int(det.labels[i])
                rows.append((str(path), i, preset.class_names[label], label, det.scores[i], *det.boxes[i]))
    names = ("image", "det_id", "label", "label_id", "score", "x1", "y1", "x2", "y2")
    dtypes = (str, np.int64, str, np.int64, np.float64, np.float64, np.float64, np.float64, np.float64)
    table = Table(rows=rows or None, names=names, dtype=dtypes)
    table.meta.update({"preset": preset.name, "checkpoint": str(args.checkpoint),
                       "postprocess": dataclasses.asdict(config), "box_convention": "x1 y1 x2 y2, pixel i spans [i, i+1)"})
    if args.out is None:
        table.write(sys.stdout, format="ascii.ecsv")
    else:
        table.write(args.out, overwrite=True)
    print(f"clumpdet predict: {len(args.images)} images, {len(table)} detections", file=sys.stderr)
    return 0
