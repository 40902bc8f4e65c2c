"""Exported GELUs are in the order onnxruntime fuses, with unchanged results."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from clumpdet.export.gelu_order import reorder_gelus


def _erf_gelu_model() -> onnx.ModelProto:
    """``y = x * (0.5 * (erf(x / sqrt 2) + 1))``: the exporter's opset-18 form."""
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
             helper.make_node("Mul", ["x", "h"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n)
             for n, v in (("sqrt2", 2**0.5), ("one", 1.0), ("half", 0.5))]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _fused_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def test_reordered_gelu_is_fused_by_onnxruntime_and_equal(tmp_path):
    before = _erf_gelu_model()
    after = _erf_gelu_model()
    assert reorder_gelus(after) == 1
    onnx.checker.check_model(after)
    assert "Gelu" not in _fused_ops(before, tmp_path)
    assert _fused_ops(after, tmp_path) == ["Gelu"]
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32) * 3
    run = {"x": x}
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    plain = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(None, run)[0], ref, rtol=0, atol=1e-6)


def test_other_graphs_untouched():
    model = _erf_gelu_model()
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(0.25, np.float32), "half"))
    assert reorder_gelus(model) == 0


def test_native_export_has_no_unfused_gelu(native):
    model = onnx.load(str(native.path))
    assert any(n.op_type == "Erf" for n in model.graph.node)
    assert reorder_gelus(model) == 0  # export_onnx already put every GELU in the fusable order
