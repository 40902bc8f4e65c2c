"""Exported GELUs in forms onnxruntime runs as one kernel.

The dynamo exporter writes ``gelu(x)`` (erf form) at opset 18 as five element-wise
ops, ``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))``, each a pass over the
tensor (native preset: 12% of onnxruntime CPU time).

* :func:`reorder_gelus` (every export) moves the 0.5 onto ``x``,
  ``Mul(Mul(x, 0.5), Add(Erf(Div(x, sqrt 2)), 1))``: the order onnxruntime's
  ``GeluFusion`` recognises. Both orders round identically in float32 (scaling by
  0.5 is exact; onnxruntime's fused kernel then differs by about one ulp); the
  file keeps standard opset-18 ops for every runtime.
* :func:`gelus_to_onnx_gelu` (the CPU int8 copy) replaces each pattern by ONNX's own
  ``Gelu`` (opset 20): in a QDQ graph onnxruntime's fusion does not fire, and the
  native preset's int8 model ran 1.49x -> 1.84x the float32 model with it
  (same detections; one run on 100 simulated cutouts).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper

#: Opset of ONNX's ``Gelu`` operator.
GELU_OPSET = 20


@dataclass(frozen=True)
class _Gelu:
    """One matched GELU: input ``x``, its ``output``, the nodes of the pattern in order."""

    x: str
    output: str
    add: onnx.NodeProto
    half_mul: onnx.NodeProto
    outer: onnx.NodeProto
    nodes: tuple[onnx.NodeProto, ...]
    fusable_order: bool


def _scalar(consts: dict, name: str, value: float) -> bool:
    """Whether initializer ``name`` is the one number ``value`` (to float32 precision)."""
    return name in consts and consts[name].size == 1 and abs(float(consts[name]) - value) <= 1e-6 * abs(value)


def find_erf_gelus(graph: onnx.GraphProto) -> list[_Gelu]:
    """Every ``x * 0.5 * (1 + erf(x / sqrt 2))`` of ``graph`` in either operand order.

    Matches ``Div(x, c) -> Erf -> Add(., 1)`` followed by ``Mul(., 0.5) -> Mul(., x)``
    (the exporter's order) or by ``Mul(., Mul(x, 0.5))`` (the fusable one), where
    every intermediate has a single consumer and the constants are initializers.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def only(name: str, op: str) -> onnx.NodeProto | None:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op else None

    found = []
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        add = only(erf.output[0], "Add")
        if div is None or div.op_type != "Div" or add is None or not _scalar(consts, div.input[1], 2**0.5):
            continue
        x = div.input[0]
        if not _scalar(consts, next((i for i in add.input if i != erf.output[0]), ""), 1.0):
            continue
        mul = only(add.output[0], "Mul")
        if mul is None:
            continue
        other = next((i for i in mul.input if i != add.output[0]), "")
        if _scalar(consts, other, 0.5):  # exporter's order: Mul(0.5, add) then Mul(x, .)
            outer = only(mul.output[0], "Mul")
            if outer is not None and x in outer.input:
                found.append(_Gelu(x, outer.output[0], add, mul, outer, (div, erf, add, mul, outer), False))
        else:  # fusable order: Mul(Mul(x, 0.5), add)
            half = producer.get(other)
            if (half is not None and half.op_type == "Mul" and x in half.input and len(consumers[other]) == 1
                    and _scalar(consts, next((i for i in half.input if i != x), ""), 0.5)):
                found.append(_Gelu(x, mul.output[0], add, half, mul, (div, erf, add, half, mul), True))
    return found


def reorder_gelus(model: onnx.ModelProto) -> int:
    """Put every exporter-order GELU of the main graph in the fusable order, in place; return how many."""
    count = 0
    for g in find_erf_gelus(model.graph):
        if g.fusable_order:
            continue
        half = next(i for i in g.half_mul.input if i != g.add.output[0])
        g.half_mul.input[:] = [g.x, half]  # still after x's producer: the node order stays topological
        g.outer.input[:] = [g.half_mul.output[0], g.add.output[0]]
        count += 1
    return count


def gelus_to_onnx_gelu(model: onnx.ModelProto) -> int:
    """Replace every erf-GELU by one ``Gelu`` node and raise the default-domain opset to 20; return how many.

    The five nodes of each pattern are removed (their constants stay as unused
    initializers only if something else reads them). Nothing is changed when no
    pattern is found.
    """
    found = find_erf_gelus(model.graph)
    if not found:
        return 0
    graph = model.graph
    replace = {id(g.outer): helper.make_node("Gelu", [g.x], [g.output], name=f"{g.nodes[1].name}_gelu")
               for g in found}
    drop = {id(n) for g in found for n in g.nodes}
    kept = [replace.get(id(n), n) for n in graph.node if id(n) not in drop or id(n) in replace]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, GELU_OPSET)
    return len(found)
