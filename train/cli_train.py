"""``clumpdet train``: train a detector preset on COCO data (DESIGN §2).

Example::

    clumpdet train --preset native --data sim/ --epochs 30 --batch-size 4 --out runs/native

``--data`` is a directory with ``annotations.json`` (COCO, images relative to
it), e.g. written by ``clumpdet simulate``. Without ``--val-data`` the images
of ``--data`` are split 70:20:10 (train/val/test, stratified by clumps per
image, seeded; :mod:`clumpdet.train.data.splits`): training uses the first,
per-epoch validation the second, the test part is left untouched; the image
ids of each part are written to ``RUN_DIR/split.json``. ``--resume``
continues ``RUN_DIR`` from its last checkpoint with the preset stored there.
torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``clumpdet train``."""
    parser.add_argument("--preset", default="native", help="preset name (default: native)")
    parser.add_argument("--data", required=True, type=Path, help="COCO training directory")
    parser.add_argument("--val-data", type=Path, help="COCO validation directory (default: split --data)")
    parser.add_argument("--annotations", default="annotations.json", help="annotation file name in each directory")
    parser.add_argument("--split", default="0.7,0.2,0.1",
                        help="train,val,test fractions used when --val-data is absent (default 0.7,0.2,0.1)")
    parser.add_argument("--epochs", type=int, required=True, help="total number of epochs")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (paper: 4)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=5e-5, help="Adam weight decay (default 5e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, split, shuffling, augmentation")
    parser.add_argument("--no-augment", action="store_true", help="disable random flips and rotations")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, log.csv)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--backbone-weights", help="local backbone weights file (default: random init)")
    parser.add_argument("--max-images", type=int, help="use at most N images of each set")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--keep-epochs", action="store_true", help="keep a checkpoint of every epoch")
    parser.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--roi-batch", type=int,
                        help="RoIs sampled per image for the box-head loss (default: torchvision's 512)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision on CUDA (default auto: bf16 if supported, else fp16)")
    parser.add_argument("--log-every", type=int, default=10, help="iterations between progress lines")


def run(args: argparse.Namespace) -> int:
    """Run ``clumpdet train``; returns the exit status."""
    import torch

    from clumpdet.train.checkpoints import read_checkpoint_config
    from clumpdet.train.data.coco import CocoDetection, load_coco
    from clumpdet.train.data.splits import split_coco
    from clumpdet.train.loop import TrainConfig, train
    from clumpdet.train.models import build_model, calibrate_frozen_bn
    from clumpdet.train.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    preset = get_preset(args.preset)
    if args.resume:
        if not (out / "last.json").is_file():
            print(f"clumpdet train: --resume but {out}/last.json does not exist", file=sys.stderr)
            return 2
        preset, _ = read_checkpoint_config(out / "last.json")
        if preset.name != args.preset:
            print(f"clumpdet train: {out} was trained with preset {preset.name!r}, not {args.preset!r}",
                  file=sys.stderr)
            return 2
    elif (out / "last.json").exists():
        print(f"clumpdet train: {out} already holds a run; use --resume or another --out", file=sys.stderr)
        return 2

    coco = load_coco(args.data / args.annotations)
    size = (preset.input.height, preset.input.width)
    if args.val_data is not None:
        train_coco, val_coco = coco, load_coco(args.val_data / args.annotations)
        val_root, split_note = args.val_data, None
    else:
        fractions = tuple(float(f) for f in args.split.split(","))
        parts = split_coco(coco, fractions, seed=args.seed)
        train_coco, val_coco, val_root = parts["train"], parts["val"], args.data
        split_note = {k: [int(im["id"]) for im in v["images"]] for k, v in parts.items()}
    train_set = CocoDetection(args.data, preset.class_names, coco=train_coco, image_size=size,
                              max_images=args.max_images)
    val_set = CocoDetection(val_root, preset.class_names, coco=val_coco, image_size=size,
                            max_images=args.max_images) if val_coco["images"] else None
    if len(train_set) == 0:
        print("clumpdet train: no training images", file=sys.stderr)
        return 2

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, augment=not args.no_augment,
                         num_workers=args.workers, keep_epochs=args.keep_epochs, device=args.device,
                         log_every=args.log_every, roi_batch_per_image=args.roi_batch,
                         amp=args.amp)
    torch.manual_seed(args.seed)
    model = build_model(preset, backbone_weights=None if args.resume else args.backbone_weights)
    if not args.resume and args.backbone_weights is None:
        _calibrate(model, train_set, preset, calibrate_frozen_bn)
    out.mkdir(parents=True, exist_ok=True)
    if split_note is not None:
        split_path = out / "split.json"
        if args.resume and split_path.is_file() and json.loads(split_path.read_text()) != split_note:
            print(f"clumpdet train: the split of {args.data} differs from {split_path}", file=sys.stderr)
            return 2
        split_path.write_text(json.dumps(split_note))
    notes = {"data": str(args.data), "val_data": str(args.val_data or f"{args.data} (split)"),
             "train_images": len(train_set), "val_images": len(val_set) if val_set else 0,
             "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"clumpdet train: preset {preset.name}, {len(train_set)} training / "
          f"{notes['val_images']} validation images, {config.epochs} epochs -> {out}", file=sys.stderr)
    start = time.perf_counter()
    train(model, preset, train_set, val_set, out, config, resume=args.resume, notes=notes)
    print(f"clumpdet train: done in {time.perf_counter() - start:.1f} s; log {out / 'log.csv'}",
          file=sys.stderr)
    return 0


def _calibrate(model, dataset, preset, calibrate_frozen_bn) -> None:
    """Data-dependent FrozenBatchNorm statistics for a randomly initialised ResNet (no-op otherwise)."""
    import torch

    from clumpdet.train.data.crop import crop_image, crop_window

    window = crop_window(preset.input)
    images = torch.stack([crop_image(dataset[i][0], window) for i in range(min(8, len(dataset)))])
    calibrate_frozen_bn(model, images)
