"""``write_triton_repo``: config.pbtxt parsed with Triton's own ModelConfig proto and checked against the ONNX."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx", reason="needs onnx (the [export] extra)")
text_format = pytest.importorskip("google.protobuf.text_format")
tritonclient = pytest.importorskip("tritonclient", reason="needs tritonclient (the dev extra)")

from clumpdet.export.triton_repo import triton_config, write_triton_repo  # noqa: E402


def _model_config_proto():
    """Triton's ``model_config.proto`` (shipped in tritonclient) without the grpc package import."""
    path = os.path.join(os.path.dirname(tritonclient.__file__), "grpc", "model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(text: str):
    pb = _model_config_proto()
    return pb, text_format.Parse(text, pb.ModelConfig())


def _onnx_io(path):
    model = onnx.load(path, load_external_data=False)
    def info(v):
        tt = v.type.tensor_type
        return v.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return [info(v) for v in model.graph.input], [info(v) for v in model.graph.output]


def test_repository_matches_the_onnx(model_path, tmp_path):
    model_dir = write_triton_repo(model_path, tmp_path / "repo", name="clumps", max_batch_size=16,
                                  max_queue_delay_us=2000, instance_kind="gpu", instances=2)
    assert model_dir == tmp_path / "repo" / "clumps"
    assert (model_dir / "1" / "model.onnx").read_bytes() == Path(model_path).read_bytes()
    pb, cfg = _parse((model_dir / "config.pbtxt").read_text())
    assert cfg.name == "clumps" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    types = {onnx.TensorProto.FLOAT: pb.TYPE_FP32, onnx.TensorProto.INT64: pb.TYPE_INT64}
    inputs, outputs = _onnx_io(model_path)
    for declared, tensors in ((cfg.input, inputs), (cfg.output, outputs)):
        assert [t.name for t in declared] == [name for name, _, _ in tensors]
        for t, (_, elem, dims) in zip(declared, tensors):
            assert dims[0] is None  # the symbolic batch axis is Triton's, not in dims
            assert t.data_type == types[elem]
            if len(dims) == 1:  # per-image scalar: dims [1], reshaped to []
                assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
            else:
                assert list(t.dims) == dims[1:]
    assert [t.name for t in cfg.output] == ["num_dets", "boxes", "scores", "labels"]
    assert list(cfg.input[0].dims) == [3, 128, 128] and list(cfg.output[1].dims) == [10, 4]
    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(cfg.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8, 16]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator


def test_tensorrt_accelerator_option(model_path):
    model = onnx.load(model_path, load_external_data=False)
    _, cfg = _parse(triton_config(model, "m", tensorrt="FP16"))
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert cfg.instance_group[0].kind == 0  # KIND_AUTO by default


def test_command_line_and_errors(model_path, tmp_path):
    cmd = [sys.executable, "-m", "clumpdet.export.triton_repo", model_path, str(tmp_path / "repo"), "--max-batch", "4"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    _, cfg = _parse((tmp_path / "repo" / "native_small" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 4
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = subprocess.run([*cmd[:3], str(bad), str(tmp_path / "r2")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2 and "not a readable ONNX file" in result.stderr
    model = onnx.load(model_path, load_external_data=False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # fixed batch: Triton cannot batch it
    with pytest.raises(ValueError, match="no symbolic leading batch axis"):
        triton_config(model, "m")


@pytest.mark.slow
def test_clumpdet_export_writes_the_triton_repo(tmp_path, capsys):
    """``clumpdet export --triton-repo DIR`` on a published-format checkpoint (random weights)."""
    torch = pytest.importorskip("torch", reason="needs the [export] extra")
    from clumpdet.engine.cli import main
    from clumpdet.train.models import build_model
    from clumpdet.train.presets import NATIVE

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ckpt = tmp_path / "native.pth"
    torch.save({f"module.{k}": v for k, v in build_model(NATIVE).state_dict().items()}, ckpt)
    out = tmp_path / "native.onnx"
    args = ["export", "--preset", "native", "--checkpoint", str(ckpt), "--out", str(out), "--proposals", "40",
            "--triton-repo", str(tmp_path / "repo")]
    assert main(args) == 0
    assert "wrote Triton model repository" in capsys.readouterr().out
    _, cfg = _parse((tmp_path / "repo" / "native" / "config.pbtxt").read_text())
    h, w, k = NATIVE.input.height, NATIVE.input.width, NATIVE.postprocess.max_detections
    assert list(cfg.input[0].dims) == [3, h, w] and list(cfg.output[1].dims) == [k, 4]
    assert (tmp_path / "repo" / "native" / "1" / "model.onnx").read_bytes() == out.read_bytes()
