"""Training data: crop rule, COCO dataset, Clump Scout adapter, augmentation, splits."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from astropy.table import Table
from PIL import Image

from clumpdet.engine.contracts import InputSpec
from clumpdet.engine.preprocess import rgb_uint8_to_input
from clumpdet.train.data.augment import RandomFlipRotate, hflip, rot90, vflip
from clumpdet.train.data.clumpscout import clumpscout_to_coco, write_coco
from clumpdet.train.data.coco import CocoDetection, load_coco
from clumpdet.train.data.crop import (
    clip_boxes,
    crop_image,
    crop_window,
    from_window_frame,
    to_window_frame,
)
from clumpdet.train.data.splits import split_coco, stratified_split

CLASSES = ("background", "clump", "odd_clump")


# --- crop -------------------------------------------------------------------------------------


def test_crop_window_defaults_and_validation():
    assert crop_window(InputSpec(height=40, width=60, crop=None)) == (0, 0, 60, 40)
    assert crop_window(InputSpec(crop=(100, 100, 200, 200))) == (100, 100, 200, 200)
    with pytest.raises(ValueError, match="does not fit"):
        crop_window(InputSpec(height=400, width=400, crop=(300, 0, 200, 200)))


def test_clip_boxes_keeps_mostly_visible_and_shifts():
    window = (100, 100, 200, 200)
    boxes = np.array(
        [
            [150, 150, 160, 160],  # inside
            [95, 150, 105, 160],  # exactly half inside -> kept, clipped
            [94, 150, 102, 160],  # a quarter inside -> dropped
            [0, 0, 10, 10],  # outside
            [200, 200, 200, 210],  # zero width -> dropped
        ],
        dtype=np.float32,
    )
    labels = np.array([1, 2, 1, 1, 1])
    kept, kept_labels, keep = clip_boxes(boxes, labels, window)
    assert keep.tolist() == [True, True, False, False, False]
    assert kept_labels.tolist() == [1, 2]
    np.testing.assert_array_equal(kept[1], [100, 150, 105, 160])
    shifted = to_window_frame(kept, window)
    np.testing.assert_array_equal(shifted[0], [50, 50, 60, 60])
    np.testing.assert_array_equal(from_window_frame(shifted, window), kept)
    image = np.arange(3 * 400 * 400).reshape(3, 400, 400)
    assert crop_image(image, window).shape == (3, 200, 200)
    assert crop_image(image, window)[0, 0, 0] == image[0, 100, 100]


# --- COCO dataset ----------------------------------------------------------------------------


def _write_png(path, rgb):
    Image.fromarray(rgb, mode="RGB").save(path)


@pytest.fixture
def coco_dir(tmp_path):
    rng = np.random.default_rng(1)
    images = []
    for i in range(3):
        rgb = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
        _write_png(tmp_path / f"im{i}.png", rgb)
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "width": 48, "height": 32})
    coco = {
        "images": images,
        # category ids deliberately unlike the label ids: mapping goes by name
        "categories": [{"id": 7, "name": "odd_clump"}, {"id": 3, "name": "clump"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1.5, 2.0, 4.0, 5.0], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [20, 10, 6, 6], "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [5, 5, 0, 3], "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [5, 5, 3, 3], "iscrowd": 1},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def test_coco_dataset_items_match_engine_preprocessing(coco_dir):
    ds = CocoDetection(coco_dir, CLASSES, image_size=(32, 48))
    assert len(ds) == 3
    image, target = ds[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 48)
    rgb = np.asarray(Image.open(coco_dir / "im0.png").convert("RGB"))
    np.testing.assert_array_equal(image.numpy(), rgb_uint8_to_input(rgb))
    np.testing.assert_array_equal(target["boxes"].numpy(), [[1.5, 2.0, 5.5, 7.0], [20, 10, 26, 16]])
    assert target["labels"].tolist() == [1, 2]
    assert target["labels"].dtype == torch.int64
    assert int(target["image_id"]) == 10
    # zero-width and crowd annotations skipped, empty images kept with [0, 4] boxes
    for index in (1, 2):
        _, empty = ds[index]
        assert tuple(empty["boxes"].shape) == (0, 4) and len(empty["labels"]) == 0
    assert len(CocoDetection(coco_dir, CLASSES, max_images=2)) == 2


def test_coco_dataset_errors(coco_dir):
    with pytest.raises(ValueError, match="preset expects"):
        CocoDetection(coco_dir, CLASSES, image_size=(400, 400))[0]
    with pytest.raises(ValueError, match="not one of the preset's classes"):
        CocoDetection(coco_dir, ("background", "clump"))
    (coco_dir / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO detection file"):
        load_coco(coco_dir / "bad.json")


# --- Clump Scout adapter ----------------------------------------------------------------------


def _box(xc, yc, side=12.0):
    return (xc - side / 2, xc + side / 2, yc - side / 2, yc + side / 2)


def test_clumpscout_filters_and_labels(tmp_path):
    rows = [
        # galaxy, (x1, x2, y1, y2), mean_tool, false_pos_prob, expected
        (1, _box(200 + 0.015 * 400, 200), 0.0, 0.0),  # bulge (within +-0.02) -> dropped
        (1, _box(200 + 0.03 * 400, 200), 0.0, 0.0),  # outside the bulge square -> clump
        (1, _box(200 + 0.015 * 400, 200 + 0.03 * 400), 0.6, 0.0),  # odd by mean_tool
        (2, _box(100, 300), 0.2, 0.8),  # odd by false_pos_prob
        (2, _box(10, 200), 0.0, 0.0),  # centre within 0.05 of the rim -> dropped
        (2, _box(398, 200), 0.0, 0.0),  # leaves the image -> dropped
        (3, (np.nan,) * 4, np.nan, np.nan),  # galaxy without clumps
    ]
    table = Table(
        rows=[(g, *b, m, f) for g, b, m, f in rows],
        names=("zoo_id", "x1", "x2", "y1", "y2", "mean_tool", "false_pos_prob"),
    )
    coco = clumpscout_to_coco(table, galaxy_ids=[1, 2, 3, 4])
    assert [im["galaxy_id"] for im in coco["images"]] == [1, 2, 3, 4]
    assert coco["images"][3]["file_name"] == "4.png"
    assert coco["info"]["dropped_bulge"] == 1 and coco["info"]["dropped_rim"] == 2
    anns = coco["annotations"]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (1, 2), (2, 2)]
    np.testing.assert_allclose(anns[0]["bbox"], [206.0, 194.0, 12.0, 12.0])
    assert coco["categories"] == [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]

    # written to disk, it reads back through the dataset with empty galaxies kept
    path = write_coco(coco, tmp_path / "annotations.json")
    for im in coco["images"]:
        _write_png(tmp_path / im["file_name"], np.zeros((400, 400, 3), dtype=np.uint8))
    ds = CocoDetection(tmp_path, CLASSES, annotations=path.name, image_size=(400, 400))
    assert [len(ds.boxes_labels(i)[1]) for i in range(len(ds))] == [2, 1, 0, 0]
    assert ds.boxes_labels(1)[1].tolist() == [2]


def test_clumpscout_rejects_missing_columns():
    with pytest.raises(ValueError, match="lacks column"):
        clumpscout_to_coco(Table({"zoo_id": [1], "x1": [1.0]}))


# --- augmentation -----------------------------------------------------------------------------


def _bright_box(image: torch.Tensor) -> list[float]:
    rows, cols = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


@pytest.mark.parametrize(("h", "v", "k"), list(itertools.product([0, 1], [0, 1], range(4))))
def test_flips_and_rotations_move_boxes_with_pixels(h, v, k):
    image = torch.zeros(3, 20, 30)
    image[:, 3:7, 18:27] = 1.0  # rows 3-6, cols 18-26
    boxes = torch.tensor([[18.0, 3.0, 27.0, 7.0]])
    if h:
        image, boxes = hflip(image, boxes)
    if v:
        image, boxes = vflip(image, boxes)
    image, boxes = rot90(image, boxes, k)
    assert boxes[0].tolist() == _bright_box(image)
    assert image.shape[-2:] == ((20, 30) if k % 2 == 0 else (30, 20))


def test_random_flip_rotate_is_seeded_and_covers_the_group():
    image = torch.zeros(1, 8, 8)
    image[0, 1, 2] = 1.0
    boxes = torch.tensor([[2.0, 1.0, 3.0, 2.0]])
    aug = RandomFlipRotate()
    views = set()
    for seed in range(64):
        out1, b1 = aug(image, boxes, torch.Generator().manual_seed(seed))
        out2, b2 = aug(image, boxes, torch.Generator().manual_seed(seed))
        assert torch.equal(out1, out2) and torch.equal(b1, b2)
        assert b1[0].tolist() == _bright_box(out1)
        views.add(tuple(b1[0].tolist()))
    assert len(views) == 8  # the pixel visits all 8 images of the square's symmetry group
    empty_img, empty_boxes = aug(image, torch.zeros(0, 4), torch.Generator().manual_seed(0))
    assert tuple(empty_boxes.shape) == (0, 4) and empty_img.shape == image.shape


# --- splits -----------------------------------------------------------------------------------


def test_stratified_split_partitions_and_stratifies():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 8, size=500)
    parts = stratified_split(counts, (0.7, 0.2, 0.1), seed=3)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(500))
    strata = np.minimum(counts, 5)
    for s in np.unique(strata):
        n = int((strata == s).sum())
        for part, frac in zip(parts, (0.7, 0.2, 0.1)):
            got = int((strata[part] == s).sum())
            assert abs(got - frac * n) <= 1, (s, got, frac * n)
    again = stratified_split(counts, (0.7, 0.2, 0.1), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = stratified_split(counts, (0.7, 0.2, 0.1), seed=4)
    assert not np.array_equal(parts[0], other[0])
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(counts, (0.7, 0.2))


def test_split_coco_keeps_annotations_with_their_images(coco_dir):
    coco = load_coco(coco_dir / "annotations.json")
    subsets = split_coco(coco, (0.5, 0.5), names=("train", "val"), seed=0)
    ids = [sorted(int(im["id"]) for im in s["images"]) for s in subsets.values()]
    assert sorted(ids[0] + ids[1]) == [10, 11, 12]
    for s in subsets.values():
        own = {int(im["id"]) for im in s["images"]}
        assert all(int(a["image_id"]) in own for a in s["annotations"])
        assert s["categories"] == coco["categories"]
    assert sum(len(s["annotations"]) for s in subsets.values()) == len(coco["annotations"])


# --- batches ----------------------------------------------------------------------------------


def test_training_batch_crops_shifts_and_filters_like_validation():
    from clumpdet.train.data.batches import training_batch, validation_truth

    window = (16, 16, 64, 64)
    image = torch.rand(3, 96, 96)
    target = {"boxes": torch.tensor([[20.0, 30.0, 28.0, 38.0], [0.0, 0.0, 8.0, 8.0], [76.0, 40.0, 84.0, 48.0]]),
              "labels": torch.tensor([1, 2, 2])}
    images, targets = training_batch([image], [target], window, augment=None, generator=torch.Generator())
    assert torch.equal(images[0], image[:, 16:80, 16:80])
    # the box outside the window is dropped, the one half inside clipped, all shifted by (16, 16)
    np.testing.assert_array_equal(targets[0]["boxes"].numpy(), [[4, 14, 12, 22], [60, 24, 64, 32]])
    assert targets[0]["labels"].tolist() == [1, 2]
    truth = validation_truth([target], window)[0]
    np.testing.assert_array_equal(truth.boxes, [[20, 30, 28, 38], [76, 40, 80, 48]])
    augmented, aug_targets = training_batch([image], [target], window, augment=RandomFlipRotate(),
                                            generator=torch.Generator().manual_seed(5))
    assert augmented[0].shape == (3, 64, 64) and len(aug_targets[0]["boxes"]) == 2
