"""ONNX Runtime vs the PyTorch reference ``predict()``: detections, batch sizes, batch-mates, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clumpdet.engine.parity import match_backends_all
from clumpdet.export.onnx_export import export_onnx
from clumpdet.train.predict import predict

from .helpers import make_images, run_ort, session

#: DESIGN §6 / issue 3: matched fraction and score tolerance of detection-level parity.
MIN_MATCHED = 0.995
MAX_SCORE_DIFF = 1e-3


def _assert_parity(ref, got):
    stats = match_backends_all(ref, got, iou_thresh=0.99)
    assert stats["n_ref"] > 0
    assert stats["n_matched"] / stats["n_ref"] >= MIN_MATCHED, stats
    assert stats["matched_fraction"] >= MIN_MATCHED, stats
    assert stats["max_score_diff"] <= MAX_SCORE_DIFF, stats
    return stats


@pytest.mark.parametrize("fixture", ["popp", "native"])
def test_parity_at_every_batch_size(fixture, request):
    exp = request.getfixturevalue(fixture)
    images = make_images(8, seed=7)
    ref = predict(exp.model, images, exp.preset)
    per_batch = {}
    for bs in (1, 2, 3, 8):
        dets = []
        for start in range(0, len(images), bs):
            dets += run_ort(exp.session, images[start : start + bs])[0]
        _assert_parity(ref, dets)
        per_batch[bs] = dets
    # the same image gives the same detections whatever the batch size
    for bs, dets in per_batch.items():
        for a, b in zip(per_batch[1], dets):
            assert len(a) == len(b), bs
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-4)
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)


def test_detections_do_not_depend_on_batch_mates(popp):
    images = make_images(4, seed=11)
    alone = run_ort(popp.session, images[:1])[1]
    blank = torch.zeros_like(images[:1])
    for mates in (images[1:4], blank, torch.cat([blank, images[3:4]])):
        outs = run_ort(popp.session, torch.cat([images[:1], mates]))[1]
        assert outs[0][0] == alone[0][0]
        np.testing.assert_array_equal(outs[3][0], alone[3][0])
        np.testing.assert_allclose(outs[1][0], alone[1][0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(outs[2][0], alone[2][0], rtol=0, atol=1e-6)


def test_outputs_sorted_and_zero_padded(popp):
    _, (num, boxes, scores, labels) = run_ort(popp.session, make_images(3, seed=5))
    k = popp.preset.postprocess.max_detections
    assert num.dtype == np.int64 and labels.dtype == np.int64
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.shape == (3, k, 4) and scores.shape == (3, k) and labels.shape == (3, k)
    for i in range(3):
        n = int(num[i])
        assert 0 < n <= k
        assert np.all(np.diff(scores[i, :n]) <= 0)
        assert np.all(scores[i, :n] >= popp.preset.postprocess.final_score_thresh)
        assert np.all(labels[i, :n] >= 1) and np.all(labels[i, :n] < popp.preset.num_classes)
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()
        # boxes lie inside the crop, in input pixels
        x0, y0, w, h = popp.preset.input.crop
        assert boxes[i, :n, 0].min() >= x0 and boxes[i, :n, 2].max() <= x0 + w
        assert boxes[i, :n, 1].min() >= y0 and boxes[i, :n, 3].max() <= y0 + h


def test_more_candidates_than_k(native):
    """Native small: top 8 of hundreds of candidates, no agnostic NMS, K = 10."""
    images = make_images(3, seed=13)
    ref = predict(native.model, images, native.preset)
    dets, (num, boxes, scores, labels) = run_ort(native.session, images)
    cfg = native.preset.postprocess
    assert all(len(r) == cfg.detections_per_img for r in ref)
    assert np.all(num == cfg.detections_per_img)
    assert not boxes[:, cfg.detections_per_img :].any() and not labels[:, cfg.detections_per_img :].any()
    _assert_parity(ref, dets)


def test_empty_image_gives_no_detections(native, tmp_path):
    """A detector confident that everything is background: num_dets 0 and all-zero padding."""
    model = native.model
    bias = model.roi_heads.box_predictor.cls_score.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[0] += 30.0
        path = export_onnx(model, native.preset, tmp_path / "empty.onnx")
        images = torch.cat([torch.zeros(1, 3, 128, 128), torch.full((1, 3, 128, 128), 0.5), make_images(1, 3)])
        ref = predict(model, images, native.preset)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert all(len(r) == 0 for r in ref)
    _, (num, boxes, scores, labels) = run_ort(session(path), images)
    assert np.all(num == 0)
    assert not boxes.any() and not scores.any() and not labels.any()


@pytest.mark.slow
def test_batch_17_from_the_same_file(popp):
    images = make_images(17, seed=17)
    ref = predict(popp.model, images, popp.preset)
    dets = run_ort(popp.session, images)[0]
    _assert_parity(ref, dets)
