"""Write a Triton Inference Server model repository for an exported clumpdet ONNX.

Layout (Triton's)::

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx

``config.pbtxt`` is derived from the ONNX's own inputs and outputs (DESIGN §3):
the leading symbolic batch axis becomes ``max_batch_size`` and is dropped from
``dims``; a per-image scalar (``num_dets``, shape ``[N]``) gets ``dims: [ 1 ]``
with ``reshape { shape: [ ] }``, as Triton requires. It sets ``platform:
"onnxruntime_onnx"``, ``dynamic_batching`` (queue delay, preferred sizes), an
``instance_group`` and, as an option, onnxruntime's TensorRT execution
accelerator (``precision_mode`` FP32/FP16). Note (DESIGN §3): onnxruntime's
TensorRT provider leaves NonMaxSuppression, NonZero and RoiAlign to CUDA, so
that option speeds up the backbone only.

Command line (or ``clumpdet export ... --triton-repo DIR`` right after the export)::

    python -m clumpdet.export.triton_repo MODEL.onnx DIR [--name N] [--max-batch 8]
        [--max-queue-delay-us 5000] [--instance-kind auto|cpu|gpu] [--instances 1]
        [--tensorrt FP16|FP32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import onnx

#: ONNX TensorProto element type -> Triton data type.
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.BOOL: "TYPE_BOOL",
}
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _tensors(model: onnx.ModelProto, which: str, source: str) -> list[tuple[str, str, list[int], bool]]:
    """``(name, triton type, dims without batch, is_per_image_scalar)`` of the graph's inputs or outputs."""
    init = {i.name for i in model.graph.initializer}
    values = [v for v in getattr(model.graph, which) if v.name not in init]
    out = []
    for v in values:
        tt = v.type.tensor_type
        if tt.elem_type not in _TRITON_TYPES:
            msg = f"{source}: {which[:-1]} {v.name!r} has ONNX element type {tt.elem_type}, which has no Triton type here"
            raise ValueError(msg)
        dims = list(tt.shape.dim)
        if not dims or dims[0].HasField("dim_value"):
            msg = (f"{source}: {which[:-1]} {v.name!r} has no symbolic leading batch axis "
                   f"(shape {[d.dim_value or d.dim_param for d in dims]}); export with a dynamic batch")
            raise ValueError(msg)
        rest = [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]
        out.append((v.name, _TRITON_TYPES[tt.elem_type], rest or [1], not rest))
    return out


def _block(kind: str, tensors: list[tuple[str, str, list[int], bool]]) -> list[str]:
    lines = [f"{kind} ["]
    for i, (name, dtype, dims, scalar) in enumerate(tensors):
        lines.append("  {")
        lines.append(f'    name: "{name}"')
        lines.append(f"    data_type: {dtype}")
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
        if scalar:
            lines.append("    reshape { shape: [ ] }")
        lines.append("  }" + ("," if i < len(tensors) - 1 else ""))
    lines.append("]")
    return lines


def triton_config(model: onnx.ModelProto, name: str, max_batch_size: int = 8, max_queue_delay_us: int = 5000,
                  preferred_batch_sizes: tuple[int, ...] | None = None, instance_kind: str = "auto",
                  instances: int = 1, tensorrt: str | None = None, source: str = "model") -> str:
    """The ``config.pbtxt`` text for ``model`` (see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto
        The exported model (its graph's inputs/outputs are read; weights are not needed).
    name : str
        Model name in the repository.
    max_batch_size : int
        Largest batch Triton forms (>= 1).
    max_queue_delay_us : int
        Dynamic batcher's longest wait, microseconds.
    preferred_batch_sizes : tuple of int or None
        Default: powers of two up to ``max_batch_size``.
    instance_kind : {"auto", "cpu", "gpu"}
        Where Triton places the model instances.
    instances : int
        Model instances per device.
    tensorrt : {"FP32", "FP16"} or None
        Add onnxruntime's TensorRT accelerator with this precision.
    """
    if max_batch_size < 1 or max_queue_delay_us < 0 or instances < 1:
        msg = f"{source}: need max_batch_size >= 1, max_queue_delay_us >= 0, instances >= 1"
        raise ValueError(msg)
    if instance_kind not in INSTANCE_KINDS or tensorrt not in (None, "FP32", "FP16"):
        msg = f"{source}: instance_kind must be one of {sorted(INSTANCE_KINDS)}, tensorrt FP32, FP16 or None"
        raise ValueError(msg)
    if preferred_batch_sizes is None:
        preferred_batch_sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= max_batch_size)
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    lines += _block("input", _tensors(model, "input", source))
    lines += _block("output", _tensors(model, "output", source))
    lines += ["dynamic_batching {",
              f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]",
              f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}",
              f"instance_group [ {{ count: {instances} kind: {INSTANCE_KINDS[instance_kind]} }} ]"]
    if tensorrt is not None:
        lines += ["optimization { execution_accelerators {", "  gpu_execution_accelerator : [ {",
                  '    name : "tensorrt"', f'    parameters {{ key: "precision_mode" value: "{tensorrt}" }}',
                  '    parameters { key: "max_workspace_size_bytes" value: "1073741824" }', "  } ]", "} }"]
    return "\n".join(lines) + "\n"


def write_triton_repo(onnx_path: str | os.PathLike[str], repo_dir: str | os.PathLike[str], name: str | None = None,
                      **options) -> Path:
    """Write ``repo_dir/<name>/1/model.onnx`` (a copy) and ``repo_dir/<name>/config.pbtxt``.

    Parameters
    ----------
    onnx_path : path
        An exported clumpdet ONNX.
    repo_dir : path
        The repository root (created; other models in it are left alone).
    name : str or None
        Model name; default the ONNX file name without extension.
    **options
        Passed to :func:`triton_config`.

    Returns
    -------
    pathlib.Path
        The model's directory ``repo_dir/<name>``.
    """
    src = Path(onnx_path)
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        msg = f"{src}: not a readable ONNX file ({type(err).__name__}: {err})"
        raise ValueError(msg) from err
    name = name or src.name.split(".")[0]
    if not name or "/" in name or name.startswith("."):
        msg = f"{src}: unusable Triton model name {name!r}"
        raise ValueError(msg)
    text = triton_config(model, name, source=str(src), **options)
    model_dir = Path(repo_dir) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m clumpdet.export.triton_repo MODEL DIR``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m clumpdet.export.triton_repo", description=__doc__.splitlines()[0])
    p.add_argument("model", help="exported .onnx")
    p.add_argument("repo", help="Triton model repository directory")
    p.add_argument("--name", help="model name (default: the ONNX file name without extension)")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=5000, help="dynamic batching delay (default 5000)")
    p.add_argument("--instance-kind", choices=sorted(INSTANCE_KINDS), default="auto")
    p.add_argument("--instances", type=int, default=1, help="instances per device (default 1)")
    p.add_argument("--tensorrt", choices=("FP32", "FP16"), help="add onnxruntime's TensorRT accelerator")
    args = p.parse_args(argv)
    try:
        out = write_triton_repo(args.model, args.repo, args.name, max_batch_size=args.max_batch,
                                max_queue_delay_us=args.max_queue_delay_us, instance_kind=args.instance_kind,
                                instances=args.instances, tensorrt=args.tensorrt)
    except (ValueError, OSError) as err:
        print(f"triton_repo: error: {err}", file=sys.stderr)
        return 2
    print(f"triton_repo: wrote {out / 'config.pbtxt'} and {out / '1' / 'model.onnx'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
