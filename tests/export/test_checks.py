"""The TensorRT-readiness checker: passes our exports (see test_onnx_export), fails known-bad graphs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from clumpdet.export.checks import check_tensorrt_ready, tensorrt_findings


def _graph(nodes, inputs, initializers=(), batch="N"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *shape]) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _const(name, value, dtype):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def test_torchvision_legacy_export_fails_the_checks(native, tmp_path):
    """torchvision's own export: If nodes, non-constant TopK/NMS inputs, fixed batch."""
    path = tmp_path / "legacy.onnx"
    with warnings.catch_warnings():
        # the legacy TorchScript exporter of the stock model warns (tracer, deprecation): expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(native.model, ([torch.rand(3, 64, 64)],), str(path), dynamo=False, opset_version=17)
    problems = tensorrt_findings(path)
    assert any("If node" in p and "control flow" in p for p in problems)
    assert any("TopK" in p and "not a constant" in p for p in problems)
    with pytest.raises(ValueError, match="not TensorRT-ready"):
        check_tensorrt_ready(path)


def test_minimal_clean_graph_passes():
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], [("x", [4])])
    assert tensorrt_findings(model) == []


def test_custom_domain_unsupported_op_and_fixed_batch_are_reported():
    nodes = [helper.make_node("Foo", ["x"], ["t"], domain="com.example"), helper.make_node("Unique", ["t"], ["y"])]
    problems = tensorrt_findings(_graph(nodes, [("x", [4])], batch=3))
    assert any("custom domain 'com.example'" in p for p in problems)
    assert any("Unique" in p and "not supported" in p for p in problems)
    assert any("batch axis is not symbolic" in p for p in problems)


def test_topk_and_nms_limits():
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1),
        helper.make_node("NonMaxSuppression", ["b", "s", "m", "iou", "st"], ["sel"]),
        helper.make_node("NonMaxSuppression", ["b", "s", "m_ok", "iou_dyn", "st"], ["sel2"]),
        helper.make_node("Identity", ["v"], ["y"]),
    ]
    inits = [
        _const("k", [4000], np.int64),
        _const("m", [6000], np.int64),
        _const("m_ok", [100], np.int64),
        _const("iou", [0.5], np.float32),
        _const("st", [0.05], np.float32),
    ]
    inputs = [("x", [5000]), ("b", [6000, 4]), ("s", [2, 6000]), ("iou_dyn", [])]
    problems = tensorrt_findings(_graph(nodes, inputs, inits))
    assert any("K = 4000 >= 3840" in p for p in problems)
    assert any("max_output_boxes_per_class = 6000 > 5000" in p for p in problems)
    assert any("iou_threshold is not a constant" in p for p in problems)
    assert any("6000 candidate boxes per image > 5000" in p for p in problems)


def test_control_flow_in_subgraph_is_found():
    branch = helper.make_graph(
        [helper.make_node("Loop", ["", "c"], ["o"], body=helper.make_graph([], "b", [], []))],
        "then", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
    problems = tensorrt_findings(_graph(nodes, [("x", [1])], [_const("c", True, np.bool_)]))
    assert sum("control flow" in p for p in problems) >= 3  # If plus the Loop in each branch
