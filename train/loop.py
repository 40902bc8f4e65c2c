"""The training loop: the Popp et al. (2024) recipe, seeded, resumable, logged.

Recipe (DESIGN §2): Adam, lr 1e-4, weight decay 5e-5, a linear warm-up of the
learning rate over the first epoch (factor ``warmup_start`` -> 1, per
iteration), random flips (and here also 90-degree rotations), batch size 4 by
default; mixed precision only on CUDA: ``torch.autocast`` in bfloat16 where the
GPU supports it (no loss scaling needed), else float16 with a ``GradScaler``
(steps it skips for non-finite gradients are counted in the log). A float16
run of the native preset at batch 16 on an H100 skipped every step, hence
bfloat16 first.

Per epoch it writes to ``run_dir``:

* ``last.safetensors`` + ``last.json`` (:func:`clumpdet.train.checkpoints.save_checkpoint`:
  weights and the full preset), and ``best.*`` when the validation score
  improves (F1 of class-agnostic completeness and purity at the preset's
  ``final_score_thresh``; the lowest training loss when there is no validation set);
  ``epoch_NNN.*`` too with ``keep_epochs``;
* ``train_state.safetensors`` + ``train_state.json``: optimizer tensors and RNG
  states / epoch, scheduler, scaler, optimizer hyper-parameters, best score,
  all as tensors or plain JSON, so resuming never unpickles anything;
* one row of ``log.csv`` (loss parts, throughput, validation completeness and
  purity, COCO AP).

Determinism: the global torch RNG (used by the RPN/RoI samplers) is seeded
once and saved; the shuffle order and the augmentation of epoch ``e`` come
from generators seeded with ``(seed, e)``, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clumpdet.engine.metrics import coco_ap, evaluate
from clumpdet.train.checkpoints import read_state_dict, save_checkpoint
from clumpdet.train.data.augment import RandomFlipRotate
from clumpdet.train.data.batches import collate_list, training_batch, validation_truth
from clumpdet.train.data.crop import crop_window
from clumpdet.train.presets import Preset

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
CSV_FIELDS = (
    "epoch", "lr", "loss", *LOSS_KEYS, "train_images", "train_seconds", "train_images_per_s",
    "skipped_steps", "val_images", "val_seconds", "completeness", "purity", "f1", "completeness_class",
    "purity_class", "AP", "AP50", "AP75", "AR100", "best",
)
STATE_STEM = "train_state"


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train` (defaults: the paper's recipe).

    Parameters
    ----------
    epochs : int
        Total number of epochs (a resumed run continues up to this number).
    batch_size : int
        Images per optimisation step (paper: 4 per GPU).
    lr, weight_decay : float
        Adam hyper-parameters.
    warmup_start : float
        Learning-rate factor of the first iteration; it rises linearly to 1 over the first epoch.
    seed : int
        Seeds model initialisation (by the caller), shuffling, augmentation and samplers.
    augment : bool
        Random flips and 90-degree rotations.
    num_workers : int
        DataLoader worker processes (0 = load in the main process).
    keep_epochs : bool
        Keep a checkpoint of every epoch (``epoch_NNN``), not only ``last`` and ``best``.
    device : str or None
        ``"cuda"``, ``"cpu"``...; ``None`` picks CUDA when present.
    log_every : int
        Iterations between progress lines.
    amp : str
        ``"auto"`` (CUDA: bfloat16 if supported, else float16; CPU: off),
        ``"bf16"``, ``"fp16"`` or ``"off"``. Only ever active on CUDA.
    roi_batch_per_image : int or None
        RoIs sampled per image for the box head's training loss (torchvision's
        ``box_batch_size_per_image``; ``None`` keeps the model's 512, the
        paper's). The box head's cost grows linearly with it; it does not
        change inference or export.
    """

    epochs: int
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 5e-5
    warmup_start: float = 1e-3
    seed: int = 0
    augment: bool = True
    num_workers: int = 0
    keep_epochs: bool = False
    device: str | None = None
    log_every: int = 10
    roi_batch_per_image: int | None = None
    amp: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            msg = f"loop.py: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            raise ValueError(msg)
        if self.roi_batch_per_image is not None and self.roi_batch_per_image < 1:
            msg = f"loop.py: roi_batch_per_image must be >= 1, got {self.roi_batch_per_image}"
            raise ValueError(msg)
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            msg = f"loop.py: amp must be auto, bf16, fp16 or off, got {self.amp!r}"
            raise ValueError(msg)
        if not 0 < self.warmup_start <= 1:
            msg = f"loop.py: warmup_start must lie in (0, 1], got {self.warmup_start}"
            raise ValueError(msg)


class _Warmup:
    """LambdaLR factor: linear from ``start`` to 1 over ``iters`` steps, then 1."""

    def __init__(self, start: float, iters: int) -> None:
        self.start, self.iters = start, max(1, iters)

    def __call__(self, step: int) -> float:
        return 1.0 if step >= self.iters else self.start + (1.0 - self.start) * step / self.iters


def train(
    model: torch.nn.Module,
    preset: Preset,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset | None,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    notes: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (built from ``preset``) and return the CSV rows of the epochs run.

    ``train_set`` / ``val_set`` yield input-frame items as
    :class:`clumpdet.train.data.coco.CocoDetection` does. With ``resume``, the
    model, optimizer, scheduler, scaler, RNG and epoch counter are restored from
    ``run_dir`` and training continues with the next epoch.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = _amp_dtype(config.amp, device)
    window = crop_window(preset.input)
    if config.roi_batch_per_image is not None:
        model.roi_heads.fg_bg_sampler.batch_size_per_image = config.roi_batch_per_image
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    iters = math.ceil(len(train_set) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Warmup(config.warmup_start, iters))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_epoch, best = 0, -math.inf
    if resume:
        start_epoch, best = _load_state(run_dir, model, optimizer, scheduler, scaler, device)
        _trim_csv(run_dir / "log.csv", start_epoch)
        print(f"resumed {run_dir} after epoch {start_epoch}", file=sys.stderr)
    else:
        torch.manual_seed(config.seed)
    aug = RandomFlipRotate() if config.augment else None
    rows = []
    for epoch in range(start_epoch, config.epochs):
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(_train_epoch(model, train_set, window, optimizer, scheduler, scaler, aug,
                                config, epoch, device, amp_dtype))
        row.update(_validate(model, preset, val_set, window, config, device))
        score = row["f1"] if val_set is not None else -row["loss"]
        score = score if math.isfinite(score) else -math.inf
        row["best"] = int(score > best or epoch == 0)
        best = max(best, score)
        metrics = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        extra = {"epoch": epoch + 1, "metrics": metrics, "train_config": dataclasses.asdict(config),
                 **(notes or {})}
        save_checkpoint(model, preset, run_dir / "last", extra=extra)
        if row["best"]:
            save_checkpoint(model, preset, run_dir / "best", extra=extra)
        if config.keep_epochs:
            save_checkpoint(model, preset, run_dir / f"epoch_{epoch + 1:03d}", extra=extra)
        _save_state(run_dir, epoch + 1, best, optimizer, scheduler, scaler)
        _append_csv(run_dir / "log.csv", row)
        rows.append(row)
        print(_summary(row), file=sys.stderr)
    return rows


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; ``None`` means full precision."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _train_epoch(model, dataset, window, optimizer, scheduler, scaler, aug, config, epoch,
                 device, amp_dtype) -> dict[str, float]:
    model.train()
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
        config.seed * 1_000_003 + epoch))
    aug_gen = torch.Generator().manual_seed(config.seed * 1_000_033 + epoch + 7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=order.tolist(),
                                         collate_fn=collate_list, num_workers=config.num_workers)
    sums = dict.fromkeys(("loss", *LOSS_KEYS), 0.0)
    seen, skipped, start, n_iter = 0, 0, time.perf_counter(), len(loader)
    for it, (images, targets) in enumerate(loader, start=1):
        images, targets = training_batch(images, targets, window, augment=aug, generator=aug_gen)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype
              else contextlib.nullcontext()):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss.detach()):
            parts = {k: float(v) for k, v in losses.items()}
            msg = f"loop.py: non-finite loss at epoch {epoch + 1}, iteration {it}: {parts}"
            raise FloatingPointError(msg)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale:
            skipped += 1  # GradScaler found inf/nan gradients and skipped optimizer.step()
        else:
            scheduler.step()
        n = len(images)
        seen += n
        sums["loss"] += float(loss.detach()) * n
        for k in LOSS_KEYS:
            sums[k] += float(losses[k].detach()) * n if k in losses else 0.0
        if it % config.log_every == 0 or it == n_iter:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            end = "\r" if sys.stderr.isatty() and it < n_iter else "\n"
            print(f"epoch {epoch + 1}/{config.epochs} [{it}/{n_iter}] loss {sums['loss'] / seen:.4f} "
                  f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.2f} img/s", end=end, file=sys.stderr)
    seconds = time.perf_counter() - start
    if skipped == n_iter:
        print(f"epoch {epoch + 1}: every step was skipped for non-finite float16 gradients; "
              "train with amp='bf16' or 'off'", file=sys.stderr)
    out = {k: v / max(seen, 1) for k, v in sums.items()}
    out.update(lr=optimizer.param_groups[0]["lr"], train_images=seen, train_seconds=seconds,
               train_images_per_s=seen / max(seconds, 1e-9), skipped_steps=skipped)
    return out


@torch.no_grad()
def _validate(model, preset, dataset, window, config, device) -> dict[str, float]:
    nan = math.nan
    out = dict.fromkeys(("val_images", "val_seconds", "completeness", "purity", "f1",
                         "completeness_class", "purity_class", "AP", "AP50", "AP75", "AR100"), nan)
    if dataset is None or len(dataset) == 0:
        return out
    from clumpdet.train.predict import predict

    start = time.perf_counter()
    model.eval()
    # Keep every detection the chain scores above score_thresh: COCO AP needs the low scores,
    # completeness/purity are then taken at the preset's final_score_thresh.
    chain = dataclasses.replace(preset.postprocess, final_score_thresh=preset.postprocess.score_thresh)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                                         collate_fn=collate_list, num_workers=config.num_workers)
    preds, truths = [], []
    for images, targets in loader:
        preds.extend(predict(model, torch.stack(images).to(device), preset, postprocess=chain))
        truths.extend(validation_truth(targets, window))
    thresh = preset.postprocess.final_score_thresh
    agnostic = evaluate(preds, truths, score_thresh=thresh, n_boot=0)
    aware = evaluate(preds, truths, score_thresh=thresh, class_aware=True, n_boot=0)
    ap = coco_ap(preds, truths, class_names=preset.class_names)
    c, p = agnostic.completeness, agnostic.purity
    out.update(val_images=len(truths), val_seconds=time.perf_counter() - start, completeness=c,
               purity=p, f1=2 * c * p / (c + p) if c + p > 0 else (0.0 if c == c and p == p else nan),
               completeness_class=aware.completeness, purity_class=aware.purity,
               **{k: ap[k] for k in ("AP", "AP50", "AP75", "AR100")})
    model.train()
    return out


# ----------------------------------------------------------------------------- resume state


def _save_state(run_dir: Path, epoch: int, best: float, optimizer, scheduler, scaler) -> None:
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {
        "epoch": epoch,
        "best": best if math.isfinite(best) else None,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_plain_state": plain_state,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "scaler": scaler.state_dict(),
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": _jsonable(random.getstate()),
    }
    tmp = run_dir / f"{STATE_STEM}.tmp.safetensors"
    save_file(tensors, str(tmp))
    tmp.replace(run_dir / f"{STATE_STEM}.safetensors")
    tmp_json = run_dir / f"{STATE_STEM}.tmp.json"
    tmp_json.write_text(json.dumps(meta, indent=1))
    tmp_json.replace(run_dir / f"{STATE_STEM}.json")


def _load_state(run_dir: Path, model, optimizer, scheduler, scaler, device) -> tuple[int, float]:
    meta_path, tensor_path = run_dir / f"{STATE_STEM}.json", run_dir / f"{STATE_STEM}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        msg = f"loop.py: cannot resume: {meta_path} or {tensor_path} is missing (no finished epoch?)"
        raise FileNotFoundError(msg)
    meta = json.loads(meta_path.read_text())
    last_config = json.loads((run_dir / "last.json").read_text())
    if last_config.get("extra", {}).get("epoch") != meta["epoch"]:
        msg = (f"loop.py: {run_dir}/last.json is from epoch {last_config.get('extra', {}).get('epoch')} "
               f"but {meta_path.name} from epoch {meta['epoch']}; the run was interrupted while saving")
        raise ValueError(msg)
    model.load_state_dict(read_state_dict(run_dir / "last.safetensors"), strict=True)
    tensors = load_file(str(tensor_path))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value.to(device) if key != "step" else value
    for idx, extra in meta["optimizer_plain_state"].items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tupled(meta["rng_python"]))
    best = meta["best"] if meta["best"] is not None else -math.inf
    return int(meta["epoch"]), float(best)


def _jsonable(obj: Any) -> Any:
    return [_jsonable(v) for v in obj] if isinstance(obj, (tuple, list)) else obj


def _tupled(obj: Any) -> Any:
    return tuple(_tupled(v) for v in obj) if isinstance(obj, list) else obj


# ----------------------------------------------------------------------------- CSV log


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k, math.nan)) for k in CSV_FIELDS})


def _trim_csv(path: Path, last_epoch: int) -> None:
    """Drop log rows after ``last_epoch`` (an epoch logged but not checkpointed)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= last_epoch]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _summary(row: dict[str, Any]) -> str:
    text = f"epoch {row['epoch']}: loss {row['loss']:.4f} ({row['train_images_per_s']:.2f} img/s)"
    if not (isinstance(row["val_images"], float) and math.isnan(row["val_images"])):
        text += (f"  val completeness {row['completeness']:.3f} purity {row['purity']:.3f} "
                 f"AP50 {row['AP50']:.3f}")
    return text + ("  [best]" if row["best"] else "")
