"""The reference prediction chain, the FrozenBN calibration and ``clumpdet predict``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from astropy.table import Table
from PIL import Image
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from clumpdet.engine.cli import main
from clumpdet.engine.contracts import PostProcessConfig
from clumpdet.engine.metrics import Detections
from clumpdet.train.checkpoints import save_checkpoint
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.predict import apply_agnostic_chain, predict
from clumpdet.train.presets import NATIVE, POPP2024

torch.set_num_threads(1)

# popp2024's architecture and crop at a small internal size, for speed (R50-FPN at 800² is ~2.5 s/img).
SMALL = POPP2024.with_options(input=dataclasses.replace(POPP2024.input, internal_size=(128, 128)))
ALL = PostProcessConfig(final_score_thresh=0.0, agnostic_nms_iou=None)


# --------------------------------------------------------------------------- the chain on hand-made boxes


def _chain(rows, config):
    boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    scores = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    labels = torch.tensor([r[2] for r in rows], dtype=torch.int64)
    return apply_agnostic_chain(boxes, scores, labels, config)


ROWS = [  # (box, score, label), deliberately unsorted
    ((20.0, 20.0, 30.0, 30.0), 0.40, 2),  # isolated: kept
    ((1.0, 1.0, 11.0, 11.0), 0.80, 2),  # IoU 0.68 with the 0.9 box of the OTHER class: removed by agnostic NMS
    ((0.0, 0.0, 10.0, 10.0), 0.90, 1),
    ((50.0, 50.0, 60.0, 60.0), 0.25, 1),  # isolated but below final_score_thresh 0.3
    ((6.0, 0.0, 16.0, 10.0), 0.70, 1),  # IoU 0.25 with the 0.9 box: survives per-class NMS 0.5, not agnostic 0.2
]


def test_agnostic_nms_removes_overlapping_box_of_another_class():
    boxes, scores, labels = _chain(ROWS, POPP2024.postprocess)
    assert scores.tolist() == pytest.approx([0.9, 0.4])
    assert labels.tolist() == [1, 2]
    assert boxes.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]


def test_chain_without_agnostic_nms_only_sorts_and_thresholds():
    _, scores, labels = _chain(ROWS, PostProcessConfig(agnostic_nms_iou=None, final_score_thresh=0.3))
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4])
    assert labels.tolist() == [1, 2, 1, 2]
    _, scores, _ = _chain(ROWS, PostProcessConfig(agnostic_nms_iou=None, final_score_thresh=0.05))
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4, 0.25])
    # final threshold is inclusive (score >= thresh)
    _, scores, _ = _chain(ROWS, PostProcessConfig(agnostic_nms_iou=None, final_score_thresh=0.4))
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4])


def test_chain_handles_empty_and_rejects_bad_shapes():
    empty = apply_agnostic_chain(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                 POPP2024.postprocess)
    assert [t.shape[0] for t in empty] == [0, 0, 0]
    with pytest.raises(ValueError, match=r"boxes \[P, 4\]"):
        apply_agnostic_chain(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2), POPP2024.postprocess)


# --------------------------------------------------------------------------- end to end on a real model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(5)
    return torch.rand(2, 3, 400, 400)


@pytest.fixture(scope="module")
def model(images):
    torch.manual_seed(6)
    net = build_model(SMALL)
    calibrate_frozen_bn(net, images[:, :, 100:300, 100:300])
    return net.eval()


@pytest.fixture(scope="module")
def everything(model, images):
    """All detections of the per-class chain (final threshold 0, no agnostic NMS)."""
    return predict(model, images, SMALL, postprocess=ALL)


def test_predict_returns_sorted_detections_in_input_pixels(model, images, everything):
    dets = predict(model, images, SMALL)
    assert len(dets) == 2 and all(isinstance(d, Detections) for d in dets)
    for d, full in zip(dets, everything):
        assert len(d) > 0 and d.boxes.shape == (len(d), 4)
        assert np.all(np.diff(d.scores) <= 0)
        assert np.all(d.scores >= SMALL.postprocess.final_score_thresh)
        assert set(np.unique(d.labels)) <= {1, 2}
        # inside the 200x200 crop at (100, 100), in input pixels
        assert d.boxes[:, [0, 1]].min() >= 100 and d.boxes[:, [2, 3]].max() <= 300
        assert np.all(d.boxes[:, 2] > d.boxes[:, 0]) and np.all(d.boxes[:, 3] > d.boxes[:, 1])
        iou = box_iou(torch.from_numpy(d.boxes), torch.from_numpy(d.boxes)).fill_diagonal_(0)
        assert iou.max() <= SMALL.postprocess.agnostic_nms_iou + 1e-6
        assert len(full) <= SMALL.postprocess.detections_per_img and len(full) > len(d)


def test_predict_applies_the_crop_itself(model, images):
    # The same 200x200 pixels placed at (0, 0) and cropped there must give the same boxes, shifted by 100.
    shifted = torch.zeros(1, 3, 400, 400)
    shifted[:, :, :200, :200] = images[:1, :, 100:300, 100:300]
    at_origin = SMALL.with_options(input=dataclasses.replace(SMALL.input, crop=(0, 0, 200, 200)))
    ref = predict(model, images[:1], SMALL, postprocess=ALL)[0]
    moved = predict(model, shifted, at_origin, postprocess=ALL)[0]
    np.testing.assert_allclose(moved.boxes + 100, ref.boxes, atol=1e-4)
    np.testing.assert_allclose(moved.scores, ref.scores, rtol=1e-6)


def test_predict_honours_every_postprocess_field(model, images):
    full = predict(model, images[:1], SMALL, postprocess=ALL)[0]
    # detections_per_img and class_nms_iou are torchvision's; they must follow the config
    few = predict(model, images[:1], SMALL, postprocess=dataclasses.replace(ALL, detections_per_img=5))[0]
    np.testing.assert_allclose(few.scores, full.scores[:5], rtol=1e-6)
    strict = predict(model, images[:1], SMALL, postprocess=dataclasses.replace(ALL, class_nms_iou=0.1))[0]
    for label in np.unique(strict.labels):
        b = torch.from_numpy(strict.boxes[strict.labels == label])
        assert len(b) < 2 or box_iou(b, b).fill_diagonal_(0).max() <= 0.1 + 1e-6
    assert len(strict) < len(full)
    high = predict(model, images[:1], SMALL, postprocess=dataclasses.replace(ALL, score_thresh=float(np.median(full.scores))))[0]
    assert np.all(high.scores > np.median(full.scores)) and 0 < len(high) < len(full)
    # final_score_thresh keeps exactly the rows at or above it
    t = float(full.scores[len(full) // 2])
    cut = predict(model, images[:1], SMALL, postprocess=dataclasses.replace(ALL, final_score_thresh=t))[0]
    np.testing.assert_allclose(cut.scores, full.scores[full.scores >= t], rtol=1e-6)
    # the model's own thresholds and mode are restored
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == (0.05, 0.5, 100)
    assert not model.training


def test_predict_results_do_not_depend_on_the_batch(model, images, everything):
    alone = predict(model, images[1:], SMALL, postprocess=ALL)[0]
    np.testing.assert_allclose(alone.boxes, everything[1].boxes, atol=1e-3)
    np.testing.assert_allclose(alone.scores, everything[1].scores, rtol=1e-4)
    assert predict(model, images[:0], SMALL) == []


def test_predict_rejects_inputs_it_would_misread(model, images):
    with pytest.raises(ValueError, match=r"takes images \[N, 3, 400, 400\]"):
        predict(model, images[:, :, 100:300, 100:300], SMALL)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict(model, images * 255, SMALL)
    with pytest.raises(ValueError, match="float32"):
        predict(model, images.double(), SMALL)


def test_predict_with_native_preset():
    torch.manual_seed(7)
    net = build_model(NATIVE)
    dets = predict(net, torch.rand(1, 3, 400, 400), NATIVE, postprocess=ALL)
    assert len(dets) == 1 and 0 < len(dets[0]) <= NATIVE.postprocess.detections_per_img
    assert dets[0].boxes.min() >= 100 and dets[0].boxes.max() <= 300


def test_calibrate_frozen_bn_desaturates_random_weights(images):
    crops = images[:1, :, 100:300, 100:300]
    torch.manual_seed(6)
    net = build_model(SMALL).eval()
    before = predict(net, images[:1], SMALL, postprocess=ALL)[0].scores
    assert before.min() > 0.85  # identity statistics: activations explode, scores saturate

    seen = []

    def keep_output(module, inputs, output):
        seen.append(output.clone())  # clone: the following ReLU works in place

    net.backbone.body.bn1.register_forward_hook(keep_output)
    assert calibrate_frozen_bn(net, crops) == sum(isinstance(m, FrozenBatchNorm2d) for m in net.modules()) == 53
    out = seen[0]  # the first layer's output on the calibration batch is standardised
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(64), atol=1e-3, rtol=0)
    assert not net.training

    after = predict(net, images[:1], SMALL, postprocess=ALL)[0].scores
    assert after.max() < 0.8 and np.ptp(after) > 1e-3 and len(np.unique(after)) > len(after) // 2
    assert calibrate_frozen_bn(build_model(NATIVE), crops) == 0  # ConvNeXt: LayerNorm, nothing to calibrate


# --------------------------------------------------------------------------- clumpdet predict


def test_cli_predict_writes_the_reference_detections(tmp_path, model, images, capsys):
    weights, _ = save_checkpoint(model, SMALL, tmp_path / "small")
    pngs = []
    rgb = (np.random.default_rng(8).random((2, 400, 400, 3)) * 255).astype(np.uint8)
    for i, arr in enumerate(rgb):
        pngs.append(tmp_path / f"cutout{i}.png")
        Image.fromarray(arr).save(pngs[-1])
    out = tmp_path / "dets.ecsv"
    argv = ["predict", "--checkpoint", str(weights), *map(str, pngs), "--out", str(out), "--final-score-thresh", "0.4"]
    assert main(argv) == 0
    table = Table.read(out)
    assert table.colnames == ["image", "det_id", "label", "label_id", "score", "x1", "y1", "x2", "y2"]
    expected = predict(model, torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.float32) / 255), SMALL,
                       postprocess=dataclasses.replace(SMALL.postprocess, final_score_thresh=0.4))
    assert len(table) == sum(len(d) for d in expected) > 0
    first = table[table["image"] == str(pngs[0])]
    np.testing.assert_allclose(first["score"], expected[0].scores, rtol=1e-5)
    np.testing.assert_allclose(np.stack([first[c] for c in ("x1", "y1", "x2", "y2")], 1), expected[0].boxes, atol=1e-3)
    assert set(table["label"]) <= {"clump", "odd_clump"}
    assert "2 images" in capsys.readouterr().err

    small_png = tmp_path / "small.png"
    Image.fromarray(rgb[0, :200, :200]).save(small_png)
    with pytest.raises(ValueError, match="is 200x200, the model takes 400x400"):
        main(["predict", "--checkpoint", str(weights), str(small_png)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu_without_tf32(model, images):
    # No top-k cap and no agnostic NMS: the only ranking boundary is score_thresh.
    config = PostProcessConfig(detections_per_img=1000, max_detections=1000, agnostic_nms_iou=None,
                               final_score_thresh=0.0)
    cpu = predict(model, images, SMALL, postprocess=config)
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        gpu = predict(model.cuda(), images, SMALL, postprocess=config)
    finally:
        model.cpu()
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags
    for a, b in zip(cpu, gpu):
        best, j = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).max(1)
        strong = torch.from_numpy(a.scores > config.score_thresh + 1e-3)
        matched = (best > 0.99) & strong
        assert matched.sum() >= 0.95 * strong.sum()  # RPN top-n ties may swap a proposal or two
        diff = np.abs(a.scores[matched.numpy()] - b.scores[j[matched].numpy()])
        assert np.median(diff) < 1e-4
