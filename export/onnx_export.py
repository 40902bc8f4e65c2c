"""Export a Faster R-CNN to one ONNX file with the whole post-processing chain inside.

:func:`export_onnx` wraps the model in :class:`~clumpdet.export.wrapper.ExportWrapper`,
exports it with a symbolic batch axis, writes :class:`ModelMetadata` into
``metadata_props`` and checks the file (:mod:`clumpdet.export.checks`). Export needs
no network access.

Reproducibility: the exporter is deterministic for a given model and library
versions (same weights → byte-identical file; checked in the tests). Files made
with other torch/onnxscript versions can differ in node naming and graph
rewriting, so the exporter and opset are recorded in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from clumpdet.engine import __version__ as clumpdet_version
from clumpdet.engine.contracts import INPUT_NAME, OUTPUT_NAMES, ModelMetadata, PostProcessConfig
from clumpdet.export.checks import check_tensorrt_ready
from clumpdet.export.gelu import reorder_gelus
from clumpdet.export.nms_fixed import ONNX_TRANSLATIONS
from clumpdet.export.wrapper import ExportWrapper
from clumpdet.train.checkpoints import preset_to_dict
from clumpdet.train.presets import Preset

# Pinned: torch.onnx dynamo exporter (torch.export + onnxscript), opset 18. The legacy
# TorchScript exporter turns the FPN level merge into ScatterElements (36% of ORT time in
# a prototype) and is deprecated; dynamo at opset 17 produced a ReduceMax that ORT 1.32
# refuses to load (noop_with_empty_axes); opset 18 loads in ORT and TensorRT >= 10 parses
# every op we emit (RoiAlign-16, NonMaxSuppression-11, Resize-18).
EXPORTER = "torch.onnx.export(dynamo=True)"
OPSET = 18
#: Largest batch the exported graph is declared for (the symbolic axis' upper bound).
MAX_BATCH = 64
#: Batch size of the example traced through the exporter (any size > 1 keeps the axis symbolic).
_EXAMPLE_BATCH = 2


def export_onnx(
    model: nn.Module,
    preset: Preset,
    out_path: str | Path,
    *,
    postprocess: PostProcessConfig | None = None,
    proposals: int | None = None,
    checkpoint_sha256: str = "",
    training_data: str = "",
    reference_metrics: dict[str, Any] | None = None,
    roi_merge: str = "auto",
    check: bool = True,
) -> Path:
    """Export ``model`` to ``out_path`` (DESIGN §3 contract).

    Parameters
    ----------
    model : torchvision.models.detection.FasterRCNN
        The reference detector of ``preset`` (put into eval mode here).
    preset : Preset
        Input contract, proposal budgets, class names, default post-processing.
    out_path : str or Path
        Where the ``.onnx`` file is written (parents created).
    postprocess : PostProcessConfig, optional
        Chain fused into the graph; default ``preset.postprocess``.
    proposals : int, optional
        Proposals per image after the RPN (``rpn_post_nms_top_n_test``);
        default the preset's.
    checkpoint_sha256, training_data : str
        Provenance written to the metadata.
    reference_metrics : dict, optional
        JSON-serialisable metrics of the reference model, written to the metadata.
    roi_merge : {"auto", "canvas", "gather", "where"}
        FPN level selection after RoIAlign.
    check : bool
        Run :func:`~clumpdet.export.checks.check_tensorrt_ready` on the result
        (raises ``ValueError`` listing every problem).

    Returns
    -------
    Path
        ``out_path``. Input ``images`` float32 ``[batch, 3, H, W]`` in [0, 1];
        outputs ``num_dets`` ``[batch]`` int64, ``boxes`` ``[batch, K, 4]``
        float32, ``scores`` ``[batch, K]`` float32, ``labels`` ``[batch, K]`` int64.
    """
    out_path = Path(out_path)
    model.eval()
    wrapper = ExportWrapper(model, preset, postprocess=postprocess, proposals=proposals, roi_merge=roi_merge)
    spec = preset.input
    example = torch.full((_EXAMPLE_BATCH, 3, spec.height, spec.width), 0.5, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            custom_translation_table=ONNX_TRANSLATIONS,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    _strip_value_metadata(proto)
    reorder_gelus(proto)
    meta = ModelMetadata(
        preset=preset.name,
        class_names=tuple(preset.class_names),
        input=spec,
        postprocess=wrapper.config,
        checkpoint_sha256=checkpoint_sha256,
        training_data=training_data,
        reference_metrics=dict(reference_metrics or {}),
        exporter=f"{EXPORTER} torch {torch.__version__.split('+')[0]}",
        opset=OPSET,
        clumpdet_version=clumpdet_version,
    )
    effective = preset.with_options(postprocess=wrapper.config, rpn_post_nms_top_n_test=wrapper.num_proposals)
    props = {**meta.to_props(), "clumpdet.proposals": str(wrapper.num_proposals),
             # the whole architecture, so the reference can be rebuilt from the file (export/reconstruct.py)
             "clumpdet.preset_config": json.dumps(preset_to_dict(effective))}
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "clumpdet"
    proto.producer_version = clumpdet_version
    proto.doc_string = f"clumpdet {preset.name}: {preset.description}"
    if check:
        check_tensorrt_ready(proto)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out_path))
    return out_path


def _strip_value_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-value/per-node ``pkg.torch.*`` annotations (debug info, not contract)."""
    graph = proto.graph
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del value.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
