"""TensorRT readiness of an exported ONNX graph, checked without TensorRT.

Rules (DESIGN §3; onnx-tensorrt ``docs/operators.md`` for TensorRT 10.x):

* every node is in the default ONNX domain (no custom ops, no plugins of ours);
* no control flow (``If``, ``Loop``, ``Scan``): data-dependent branches are what
  make torchvision's own export batch-size-specific and unparseable;
* every op is in :data:`TENSORRT_ONNX_OPS`, the ops the TensorRT 10 ONNX parser
  imports (``RoiAlign`` via its built-in ``ROIAlign_TRT`` plugin,
  ``NonMaxSuppression`` via ``INMSLayer``);
* ``TopK``: ``K`` is a constant and ``< 3840`` (TensorRT's TopK limit);
* ``NonMaxSuppression``: ``max_output_boxes_per_class``, ``iou_threshold`` and
  ``score_threshold`` are constants (the parser requires initializers),
  ``max_output_boxes_per_class <= 5000`` and at most 5000 candidate boxes per
  image where the shape is static (INMSLayer's top-K limit);
* the first axis of every graph input is symbolic (one file for every batch size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

#: TensorRT's TopK accepts K < 3840.
TOPK_LIMIT = 3840
#: TensorRT's INMSLayer keeps at most 5000 boxes per image and class.
NMS_LIMIT = 5000

#: ONNX ops parsed by TensorRT 10.x (onnx-tensorrt docs/operators.md, "Y" rows; subset
#: relevant to CNN detectors plus common elementwise/shape ops).
TENSORRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish
    Identity InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax LpNormalization LpPool LRN MatMul Max MaxPool Mean Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize RoiAlign Round
    ScaledTanh ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Where Xor
    """.split()
)
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})


def tensorrt_findings(model: onnx.ModelProto | str | Path) -> list[str]:
    """Every TensorRT-readiness problem of ``model`` (empty list: ready).

    Parameters
    ----------
    model : onnx.ModelProto or path
        The exported model (a path is loaded with its weights).

    Returns
    -------
    list of str
        One human-readable line per problem, naming the node.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    problems: list[str] = []
    for fn in model.functions:
        problems.append(f"local function {fn.domain}::{fn.name} (TensorRT wants a flat graph)")
    constants = _constants(model.graph)
    shapes = _static_shapes(model)
    for node in _all_nodes(model.graph):
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type in _CONTROL_FLOW:
            problems.append(f"{where}: control flow is not allowed")
        elif node.op_type not in TENSORRT_ONNX_OPS:
            problems.append(f"{where}: op not supported by the TensorRT ONNX parser")
        if node.op_type == "TopK":
            problems += _check_topk(node, where, constants)
        if node.op_type == "NonMaxSuppression":
            problems += _check_nms(node, where, constants, shapes)
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            problems.append(f"graph input {inp.name!r}: batch axis is not symbolic ({_dims(inp)})")
    return problems


def check_tensorrt_ready(model: onnx.ModelProto | str | Path) -> None:
    """Raise ``ValueError`` listing every problem found by :func:`tensorrt_findings`."""
    problems = tensorrt_findings(model)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        msg = f"checks.py: the ONNX graph is not TensorRT-ready ({len(problems)} problems):\n  {shown}{more}"
        raise ValueError(msg)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` over the graph and its subgraphs, most frequent first."""
    counts: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_int", "value_float"):
                    values[node.output[0]] = np.array(attr.i if attr.name == "value_int" else attr.f)
                elif attr.name in ("value_ints", "value_floats"):
                    values[node.output[0]] = np.array(attr.ints if attr.name == "value_ints" else attr.floats)
    return values


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    del graph.graph.initializer[:]  # shape inference does not need the weights
    try:
        inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - shapes are an optional refinement of the checks
        return {}
    out = {}
    for value in (*inferred.value_info, *inferred.input, *inferred.output):
        out[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return out


def _dims(value: onnx.ValueInfoProto) -> str:
    return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim) + "]"


def _check_topk(node, where, constants) -> list[str]:
    k = constants.get(node.input[1]) if len(node.input) > 1 else None
    if k is None:
        return [f"{where}: K is not a constant"]
    if int(np.max(k)) >= TOPK_LIMIT:
        return [f"{where}: K = {int(np.max(k))} >= {TOPK_LIMIT}"]
    return []


def _check_nms(node, where, constants, shapes) -> list[str]:
    problems = []
    names = ("max_output_boxes_per_class", "iou_threshold", "score_threshold")
    for i, name in enumerate(names, start=2):
        if len(node.input) <= i or not node.input[i]:
            continue
        if node.input[i] not in constants:
            problems.append(f"{where}: {name} is not a constant")
    if len(node.input) > 2 and node.input[2] in constants:
        max_out = int(np.max(constants[node.input[2]]))
        if max_out > NMS_LIMIT:
            problems.append(f"{where}: max_output_boxes_per_class = {max_out} > {NMS_LIMIT}")
    elif len(node.input) <= 2 or not node.input[2]:
        problems.append(f"{where}: max_output_boxes_per_class is missing (ONNX default 0 keeps nothing)")
    boxes_shape = shapes.get(node.input[0])
    if boxes_shape and len(boxes_shape) == 3 and boxes_shape[1] is not None and boxes_shape[1] > NMS_LIMIT:
        problems.append(f"{where}: {boxes_shape[1]} candidate boxes per image > {NMS_LIMIT}")
    return problems
