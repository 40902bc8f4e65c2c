"""The training loop and ``clumpdet train``: runs end to end, checkpoints, logs, resumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clumpdet.engine.cli import main
from clumpdet.engine.contracts import InputSpec
from clumpdet.train.checkpoints import load_model, read_checkpoint_config, read_state_dict
from clumpdet.train.data.coco import CocoDetection
from clumpdet.train.loop import CSV_FIELDS, TrainConfig, _Warmup, train
from clumpdet.train.models import build_model
from clumpdet.train.presets import NATIVE

#: The native architecture on a small input: 96x96 images, central 64x64 window, no resize.
SMALL = NATIVE.with_options(input=InputSpec(height=96, width=96, crop=(16, 16, 64, 64), internal_size=(64, 64)))


def write_blob_set(root, n, size, window, seed=0):
    """A tiny COCO set: noisy images with Gaussian blobs (blue = clump, red = odd_clump), 8x8 boxes.

    Image 0 is always empty; the others hold 0-3 blobs inside ``window`` (x0, y0, w, h).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x0, y0, w, h = window
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    images, anns = [], []
    for i in range(n):
        img = rng.normal(0.08, 0.02, size=(size, size, 3))
        for _ in range(int(rng.integers(1, 4)) if i else 0):
            cx, cy = rng.uniform(x0 + 6, x0 + w - 6), rng.uniform(y0 + 6, y0 + h - 6)
            label = int(rng.integers(1, 3))
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
            img += blob[..., None] * (np.array([0.3, 0.5, 1.0]) if label == 1 else np.array([1.0, 0.3, 0.2]))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label,
                         "bbox": [cx - 4, cy - 4, 8.0, 8.0], "area": 64.0, "iscrowd": 0})
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / f"img{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"img{i:03d}.png", "width": size, "height": size})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_warmup_is_linear_over_the_first_epoch():
    warm = _Warmup(0.001, 4)
    assert [warm(s) for s in range(6)] == pytest.approx([0.001, 0.25075, 0.5005, 0.75025, 1.0, 1.0])
    with pytest.raises(ValueError, match="epochs and batch_size"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(epochs=1, amp="fp8")


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    data = write_blob_set(tmp_path / "data", 4, 96, SMALL.input.crop)
    ds = CocoDetection(data, SMALL.class_names, image_size=(96, 96))
    # on the CPU: CUDA kernels (RoIAlign backward) are not bit-reproducible
    config = TrainConfig(epochs=2, batch_size=2, seed=3, device="cpu")

    torch.manual_seed(3)
    rows = train(build_model(SMALL), SMALL, ds, ds, tmp_path / "straight", config)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(1e-4)  # warm-up done after the first epoch
    assert all(np.isfinite(r["loss"]) and r["val_images"] == 4 for r in rows)

    torch.manual_seed(3)
    first = TrainConfig(epochs=1, batch_size=2, seed=3, device="cpu")
    train(build_model(SMALL), SMALL, ds, ds, tmp_path / "resumed", first)
    assert [r["epoch"] for r in _rows(tmp_path / "resumed" / "log.csv")] == ["1"]
    torch.manual_seed(99)  # a different init: everything must come from the checkpoint
    more = train(build_model(SMALL), SMALL, ds, ds, tmp_path / "resumed", config, resume=True)
    assert [r["epoch"] for r in more] == [2]

    a = read_state_dict(tmp_path / "straight" / "last.safetensors")
    b = read_state_dict(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    log = _rows(tmp_path / "resumed" / "log.csv")
    assert [r["epoch"] for r in log] == ["1", "2"] and tuple(log[0]) == CSV_FIELDS
    assert float(log[1]["loss"]) == pytest.approx(rows[1]["loss"], rel=1e-4)


@pytest.mark.slow
def test_cli_train_native_one_epoch_then_resume(tmp_path):
    crop = NATIVE.input.crop
    data = write_blob_set(tmp_path / "data", 4, 400, crop, seed=1)
    val = write_blob_set(tmp_path / "val", 2, 400, crop, seed=2)
    run = tmp_path / "run"
    common = ["train", "--preset", "native", "--data", str(data), "--val-data", str(val),
              "--batch-size", "2", "--out", str(run), "--threads", "1"]
    assert main([*common, "--epochs", "1"]) == 0
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json",
                 "train_state.safetensors", "train_state.json", "log.csv"):
        assert (run / name).is_file(), name
    preset, config = read_checkpoint_config(run / "last.json")
    assert preset == NATIVE and config["extra"]["epoch"] == 1
    row = _rows(run / "log.csv")[0]
    assert row["epoch"] == "1" and float(row["train_images"]) == 4 and float(row["val_images"]) == 2
    for key in ("loss", "loss_classifier", "loss_objectness", "completeness", "AP50"):
        assert np.isfinite(float(row[key])), key

    assert main([*common, "--epochs", "1"]) == 2  # refuses to overwrite a run
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    assert [r["epoch"] for r in _rows(run / "log.csv")] == ["1", "2"]
    assert read_checkpoint_config(run / "last.json")[1]["extra"]["epoch"] == 2
    model, loaded = load_model(run / "last.safetensors")
    assert loaded == NATIVE and not model.training


def test_cli_train_resume_needs_a_run(tmp_path, capsys):
    data = write_blob_set(tmp_path / "data", 2, 96, (16, 16, 64, 64))
    code = main(["train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "none"), "--resume"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
