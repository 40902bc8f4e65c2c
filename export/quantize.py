"""INT8 on CPU: ONNX Runtime static QDQ quantisation of the backbone + FPN of an exported model.

The feature extractor is quantised, plus the layers named by ``also`` (the CLI and
the benchmark pass :data:`RECOMMENDED_ALSO`, the RPN's 3x3 convolution). The RPN's
1x1 outputs, RoIAlign, box head, box decoding and every NMS stay float32:
decoding works in input pixels (a 400 px coordinate has a 1.6 px step in int8 scale terms) and NMS compares IoUs, both of
which int8 would corrupt for little gain. The quantised region is found from the
graph structure, not from op names: a node belongs to the backbone if it consumes
a weight whose initializer name starts with ``backbone.`` (the export wrapper's
``self.backbone``, torchvision's ``BackboneWithFPN``) or lies upstream of such a
node (:func:`backbone_region`). Its boundary tensors, consumed by nodes outside
the region, are the FPN outputs (:func:`fpn_outputs`). The stem (the first
weighted layer, fed by the image) also stays float32 by default
(:func:`nodes_to_quantize`): quantising the image itself loses faint sources.

Calibration reads real cutouts through the engine's own readers
(:func:`clumpdet.engine.inputs.expand_inputs`,
:func:`clumpdet.engine.readers.read_cutout`) with the input contract stored in the
model's metadata, so the activations seen during calibration are exactly those
the engine will feed.

Output format: QDQ (``QuantizeLinear``/``DequantizeLinear`` pairs in the default
ONNX domain), weights int8 per output channel. ``target="cpu"`` uses uint8
asymmetric activations (onnxruntime's fast x86 U8S8 kernels) and ONNX's ``Gelu``
(opset 20, :func:`clumpdet.export.gelu.gelus_to_onnx_gelu`); ``target="tensorrt"``
uses int8 symmetric activations and weights, which is the only form TensorRT's
explicit quantisation accepts (see ``docs/tensorrt.md``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.engine.inputs import expand_inputs
from clumpdet.engine.readers import read_cutout
from clumpdet.export.gelu import GELU_OPSET, gelus_to_onnx_gelu

#: Initializer-name prefix of the feature extractor (backbone body + FPN) in exported graphs.
BACKBONE_PREFIX = "backbone."
#: Op types that get int8 weights and activations inside the backbone region.
QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
TARGETS = ("cpu", "tensorrt")
#: Layers outside the backbone that the CPU int8 export quantises too (``also``): the RPN's 3x3
#: convolution, shared by every level (native: 24% of the FLOPs; int8 there took the engine from
#: 1.52x to 2.13x float32 at |dC|, |dP| <= 0.004 on 100 simulated cutouts, one run). The box head
#: is left in float32: quantising it made the run slower (QDQ overhead on a 100-row GEMM).
RECOMMENDED_ALSO = ("rpn.head.conv",)
#: Appended to the ``clumpdet.exporter`` metadata value of a quantised model.
INT8_NOTE = "+int8 QDQ backbone"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def backbone_region(model: onnx.ModelProto, prefix: str = BACKBONE_PREFIX) -> set[str]:
    """Names of the nodes that compute the backbone + FPN features.

    Parameters
    ----------
    model : onnx.ModelProto
        An exported (float32) clumpdet model; node names must be unique.
    prefix : str
        Initializer-name prefix of the feature extractor's weights.

    Returns
    -------
    set of str
        Every node that consumes an initializer named ``prefix*``, plus all of
        its ancestors (the in-graph preprocessing included).

    Raises
    ------
    ValueError
        If no initializer starts with ``prefix`` or node names are not unique.
    """
    graph = model.graph
    names = [n.name for n in graph.node]
    if len(set(names)) != len(names) or not all(names):
        msg = "quantize.py: the graph's node names are empty or not unique; cannot select nodes by name"
        raise ValueError(msg)
    weights = {t.name for t in graph.initializer if t.name.startswith(prefix)}
    if not weights:
        msg = f"quantize.py: no initializer named {prefix!r}*; not a clumpdet export (cannot find the backbone)"
        raise ValueError(msg)
    producers = _producers(graph)
    stack = [n for n in graph.node if any(i in weights for i in n.input)]
    region: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in region:
            continue
        region.add(node.name)
        stack.extend(producers[i] for i in node.input if i in producers)
    return region


def fpn_outputs(model: onnx.ModelProto, region: set[str] | None = None) -> list[str]:
    """Tensors produced inside :func:`backbone_region` and consumed outside it (the FPN maps), sorted."""
    region = backbone_region(model) if region is None else region
    inside = {out for n in model.graph.node if n.name in region for out in n.output}
    used = {i for n in model.graph.node if n.name not in region for i in n.input}
    return sorted(inside & used)


def nodes_to_quantize(model: onnx.ModelProto, op_types: Sequence[str] = QUANT_OP_TYPES, *,
                      keep_first_fp32: bool = True, also: Sequence[str] = (),
                      keep_grouped_fp32: bool = True) -> list[str]:
    """Names of the ``op_types`` nodes of the backbone region (and of ``also``), in graph order.

    Parameters
    ----------
    model : onnx.ModelProto
        A float32 clumpdet export.
    op_types : sequence of str
        Op types to quantise.
    keep_first_fp32 : bool
        Leave the first weighted layer(s), those fed by the image without another
        ``op_types`` node in between (the stem), in float32. Quantising the
        stem's input re-grids the normalised pixels onto a 256-level scale that
        does not line up with the 8-bit PNG levels and wipes out faint sources
        near the sky level (native preset: completeness -0.25 with the stem in
        int8, -0.005 without; ``benchmarks/int8_check.py``).
    also : sequence of str
        Initializer-name prefixes of more layers to quantise outside the backbone,
        e.g. ``("rpn.head.conv",)`` for the RPN's 3x3 convolution (a quarter of the
        native preset's FLOPs). Box decoding and NMS are never quantised.
    keep_grouped_fp32 : bool
        Leave grouped (depthwise) convolutions in float32: 49 multiply-adds per
        output is too little work for int8 to pay for its quantise/dequantise
        (native: same speed either way), and keeping them removed the remaining
        catalogue differences (|dC|, |dP| 0.004 -> 0 on 100 simulated cutouts).
    """
    region = backbone_region(model) | {n.name for n in model.graph.node
                                       if any(i.startswith(p) for i in n.input for p in also)}
    after_weighted: set[str] = set()  # tensors downstream of an op_types node
    chosen = []
    for node in model.graph.node:  # topological order
        downstream = any(i in after_weighted for i in node.input)
        grouped = node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
        if node.op_type in op_types:
            if node.name in region and (downstream or not keep_first_fp32) and not (grouped and keep_grouped_fp32):
                chosen.append(node.name)
            after_weighted.update(node.output)
        elif downstream:
            after_weighted.update(node.output)
    return chosen


class CutoutCalibrationReader(CalibrationDataReader):
    """Calibration batches read by the engine's readers, exactly as the engine would feed them.

    Parameters
    ----------
    inputs : iterable of str
        Paths, globs, directories or ``@lists`` (:func:`clumpdet.engine.inputs.expand_inputs`):
        PNG/JPEG cutouts or FITS flux cubes.
    metadata : ModelMetadata
        The model's metadata (input size, Lupton stretch, band names).
    limit : int
        Use at most this many images (the first ``limit`` sources in sorted order).
    batch_size : int
        Images per calibration run.

    Notes
    -----
    Each batch is ``{"images": float32 [n, 3, H, W]}`` in [0, 1], RGB, numpy
    ``[row, column]`` order. Unreadable sources raise ``InputError`` naming the file.
    """

    def __init__(self, inputs: Iterable[str], metadata: ModelMetadata, *, limit: int = 32,
                 batch_size: int = 4) -> None:
        if limit < 1 or batch_size < 1:
            msg = f"quantize.py: limit and batch_size must be >= 1, got {limit} and {batch_size}"
            raise ValueError(msg)
        self.sources = expand_inputs(list(inputs), metadata.input.lupton.bands)[:limit]
        if not self.sources:
            msg = f"quantize.py: no calibration images found in {list(inputs)!r}"
            raise ValueError(msg)
        self.spec = metadata.input
        self.batch_size = batch_size
        self._pos = 0

    def __len__(self) -> int:
        return len(self.sources)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{"images": batch}``, or ``None`` when all sources were used."""
        if self._pos >= len(self.sources):
            return None
        chunk = self.sources[self._pos : self._pos + self.batch_size]
        self._pos += len(chunk)
        batch = np.stack([read_cutout(s, self.spec).image for s in chunk]).astype(np.float32, copy=False)
        return {"images": batch}

    def rewind(self) -> None:
        """Start again from the first source."""
        self._pos = 0


def quantize_backbone(
    model_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[str] | CalibrationDataReader,
    *,
    method: str = "minmax",
    num_images: int = 32,
    batch_size: int = 4,
    target: str = "cpu",
    percentile: float = 99.999,
    keep_first_fp32: bool = True,
    also: Sequence[str] = (),
) -> Path:
    """Write an int8 (QDQ) copy of ``model_path`` with only the backbone + FPN quantised.

    Parameters
    ----------
    model_path : str or Path
        A float32 clumpdet export (:func:`clumpdet.export.onnx_export.export_onnx`).
    out_path : str or Path
        Where the quantised model is written (e.g. ``model.int8.onnx``).
    calibration : iterable of str or CalibrationDataReader
        Calibration images (paths, globs, directories, ``@lists``), read with the
        model's own input contract; or a ready reader yielding ``{"images": ...}``.
    method : {"minmax", "percentile", "entropy"}
        Activation-range calibration.
    num_images, batch_size : int
        Calibration images used and images per calibration run (file inputs only).
    target : {"cpu", "tensorrt"}
        ``"cpu"``: uint8 asymmetric activations; ``"tensorrt"``: int8 symmetric
        activations (TensorRT explicit quantisation). Weights are int8, symmetric,
        per output channel in both.
    percentile : float
        Percentile kept by ``method="percentile"``.
    keep_first_fp32 : bool
        Keep the stem (first weighted layer) in float32 (:func:`nodes_to_quantize`).
    also : sequence of str
        More layers to quantise, by initializer-name prefix (:func:`nodes_to_quantize`).

    Returns
    -------
    Path
        ``out_path``. Same inputs, outputs and ``metadata_props`` as the source,
        except ``clumpdet.exporter`` which gains ``" +int8 QDQ backbone (...)"``.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    method_key = method.lower()
    if method_key not in METHODS:
        msg = f"quantize.py: unknown calibration method {method!r} (choose from {', '.join(METHODS)})"
        raise ValueError(msg)
    if target not in TARGETS:
        msg = f"quantize.py: unknown target {target!r} (choose from {', '.join(TARGETS)})"
        raise ValueError(msg)
    model = onnx.load(str(model_path))
    # onnxruntime does not fuse the exporter's GELU inside a QDQ graph: ONNX's own Gelu for the CPU file
    n_gelu = gelus_to_onnx_gelu(model) if target == "cpu" else 0
    props = {p.key: p.value for p in model.metadata_props}
    if n_gelu:
        props["clumpdet.opset"] = json.dumps(GELU_OPSET)
    metadata = ModelMetadata.from_props(props, source=str(model_path))
    if isinstance(calibration, CalibrationDataReader):
        reader = calibration
    else:
        reader = CutoutCalibrationReader(calibration, metadata, limit=num_images, batch_size=batch_size)
    selected = nodes_to_quantize(model, keep_first_fp32=keep_first_fp32, also=also)
    extra = {"WeightSymmetric": True, "ActivationSymmetric": target == "tensorrt"}
    if method_key == "percentile":
        extra["CalibPercentile"] = float(percentile)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clumpdet-quant-") as tmp:
        staged = Path(tmp) / "model.int8.onnx"
        quantize_static(
            model,
            staged,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8 if target == "cpu" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=selected,
            calibrate_method=METHODS[method_key],
            extra_options=extra,
        )
        quantized = onnx.load(str(staged))
    stem = ((", stem fp32" if keep_first_fp32 else "") + (f", also {', '.join(also)}" if also else "")
            + (f", {n_gelu} Gelu-{GELU_OPSET}" if n_gelu else ""))
    note = f" {INT8_NOTE} ({method_key}, {target}, {len(selected)} nodes{stem})"
    props["clumpdet.exporter"] = _json_append(props.get("clumpdet.exporter", '""'), note)
    del quantized.metadata_props[:]
    for key, value in sorted(props.items()):
        quantized.metadata_props.add(key=key, value=value)
    quantized.producer_name = model.producer_name
    quantized.producer_version = model.producer_version
    quantized.doc_string = f"{model.doc_string} [int8 backbone+FPN]"
    onnx.save_model(quantized, str(out_path))
    return out_path


def _json_append(json_string: str, suffix: str) -> str:
    """Append ``suffix`` to a JSON-encoded string value (metadata values are JSON)."""
    return json.dumps(str(json.loads(json_string)) + suffix)
