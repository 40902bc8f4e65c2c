"""Build a TensorRT 10 plan from an exported ONNX file (fp16, or int8 by explicit QDQ quantisation).

UNTESTED against a real TensorRT here: ``tensorrt`` cannot be installed on the
development machines. The builder is written against the documented TensorRT 10
Python API (``Builder``, ``OnnxParser``, ``IBuilderConfig``,
``add_optimization_profile``, ``build_serialized_network``); what *is* tested
without TensorRT is the choice of the fp32-pinned layers (computed on the ONNX
graph, :func:`fp32_pinned_nodes`), their mapping to parsed layer names
(:func:`match_layers`), the ``trtexec`` equivalent and the error when TensorRT is
missing. ``docs/tensorrt.md`` lists what is tested where.

Precision. fp16 (and int8) apply to the feature computation only. Box decoding,
RoIAlign and every NMS run in fp32 with fp32 inputs: anchors plus deltas in input
pixels and NMS's coordinate comparisons lose up to 0.25 px at 400 px in fp16, and
class-offset tricks overflow it. Those layers get ``layer.precision = trt.float32``
and ``set_output_type(i, trt.float32)`` for their float outputs, enforced with
``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``.

INT8. TensorRT >= 10.1 deprecates implicit quantisation (``IInt8EntropyCalibrator2``
with ``BuilderFlag.INT8`` on a float graph); its replacement is explicit
quantisation: an ONNX with ``QuantizeLinear``/``DequantizeLinear`` pairs. So int8
plans are built from :func:`clumpdet.export.quantize.quantize_backbone` with
``target="tensorrt"`` (int8 symmetric, backbone + FPN only, calibrated on the
engine's own cutouts), and no calibrator is used.

The plan carries no ONNX metadata: it is written next to it as ``<plan>.json``,
the ``metadata_props`` dict read by :mod:`clumpdet.engine.tensorrt_backend`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx

from clumpdet.engine.tensorrt_backend import plan_metadata_path

#: Optimisation profile of the dynamic batch axis: (min, opt, max).
BATCH_PROFILE = (1, 8, 64)
PRECISIONS = ("fp16", "int8")
#: Ops whose second input is a learned weight (feature computation).
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Ops always pinned to fp32: box-coordinate consumers.
_ALWAYS_FP32_OPS = frozenset({"RoiAlign", "NonMaxSuppression"})
#: Inputs that select, index or shape rather than carry values into the output: box
#: coordinates reach the features only through these (RoIs, FPN level masks, gathers).
_INDEX_INPUTS = {"RoiAlign": (1, 2), "Where": (0,), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,),
                 "ScatterND": (1,), "ScatterElements": (1,)}
#: Ops whose inputs after the first are shapes, axes, pads, sizes or K.
_SHAPE_ARG_OPS = frozenset({"Reshape", "Expand", "Tile", "Slice", "Pad", "Resize", "Unsqueeze", "Squeeze",
                            "TopK", "Split", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ConstantOfShape"})


def _value_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` whose values (not positions or shapes) flow into its outputs."""
    if node.op_type in _SHAPE_ARG_OPS:
        return list(node.input[:1])
    skip = _INDEX_INPUTS.get(node.op_type, ())
    return [name for i, name in enumerate(node.input) if i not in skip]


class TensorRTUnavailableError(RuntimeError):
    """``tensorrt`` does not import here; the message carries the equivalent ``trtexec`` command."""


def _weight_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers of rank >= 2 and the outputs of DequantizeLinear nodes reading them."""
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2}
    weights |= {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    return weights


def fp32_pinned_nodes(model: onnx.ModelProto) -> list[str]:
    """ONNX nodes that must run in fp32: box decoding, RoIAlign, NMS and everything after them.

    Structure, not names: a node is *feature computation* if it is a weighted op
    (``Conv``/``Gemm``/``MatMul`` whose weight is an initializer, possibly through a
    ``DequantizeLinear``) or an ancestor of one through value edges only: inputs that
    index, select or shape (``RoiAlign``'s ``rois``/``batch_indices``, ``Where``'s
    condition, gather indices, shape arguments) do not count. Every other node that
    depends on the graph input is box/score post-processing (anchor decoding,
    TopK, NMS, gathers, final outputs) and is pinned; ``RoiAlign`` and
    ``NonMaxSuppression`` are pinned too.

    Parameters
    ----------
    model : onnx.ModelProto
        An exported clumpdet model (float32 or QDQ int8).

    Returns
    -------
    list of str
        Node names in graph order.
    """
    graph = model.graph
    producers = {out: n for n in graph.node for out in n.output if out}
    weights = _weight_tensors(graph)
    weighted = [n for n in graph.node if n.op_type in _WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in weights]
    features: set[str] = set()
    stack = list(weighted)
    while stack:
        node = stack.pop()
        if node.name in features:
            continue
        features.add(node.name)
        stack.extend(producers[i] for i in _value_inputs(node) if i in producers)
    live = {i.name for i in graph.input}  # tensors that depend on the images
    pinned = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
            if node.name not in features or node.op_type in _ALWAYS_FP32_OPS:
                pinned.append(node.name)
    return pinned


def match_layers(layers: Iterable[tuple[str, str]], pinned: Iterable[str], all_nodes: Iterable[str]) -> list[str]:
    """Parsed TensorRT layers that implement the ``pinned`` ONNX nodes.

    A layer belongs to the node named in its ``ILayer.metadata``
    (``[ONNX Layer: <node>]``, TensorRT >= 10); without metadata, to the node of
    its own name, or else to the longest node name that prefixes it followed by
    ``_``, ``.`` or ``:`` (the parser names the extra layers of a node
    ``<node>_<n>``).

    Parameters
    ----------
    layers : iterable of (str, str)
        ``(layer.name, layer.metadata)`` for every layer of the parsed network.
    pinned : iterable of str
        ONNX node names to select (e.g. from :func:`fp32_pinned_nodes`).
    all_nodes : iterable of str
        Every ONNX node name of the graph (to tell ``node_add`` from ``node_add_9``).

    Returns
    -------
    list of str
        Matching layer names, in network order.
    """
    pinned, all_nodes = set(pinned), set(all_nodes)
    out = []
    for name, metadata in layers:
        owners = {part.split("]", 1)[0].strip() for part in (metadata or "").split("[ONNX Layer:")[1:]}
        if not owners:
            if name in all_nodes:
                owners = {name}
            else:
                prefixes = [name[:i] for i, ch in enumerate(name) if ch in "_.:" and name[:i] in all_nodes]
                owners = {max(prefixes, key=len)} if prefixes else set()
        if owners & pinned:
            out.append(name)
    return out


def _input_hw(model: onnx.ModelProto) -> tuple[str, int, int]:
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[2].dim_value or not dims[3].dim_value:
        msg = f"tensorrt_build.py: input {inp.name!r} must be [N, 3, H, W] with static H, W"
        raise ValueError(msg)
    return inp.name, int(dims[2].dim_value), int(dims[3].dim_value)


def _has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def trtexec_command(onnx_path: str | Path, plan_path: str | Path, precision: str = "fp16", *,
                    layers: Sequence[str] | None = None, workspace_mib: int = 4096) -> str:
    """The ``trtexec`` command that builds the same plan.

    Parameters
    ----------
    onnx_path : str or Path
        The float32 export (fp16) or its TensorRT QDQ int8 copy (int8).
    plan_path : str or Path
        Where the plan is written.
    precision : {"fp16", "int8"}
    layers : sequence of str, optional
        TensorRT layer names to pin to fp32; default the ONNX node names of
        :func:`fp32_pinned_nodes` (the parser names a node's main layer after it).
    workspace_mib : int
        Builder workspace limit.

    Returns
    -------
    str
        One shell-quoted command line.
    """
    if precision not in PRECISIONS:
        msg = f"tensorrt_build.py: precision must be one of {PRECISIONS}, got {precision!r}"
        raise ValueError(msg)
    model = onnx.load(str(onnx_path), load_external_data=False)
    name, h, w = _input_hw(model)
    lo, opt, hi = BATCH_PROFILE
    pinned = list(layers) if layers is not None else fp32_pinned_nodes(model)
    args = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
        f"--minShapes={name}:{lo}x3x{h}x{w}", f"--optShapes={name}:{opt}x3x{h}x{w}",
        f"--maxShapes={name}:{hi}x3x{h}x{w}", f"--memPoolSize=workspace:{workspace_mib}M", "--fp16",
    ]
    if precision == "int8":
        args.append("--int8")  # explicit quantisation: scales come from the QDQ nodes, no calibration cache
    if pinned:
        args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in pinned),
                 "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in pinned)]
    return shlex.join(args)


def _import_tensorrt(onnx_path, plan_path, precision, workspace_mib):
    try:
        import tensorrt as trt
    except ImportError as err:
        cmd = trtexec_command(onnx_path, plan_path, precision, workspace_mib=workspace_mib)
        msg = (
            "tensorrt_build.py: TensorRT is not installed (pip install 'clumpdet[tensorrt]', needs an NVIDIA GPU). "
            f"The equivalent trtexec command is:\n{cmd}"
        )
        raise TensorRTUnavailableError(msg) from err
    if int(trt.__version__.split(".")[0]) < 10:
        msg = f"tensorrt_build.py: TensorRT >= 10 is required, found {trt.__version__}"
        raise TensorRTUnavailableError(msg)
    return trt


def build_engine(onnx_path: str | Path, plan_path: str | Path, precision: str = "fp16", *,
                 calibration: Iterable[str] | None = None, calibration_images: int = 32,
                 calibration_method: str = "entropy", workspace_mib: int = 4096) -> Path:
    """Build a TensorRT plan and its ``<plan>.json`` metadata sidecar.

    Parameters
    ----------
    onnx_path : str or Path
        A clumpdet export. For ``int8`` either a TensorRT QDQ file
        (``quantize_backbone(..., target="tensorrt")``) or the float32 export plus
        ``calibration``, from which that file is made (``<plan>.qdq.onnx``).
    plan_path : str or Path
        Output plan (``.plan``/``.engine``: the suffixes the engine recognises).
    precision : {"fp16", "int8"}
    calibration : iterable of str, optional
        Calibration cutouts (paths, globs, directories) for ``int8``.
    calibration_images : int
        Images used for calibration.
    calibration_method : {"minmax", "percentile", "entropy"}
    workspace_mib : int
        Builder workspace limit.

    Returns
    -------
    Path
        ``plan_path``; input ``images`` float32 ``[N, 3, H, W]``, N in 1..64 (opt 8).

    Raises
    ------
    TensorRTUnavailableError
        When ``tensorrt`` (>= 10) does not import; the message gives the ``trtexec`` command.
    ValueError
        Bad precision, int8 without QDQ nodes or calibration, or a parse/build failure.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if precision not in PRECISIONS:
        msg = f"tensorrt_build.py: precision must be one of {PRECISIONS}, got {precision!r}"
        raise ValueError(msg)
    model = onnx.load(str(onnx_path))
    if precision == "int8" and not _has_qdq(model):
        if calibration is None:
            msg = f"tensorrt_build.py: {onnx_path} has no QDQ nodes; int8 needs calibration images"
            raise ValueError(msg)
        from clumpdet.export.quantize import quantize_backbone

        onnx_path = quantize_backbone(onnx_path, plan_path.with_suffix(".qdq.onnx"), calibration,
                                      method=calibration_method, num_images=calibration_images, target="tensorrt")
        model = onnx.load(str(onnx_path))
    trt = _import_tensorrt(onnx_path, plan_path, precision, workspace_mib)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"tensorrt_build.py: TensorRT cannot parse {onnx_path}: {errors}"
        raise ValueError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales from the QDQ nodes (explicit quantisation)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pinned = _pin_fp32(trt, network, model)
    name, h, w = _input_hw(model)
    profile = builder.create_optimization_profile()
    lo, opt, hi = BATCH_PROFILE
    profile.set_shape(name, (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"tensorrt_build.py: TensorRT failed to build {plan_path} (see the TensorRT log above)"
        raise ValueError(msg)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    props = {p.key: p.value for p in model.metadata_props}
    note = f" -> TensorRT {trt.__version__} {precision} plan ({pinned} layers pinned fp32)"
    props["clumpdet.exporter"] = json.dumps(json.loads(props.get("clumpdet.exporter", '""')) + note)
    Path(plan_metadata_path(plan_path)).write_text(json.dumps(props, indent=1, sort_keys=True) + "\n")
    return plan_path


def _pin_fp32(trt, network, model: onnx.ModelProto) -> int:
    """Pin the layers of :func:`fp32_pinned_nodes` (and every NMS layer) to fp32; return how many."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen = set(match_layers(((layer.name, getattr(layer, "metadata", "")) for layer in layers),
                              fp32_pinned_nodes(model), (n.name for n in model.graph.node)))
    floats = {trt.float32, trt.float16}
    count = 0
    for layer in layers:
        if layer.name not in chosen and layer.type != trt.LayerType.NMS:
            continue
        tensors = [layer.get_input(i) for i in range(layer.num_inputs)]
        float_in = any(t is not None and t.dtype in floats for t in tensors)
        float_out = [i for i in range(layer.num_outputs) if layer.get_output(i).dtype in floats]
        if not float_in and not float_out:
            continue  # shape/index layers: precision does not apply
        layer.precision = trt.float32
        for i in float_out:
            layer.set_output_type(i, trt.float32)
        count += 1
    return count
