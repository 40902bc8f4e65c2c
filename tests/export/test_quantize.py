"""INT8 QDQ quantisation of backbone + FPN only, on the small native model (real ORT quantiser)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.engine.parity import match_backends_all
from clumpdet.export.checks import tensorrt_findings
from clumpdet.export.quantize import (
    INT8_NOTE,
    CutoutCalibrationReader,
    backbone_region,
    fpn_outputs,
    nodes_to_quantize,
    quantize_backbone,
)

from .helpers import make_images, run_ort, session

QDQ = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """Eight 128x128 PNG cutouts (uint8 RGB), the engine's input format."""
    out = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(make_images(8, seed=11)):
        rgb = np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(rgb).save(out / f"cal_{i}.png")
    return out


@pytest.fixture(scope="module")
def int8(native, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "native_small.int8.onnx"
    return quantize_backbone(native.path, out, [str(calib_dir)], method="minmax", batch_size=3)


def _meta(path):
    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def test_region_is_backbone_and_fpn(popp, native):
    for exp in (popp, native):
        model = onnx.load(str(exp.path))
        region = backbone_region(model)
        init = {t.name for t in model.graph.initializer}
        for node in model.graph.node:
            weights = [i for i in node.input if i in init and "." in i]
            if any(w.startswith("backbone.") for w in weights):
                assert node.name in region
            if any(not w.startswith("backbone.") for w in weights):  # RPN head, box head, predictor
                assert node.name not in region, node.name
        assert not any(n.op_type in {"NonMaxSuppression", "RoiAlign", "TopK"} for n in model.graph.node
                       if n.name in region)
        producers = {o: n for n in model.graph.node for o in n.output}
        outs = fpn_outputs(model, region)
        # Every FPN output is an FPN 3x3 "layer block" convolution (P2..P5 / P2..P4).
        assert len(outs) == len(exp.preset.anchor_sizes) - 1
        for name in outs:
            node = producers[name]
            assert node.op_type == "Conv" and node.input[1].startswith("backbone.fpn.layer_blocks."), name
        selected = nodes_to_quantize(model)
        assert selected and all(n in region for n in selected)
        # The stem (first weighted node, fed by the image) stays float32 unless asked for.
        stem = next(n for n in model.graph.node if n.op_type == "Conv")
        assert stem.input[1].startswith("backbone.body.")
        assert stem.name not in selected
        assert nodes_to_quantize(model, keep_first_fp32=False) == [stem.name, *selected]


def test_calibration_reader_uses_engine_inputs(native, calib_dir):
    reader = CutoutCalibrationReader([str(calib_dir / "*.png")], _meta(native.path), limit=5, batch_size=2)
    batches = []
    while (b := reader.get_next()) is not None:
        batches.append(b["images"])
    assert [len(b) for b in batches] == [2, 2, 1]
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, 128, 128) for b in batches)
    assert 0.0 <= min(b.min() for b in batches) and max(b.max() for b in batches) <= 1.0
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["images"], batches[0])
    with pytest.raises(ValueError, match="no calibration images"):
        CutoutCalibrationReader([str(calib_dir / "*.fits")], _meta(native.path))


def test_qdq_only_upstream_of_fpn_outputs(native, int8):
    fp32 = onnx.load(str(native.path))
    q = onnx.load(str(int8))
    outs = set(fpn_outputs(fp32))
    producers = {o: n for n in q.graph.node for o in n.output}
    ancestors, stack = set(), [producers[t] for t in outs]
    while stack:
        node = stack.pop()
        if node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(producers[i] for i in node.input if i in producers)
    # The FPN outputs themselves carry one Q -> DQ pair (the int8 conv's output scale).
    boundary_q = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in outs]
    boundary_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in {o for b in boundary_q for o in b.output}]
    allowed = ancestors | {n.name for n in boundary_q + boundary_dq}
    qdq = [n for n in q.graph.node if n.op_type in QDQ]
    assert len(qdq) > 20
    assert [n.name for n in qdq if n.name not in allowed] == []
    # Downstream of the FPN maps (RPN, RoIAlign, box head, decoding, NMS): no Q/DQ at all.
    consumers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen, frontier = set(), [o for n in boundary_dq for o in n.output] + sorted(outs)
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.name not in seen and n.name not in allowed:
                seen.add(n.name)
                frontier.extend(n.output)
    assert any(n.op_type == "NonMaxSuppression" for n in q.graph.node if n.name in seen)
    assert not [n.name for n in q.graph.node if n.name in seen and n.op_type in QDQ]
    # Head weights are the float32 originals, untouched.
    before = {t.name: t for t in fp32.graph.initializer if not t.name.startswith("backbone.")}
    after = {t.name: t for t in q.graph.initializer}
    heads = [k for k in before if k.startswith(("rpn.", "box_head.", "box_predictor."))]
    assert heads
    for name in heads:
        assert after[name].data_type == onnx.TensorProto.FLOAT
        np.testing.assert_array_equal(numpy_helper.to_array(after[name]), numpy_helper.to_array(before[name]))
    # Backbone weights are int8, per output channel.
    conv_w = [t for t in q.graph.initializer if t.name.startswith("backbone.") and t.data_type == onnx.TensorProto.INT8]
    assert conv_w
    scales = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_scale")}
    assert any(v.ndim == 1 and v.size > 1 for v in scales.values())


def test_int8_metadata_and_batches(native, int8):
    meta, meta32 = _meta(int8), _meta(native.path)
    assert INT8_NOTE in meta.exporter and meta.exporter.startswith(meta32.exporter)
    assert dataclasses.replace(meta, exporter=meta32.exporter, opset=meta32.opset) == meta32
    assert meta.opset == 20 and "Gelu-20" in meta.exporter  # ConvNeXt GELUs as ONNX Gelu in the CPU file
    sess = session(int8)
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # batch axis stays symbolic
    images = make_images(3, seed=21)
    ref = run_ort(native.session, images)[0]
    one = [run_ort(sess, images[i : i + 1])[0][0] for i in range(3)]
    three, raw = run_ort(sess, images)
    assert raw[1].shape == (3, meta.postprocess.max_detections, 4)
    # Batch-independent: batch 3 equals three batch-1 runs.
    same = match_backends_all(one, three, iou_thresh=0.999)
    assert same["matched_fraction"] == 1.0 and same["max_score_diff"] <= 1e-5, same
    # Close to float32 at detection level.
    close = match_backends_all(ref, three, iou_thresh=0.9)
    assert close["n_ref"] > 0
    assert close["matched_fraction"] >= 0.8, close
    assert close["max_score_diff"] <= 0.02, close


def test_tensorrt_target_is_symmetric_int8(native, calib_dir, tmp_path):
    out = quantize_backbone(native.path, tmp_path / "trt.int8.onnx", [str(calib_dir)], method="percentile",
                            num_images=4, target="tensorrt")
    q = onnx.load(str(out))
    assert tensorrt_findings(q) == []
    zps = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_zero_point")]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    images = make_images(1, seed=3)
    assert run_ort(session(out), images)[1][1].shape[0] == 1


def test_bad_options(native, calib_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_backbone(native.path, tmp_path / "x.onnx", [str(calib_dir)], method="kl")
    with pytest.raises(ValueError, match="unknown target"):
        quantize_backbone(native.path, tmp_path / "x.onnx", [str(calib_dir)], target="gpu")


def test_also_quantises_the_rpn_conv_and_nothing_after_it(native, calib_dir, tmp_path):
    from clumpdet.export.quantize import RECOMMENDED_ALSO

    model = onnx.load(str(native.path))
    base = nodes_to_quantize(model)
    more = nodes_to_quantize(model, also=RECOMMENDED_ALSO)
    extra = [n for n in model.graph.node if n.name in set(more) - set(base)]
    # the one shared RPN 3x3 conv, once per FPN level; not its 1x1 objectness/box outputs
    assert len(extra) == len(native.preset.anchor_sizes)
    assert all(n.op_type == "Conv" and n.input[1].startswith("rpn.head.conv.") for n in extra)
    out = quantize_backbone(native.path, tmp_path / "rpn.int8.onnx", [str(calib_dir)], batch_size=3,
                            also=RECOMMENDED_ALSO)
    q = onnx.load(str(out))
    kinds = {t.name: t.data_type for t in q.graph.initializer}
    assert any(k.startswith("rpn.head.conv.") and v == onnx.TensorProto.INT8 for k, v in kinds.items())
    assert all(v == onnx.TensorProto.FLOAT for k, v in kinds.items() if k.startswith(("rpn.head.cls_logits",
                                                                                        "rpn.head.bbox_pred")))
    images = make_images(3, seed=21)
    close = match_backends_all(run_ort(native.session, images)[0], run_ort(session(out), images)[0], iou_thresh=0.9)
    assert close["n_ref"] > 0 and close["matched_fraction"] >= 0.8, close


def test_depthwise_convolutions_stay_float32(native):
    model = onnx.load(str(native.path))
    grouped = {n.name for n in model.graph.node
               if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    assert grouped  # ConvNeXt's 7x7 depthwise convolutions
    assert not grouped & set(nodes_to_quantize(model))
    assert grouped <= set(nodes_to_quantize(model, keep_grouped_fp32=False))
