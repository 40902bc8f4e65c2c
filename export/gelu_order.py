"""Put exported GELUs in the operand order onnxruntime fuses into one ``Gelu`` kernel.

The dynamo exporter writes ``gelu(x)`` (erf form) at opset 18 as
``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))``. onnxruntime's ``GeluFusion``
recognises ``Mul(Mul(x, 0.5), Add(Erf(Div(x, sqrt 2)), 1))`` but not that order,
so the five element-wise ops each make a pass over the tensor (native preset:
12% of onnxruntime CPU time; 5% once fused). :func:`reorder_gelus` moves the 0.5
from the erf branch onto ``x``. Both orders round identically in float32 (scaling
by 0.5 is exact), the ops stay in the default ONNX domain, and other runtimes
(TensorRT) see the same standard ops.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def reorder_gelus(model: onnx.ModelProto) -> int:
    """Rewrite every erf-GELU of ``model``'s main graph in place; return how many were rewritten.

    A match is ``Div(x, c) -> Erf -> Add(., 1) -> Mul(., 0.5) -> Mul(., x)`` where
    each intermediate has that single consumer and ``0.5`` is an initializer.
    """
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def only(name: str, op: str) -> onnx.NodeProto | None:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op else None

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        add = only(erf.output[0], "Add")
        half_mul = only(add.output[0], "Mul") if add is not None else None
        if div is None or div.op_type != "Div" or half_mul is None:
            continue
        x = div.input[0]
        half = next((i for i in half_mul.input if i != add.output[0]), "")
        outer = only(half_mul.output[0], "Mul")
        if half not in consts or consts[half].size != 1 or float(consts[half]) != 0.5:
            continue
        if outer is None or x not in outer.input:
            continue
        half_mul.input[:] = [x, half]  # still after ``x``'s producer: the node order stays topological
        outer.input[:] = [half_mul.output[0], add.output[0]]
        count += 1
    return count
