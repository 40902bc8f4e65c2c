"""Exported GELUs in forms onnxruntime runs as one kernel, with unchanged results."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from clumpdet.export.gelu import GELU_OPSET, find_erf_gelus, gelus_to_onnx_gelu, reorder_gelus


def _erf_gelu_model(half: float = 0.5) -> onnx.ModelProto:
    """``y = x * (half * (erf(x / sqrt 2) + 1))``: the exporter's opset-18 form (for half = 0.5)."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
             helper.make_node("Mul", ["x", "h"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("sqrt2", 2**0.5), ("one", 1.0), ("half", half))]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _optimised_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


X = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32) * 3
GELU = torch.nn.functional.gelu(torch.from_numpy(X)).numpy()


def test_reordered_gelu_is_fused_by_onnxruntime_and_equal(tmp_path):
    before, after = _erf_gelu_model(), _erf_gelu_model()
    assert reorder_gelus(after) == 1
    onnx.checker.check_model(after)
    assert "Gelu" not in _optimised_ops(before, tmp_path)
    assert _optimised_ops(after, tmp_path) == ["Gelu"]
    assert [g.fusable_order for g in find_erf_gelus(after.graph)] == [True]
    assert reorder_gelus(after) == 0  # idempotent
    np.testing.assert_allclose(_run(after, X), _run(before, X), rtol=0, atol=1e-6)  # fused kernel: ~1 ulp
    np.testing.assert_allclose(_run(after, X), GELU, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", ["exporter", "fusable"])
def test_onnx_gelu_replaces_either_order(order):
    model = _erf_gelu_model()
    if order == "fusable":
        reorder_gelus(model)
    assert gelus_to_onnx_gelu(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Gelu"]
    assert not model.graph.initializer  # its constants had no other reader
    assert next(o.version for o in model.opset_import if o.domain == "") == GELU_OPSET
    np.testing.assert_allclose(_run(model, X), GELU, rtol=0, atol=1e-6)


def test_other_graphs_untouched():
    model = _erf_gelu_model(half=0.25)
    assert reorder_gelus(model) == 0 and gelus_to_onnx_gelu(model) == 0
    assert next(o.version for o in model.opset_import if o.domain == "") == 18


def test_native_export_has_only_fusable_gelus(native):
    model = onnx.load(str(native.path))
    found = find_erf_gelus(model.graph)
    assert found and all(g.fusable_order for g in found)  # ConvNeXt's MLP GELUs, reordered at export
