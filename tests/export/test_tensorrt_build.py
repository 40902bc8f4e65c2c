"""TensorRT build path without TensorRT: fp32-pinned layer selection, layer matching, trtexec, errors."""

from __future__ import annotations

import importlib.util
import shlex

import numpy as np
import onnx
import pytest
from PIL import Image

from clumpdet.engine.cli import main
from clumpdet.export.tensorrt_build import (
    TensorRTUnavailableError,
    build_engine,
    fp32_pinned_nodes,
    match_layers,
    trtexec_command,
)

from .helpers import make_images

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when tensorrt is missing")


def _nodes(model, names):
    return [n for n in model.graph.node if n.name in set(names)]


@pytest.mark.parametrize("fixture", ["popp", "native"])
def test_pinned_nodes_are_decoding_roialign_and_nms(fixture, request):
    model = onnx.load(str(request.getfixturevalue(fixture).path))
    pinned = set(fp32_pinned_nodes(model))
    by_op: dict[str, set[bool]] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(node.name in pinned)
    # Box decoding (exp of deltas), FPN level assignment (sqrt, log), RoIAlign, TopK and NMS: fp32.
    for op in ("NonMaxSuppression", "RoiAlign", "TopK", "Exp", "Log", "Sqrt", "Sigmoid", "Softmax"):
        assert by_op[op] == {True}, op
    # Every weighted layer (backbone, FPN, RPN head, box head, predictor) may run in fp16/int8.
    for op in ("Conv", "Gemm"):
        assert by_op[op] == {False}, op
    init = {t.name for t in model.graph.initializer}
    assert not [n.name for n in _nodes(model, pinned) if any(i in init and i.startswith("backbone.") for i in n.input)]
    # The graph outputs are produced by pinned nodes.
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert all(producers[o.name] in pinned for o in model.graph.output if o.name in ("boxes", "scores"))


def test_pinned_nodes_of_a_qdq_graph_match_the_float_graph(native, tmp_path):
    from clumpdet.export.quantize import quantize_backbone

    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(make_images(2, seed=4)):
        Image.fromarray(np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(calib / f"{i}.png")
    qdq = quantize_backbone(native.path, tmp_path / "q.onnx", [str(calib)], target="tensorrt")
    fp32 = onnx.load(str(native.path))
    q = onnx.load(str(qdq))
    assert set(fp32_pinned_nodes(q)) == set(fp32_pinned_nodes(fp32))  # the quantiser reorders nodes
    with pytest.raises(ValueError, match="no QDQ nodes; int8 needs calibration"):
        build_engine(native.path, tmp_path / "m.plan", "int8")
    if not HAS_TENSORRT:
        with pytest.raises(TensorRTUnavailableError, match="--int8"):
            build_engine(qdq, tmp_path / "m.plan", "int8")


def test_match_layers_by_metadata_name_and_suffix():
    nodes = ["node_add", "node_add_9", "node_exp", "node_Conv_3"]
    layers = [
        ("node_add", ""),  # exact name, not pinned
        ("node_add_9", ""),  # exact name, pinned (not claimed by the shorter node_add)
        ("node_add_9_1", ""),  # extra layer of node_add_9
        ("node_add_7", ""),  # extra layer of node_add (no node named node_add_7)
        ("node_exp.cast", ""),
        ("Unnamed Layer* 12", "[ONNX Layer: node_exp]"),
        ("node_Conv_3", "[ONNX Layer: node_Conv_3]"),
        ("weird", ""),
    ]
    got = match_layers(layers, ["node_add_9", "node_exp"], nodes)
    assert got == ["node_add_9", "node_add_9_1", "node_exp.cast", "Unnamed Layer* 12"]


def test_trtexec_command(native):
    cmd = trtexec_command(native.path, "m.plan")
    args = shlex.split(cmd)
    assert args[0] == "trtexec" and f"--onnx={native.path}" in args and "--saveEngine=m.plan" in args
    assert {"--minShapes=images:1x3x128x128", "--optShapes=images:8x3x128x128",
            "--maxShapes=images:64x3x128x128", "--fp16", "--precisionConstraints=obey"} <= set(args)
    assert "--int8" not in args and "--int8" in shlex.split(trtexec_command(native.path, "m.plan", "int8"))
    layer_prec = next(a for a in args if a.startswith("--layerPrecisions="))
    pinned = fp32_pinned_nodes(onnx.load(str(native.path)))
    assert layer_prec.split("=", 1)[1].split(",") == [f"{n}:fp32" for n in pinned]
    with pytest.raises(ValueError, match="precision must be one of"):
        trtexec_command(native.path, "m.plan", "fp8")


@no_tensorrt
def test_build_without_tensorrt_says_so_and_gives_trtexec(native, tmp_path):
    plan = tmp_path / "m.plan"
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed") as info:
        build_engine(native.path, plan, "fp16")
    assert "trtexec --onnx=" in str(info.value) and "--optShapes=images:8x3x128x128" in str(info.value)
    assert not plan.exists()


def test_cli_tensorrt_int8_needs_calibration(tmp_path):
    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="needs calibration images"):
        main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--tensorrt", "int8"])


@pytest.mark.slow
@no_tensorrt
def test_cli_int8_and_tensorrt_flags(tmp_path, capsys):
    """``clumpdet export --int8 DIR --tensorrt fp16`` on a full-size native checkpoint (random weights)."""
    import torch

    from clumpdet.engine.contracts import ModelMetadata
    from clumpdet.train.models import build_model
    from clumpdet.train.presets import NATIVE

    from .helpers import session

    torch.manual_seed(0)
    ckpt = tmp_path / "native.pth"
    torch.save({f"module.{k}": v for k, v in build_model(NATIVE).state_dict().items()}, ckpt)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(make_images(3, seed=8, size=400)):
        Image.fromarray(np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "native.onnx"
    rc = main(["export", "--preset", "native", "--checkpoint", str(ckpt), "--out", str(out), "--proposals", "40",
               "--int8", str(calib), "--int8-images", "2", "--tensorrt", "fp16"])
    captured = capsys.readouterr()
    assert rc == 3
    assert "TensorRT is not installed" in captured.err and "trtexec --onnx=" in captured.err
    int8 = tmp_path / "native.int8.onnx"
    assert f"wrote {int8}" in captured.out and not (tmp_path / "native.fp16.plan").exists()
    sess = session(int8)
    meta = ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map)
    assert "+int8 QDQ backbone (minmax, cpu" in meta.exporter
    num = sess.run(None, {"images": np.zeros((2, 3, 400, 400), np.float32)})[0]
    assert num.shape == (2,)
