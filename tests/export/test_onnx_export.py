"""The exported file: DESIGN §3 contract, metadata, TensorRT readiness, options, reproducibility."""

from __future__ import annotations

import hashlib

import onnx
import pytest
import torch

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.export.checks import op_counts, tensorrt_findings
from clumpdet.export.onnx_export import OPSET, export_onnx
from clumpdet.export.wrapper import ExportWrapper

from .helpers import SMALL_POPP, make_images, run_ort


def _load(path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def test_io_contract_and_symbolic_batch(popp):
    model = _load(popp.path)
    (inp,) = model.graph.input
    assert inp.name == "images"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # one file, every batch size
    assert [d.dim_value for d in dims[1:]] == [3, 128, 128]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(outputs) == ["num_dets", "boxes", "scores", "labels"]
    k = SMALL_POPP.postprocess.max_detections
    types = {"num_dets": onnx.TensorProto.INT64, "boxes": onnx.TensorProto.FLOAT,
             "scores": onnx.TensorProto.FLOAT, "labels": onnx.TensorProto.INT64}
    for name, tt in outputs.items():
        assert tt.elem_type == types[name]
        assert tt.shape.dim[0].dim_param == dims[0].dim_param
        assert [d.dim_value for d in tt.shape.dim[1:]] == {"num_dets": [], "boxes": [k, 4], "scores": [k],
                                                            "labels": [k]}[name]
    assert model.opset_import[0].version == OPSET


def test_metadata_round_trips(popp):
    props = {p.key: p.value for p in _load(popp.path).metadata_props}
    meta = ModelMetadata.from_props(props, source=str(popp.path))
    assert meta.preset == "popp2024"
    assert meta.class_names == SMALL_POPP.class_names
    assert meta.input == SMALL_POPP.input
    assert meta.postprocess == SMALL_POPP.postprocess
    assert meta.checkpoint_sha256 == "ab" * 32
    assert meta.reference_metrics == {"completeness": 0.5}
    assert meta.opset == OPSET and "dynamo" in meta.exporter
    assert props["clumpdet.proposals"] == str(SMALL_POPP.rpn_post_nms_top_n_test)


def test_graph_is_tensorrt_ready_and_loop_free(popp):
    model = _load(popp.path)
    assert tensorrt_findings(model) == []
    counts = op_counts(model)
    assert not {"If", "Loop", "Scan", "ScatterElements"} & set(counts)
    assert counts["NonMaxSuppression"] == 3  # RPN (levels as classes), per-class, class-agnostic
    assert counts["RoiAlign"] == 4
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert not model.functions


def test_proposal_budget_is_an_export_option(popp, tmp_path):
    wrapper = ExportWrapper(popp.model, SMALL_POPP, proposals=30)
    assert wrapper.num_proposals == 30
    images = make_images(2, seed=3)
    with torch.no_grad():
        num, boxes, _, _ = wrapper(images)
    assert boxes.shape == (2, SMALL_POPP.postprocess.max_detections, 4)
    assert (num > 0).all()
    with pytest.raises(ValueError, match="proposals"):
        ExportWrapper(popp.model, SMALL_POPP, proposals=0)


@pytest.mark.slow
def test_export_is_reproducible(native, tmp_path):
    """Same model and options, a second export in the same process: byte-identical file."""
    again = export_onnx(native.model, native.preset, tmp_path / "again.onnx")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (again, native.path)]
    assert digest[0] == digest[1]
    dets = run_ort(native.session, make_images(1, seed=2))[0]
    assert len(dets[0]) > 0
