"""The export wrapper in eager PyTorch equals the reference ``predict()`` (before any exporter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clumpdet.engine.contracts import InputSpec
from clumpdet.export.wrapper import ExportWrapper
from clumpdet.train.predict import predict

from .helpers import make_images


@pytest.mark.parametrize("fixture", ["popp", "native"])
def test_eager_wrapper_matches_predict(fixture, request):
    exp = request.getfixturevalue(fixture)
    images = make_images(3, seed=21)
    ref = predict(exp.model, images, exp.preset)
    with torch.no_grad():
        num, boxes, scores, labels = ExportWrapper(exp.model, exp.preset)(images)
    for i, r in enumerate(ref):
        n = int(num[i])
        assert n == len(r) > 0
        # same torchvision ops on the same tensors: equal up to NMS's batched-coordinate trick
        np.testing.assert_allclose(boxes[i, :n].numpy(), r.boxes, rtol=0, atol=1e-4)
        np.testing.assert_allclose(scores[i, :n].numpy(), r.scores, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(labels[i, :n].numpy(), r.labels)


def test_wrapper_rejects_training_mode_and_mismatched_preset(popp):
    popp.model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            ExportWrapper(popp.model, popp.preset)
    finally:
        popp.model.eval()
    wrong = popp.preset.with_options(input=InputSpec(height=128, width=128, crop=(32, 32, 64, 64), internal_size=(96, 96)))
    with pytest.raises(ValueError, match="internal_size"):
        ExportWrapper(popp.model, wrong)
    outside = popp.preset.with_options(input=InputSpec(height=128, width=128, crop=(100, 100, 64, 64)))
    with pytest.raises(ValueError, match="crop"):
        ExportWrapper(popp.model, outside)


def test_roi_merge_auto_picks_canvas_only_where_exact(popp, native):
    assert ExportWrapper(popp.model, popp.preset).roi_align.merge == "gather"  # image fills the P2 map
    canvas = ExportWrapper(native.model, native.preset)
    assert canvas.roi_align.merge == "canvas"  # 80 px image in a 96 px padded frame
    where = ExportWrapper(native.model, native.preset, roi_merge="where")
    images = make_images(2, seed=4)
    with torch.no_grad():
        features = native.model.backbone(canvas.preprocess(images))
        proposals, _ = canvas.rpn(list(features.values()))
        a = canvas.roi_align(features, proposals)
        b = where.roi_align(features, proposals)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="merge"):
        ExportWrapper(native.model, native.preset, roi_merge="scatter")


@pytest.mark.parametrize("spread", ["all levels", "one level"])
def test_gather_merge_pools_each_roi_once_and_equals_where(popp, spread):
    gather = ExportWrapper(popp.model, popp.preset)
    where = ExportWrapper(popp.model, popp.preset, roi_merge="where")
    images = make_images(2, seed=9)
    with torch.no_grad():
        features = popp.model.backbone(gather.preprocess(images))
        proposals, _ = gather.rpn(list(features.values()))
        if spread == "one level":  # every RoI tiny: the other levels get none (empty RoiAlign calls)
            proposals = torch.cat([proposals[..., :2], proposals[..., :2] + 3.0], dim=-1)
        levels = gather.roi_align.mapper([proposals.reshape(-1, 4)])
        a = gather.roi_align(features, proposals)
        b = where.roi_align(features, proposals)
    # 128 px images never reach P4/P5, so even "all levels" has empty levels (ORT runs them in test_parity)
    assert len(torch.unique(levels)) == (1 if spread == "one level" else 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
