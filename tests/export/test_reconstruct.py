"""The PyTorch reference rebuilt from an exported file: exact weights, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clumpdet.engine.detector import Detector
from clumpdet.export.onnx_export import export_onnx
from clumpdet.export.reconstruct import reconstruct_model
from clumpdet.train.predict import predict

from .helpers import SMALL_NATIVE, SMALL_POPP, calibrated, make_images

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "clumpdet-native-sim.onnx"


def _trained_like(preset, seed):
    """Every weight distinct (as after training), except one zero bias the exporter drops."""
    model = calibrated(preset, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
        model.backbone.body.stem_0.bias.zero_()
    return model


def test_native_weights_and_preset_come_back_exactly(tmp_path):
    model = _trained_like(SMALL_NATIVE, 3)
    path = export_onnx(model, SMALL_NATIVE, tmp_path / "m.onnx")
    rebuilt, preset = reconstruct_model(path)
    assert preset == SMALL_NATIVE
    want, got = model.state_dict(), rebuilt.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_folded_batchnorm_is_refused_not_guessed(tmp_path):
    model = calibrated(SMALL_POPP, 4)
    path = export_onnx(model, SMALL_POPP, tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="not plain copies.*bn1"):
        reconstruct_model(path)


def test_not_a_clumpdet_export(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="plain.onnx.*missing clumpdet metadata"):
        reconstruct_model(tmp_path / "plain.onnx")


@pytest.mark.slow
def test_bundled_model_rebuilds_its_own_reference():
    """The shipped file and the reference read back from it give the same detections."""
    model, preset = reconstruct_model(BUNDLED)
    assert preset.postprocess.final_score_thresh == pytest.approx(0.85)
    images = make_images(4, seed=5, size=400)
    ref = predict(model, images, preset)
    got = Detector(str(BUNDLED)).detect(images.numpy())
    assert sum(len(r) for r in ref) > 0
    for r, g in zip(ref, got):
        assert len(r) == len(g)
        np.testing.assert_array_equal(r.labels, g.labels)
        np.testing.assert_allclose(r.boxes, g.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(r.scores, g.scores, rtol=0, atol=1e-4)
