"""The models a benchmark run compares, prepared once in the parent process.

* the reference: a preset plus a checkpoint (ours, ``.safetensors``, or a
  published ``.pth``), or random weights with data-calibrated FrozenBatchNorm
  statistics (:func:`clumpdet.train.models.calibrate_frozen_bn`; quality columns
  are then meaningless and the report says so). Saved to a temporary checkpoint
  of ours so that every backend process loads exactly the same weights;
* the engine's ONNX (:func:`clumpdet.export.onnx_export.export_onnx`);
* the naive peer: torchvision's own ONNX export of the same model through the
  legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset
  11, as torchvision's documentation shows), one file per batch size because that
  export fixes the batch and unrolls the per-image loops. Its graph ends after
  torchvision's per-class chain; our class-agnostic NMS and final threshold are
  applied afterwards in numpy (:mod:`benchmarks.backends`) so that its quality
  is comparable.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from clumpdet.train.checkpoints import load_model, save_checkpoint, sha256_file
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.presets import Preset, get_preset

#: Opset of torchvision's documented Faster R-CNN export.
NAIVE_OPSET = 11


@dataclasses.dataclass
class PreparedModels:
    """Paths of what the backend processes load.

    Attributes
    ----------
    preset : Preset
        As built (a checkpoint's stored preset wins over the name given).
    checkpoint : str
        Our checkpoint (``.safetensors`` + ``.json``) of the exact weights.
    engine_onnx : str
        The engine export (DESIGN §3): the given ``.onnx`` itself when the
        reference was read back from one, else a fresh export.
    naive_onnx : dict of int to str
        Batch size -> legacy torchvision export; a str value starting with
        ``"unavailable:"`` says why an export failed.
    random_weights : bool
        True when no checkpoint was given.
    source : str
        The checkpoint given, or a description of the random initialisation.
    source_sha256 : str
        sha256 of the checkpoint file given ('' for random weights).
    model : torch.nn.Module
        The reference model itself (eval mode), e.g. for counting FLOPs.
    """

    preset: Preset
    checkpoint: str
    engine_onnx: str
    naive_onnx: dict[int, str]
    random_weights: bool
    source: str
    source_sha256: str
    model: torch.nn.Module | None = None


def reference_model(preset: Preset | str, checkpoint: str | None, calib: np.ndarray, seed: int = 0):
    """``(model, preset)`` in eval mode: loaded, or random with FrozenBN calibrated on ``calib``.

    ``checkpoint``: ours (``.safetensors``), a published ``.pth``, or an exported
    ``.onnx`` whose weights are read back (:func:`clumpdet.export.reconstruct.reconstruct_model`).
    ``calib``: float32 ``[n, 3, H, W]`` uncropped model inputs (the first 4 are used).
    """
    if checkpoint and checkpoint.endswith(".onnx"):
        from clumpdet.export.reconstruct import reconstruct_model

        return reconstruct_model(checkpoint)
    if checkpoint:
        return load_model(checkpoint, None if checkpoint.endswith((".safetensors", ".json"))
                          else (get_preset(preset) if isinstance(preset, str) else preset))
    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    model = build_model(preset)
    x0, y0, cw, ch = preset.input.crop or (0, 0, preset.input.width, preset.input.height)
    calibrate_frozen_bn(model, torch.from_numpy(np.ascontiguousarray(calib[:4, :, y0:y0 + ch, x0:x0 + cw])))
    return model.eval(), preset


def export_naive(model, preset: Preset, batch: int, out_path: Path) -> Path:
    """torchvision's own export at a fixed ``batch`` (legacy exporter), chain up to per-class NMS.

    The graph takes ``batch`` inputs ``[3, h, w]`` (the *cropped* images, as the
    torchvision model takes them) and returns per image ``boxes`` ``[P, 4]`` (crop
    pixels), ``labels`` ``[P]`` int64 and ``scores`` ``[P]``.
    """
    heads = model.roi_heads
    cfg = preset.postprocess
    saved = (heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (
        cfg.score_thresh, cfg.class_nms_iou, cfg.detections_per_img)
    x0, y0, cw, ch = preset.input.crop or (0, 0, preset.input.width, preset.input.height)
    example = [torch.full((3, ch, cw), 0.5) for _ in range(batch)]
    try:
        # The legacy exporter is deprecated and warns (TracerWarning, DeprecationWarning) on
        # torchvision's data-dependent Python: that *is* the naive path being measured.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(out_path), dynamo=False, opset_version=NAIVE_OPSET,
                              do_constant_folding=True)
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved
    return out_path


def prepare(preset: Preset | str, checkpoint: str | None, calib: np.ndarray, out_dir: Path,
            batch_sizes: list[int], proposals: int | None = None, naive: bool = True) -> PreparedModels:
    """Build or load the reference, save it, and export the engine and naive ONNX files to ``out_dir``."""
    from clumpdet.export.onnx_export import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    model, preset = reference_model(preset, checkpoint, calib)
    if proposals is not None:
        preset = preset.with_options(rpn_post_nms_top_n_test=proposals)
        model.rpn._post_nms_top_n["testing"] = proposals
    ckpt, _ = save_checkpoint(model, preset, out_dir / "reference.safetensors",
                              extra={"source": checkpoint or "random weights, calibrated FrozenBN"})
    sha = sha256_file(checkpoint) if checkpoint else ""
    if checkpoint and checkpoint.endswith(".onnx") and proposals is None:
        engine = Path(checkpoint)  # the shipped file itself, against the reference read back from it
    else:
        engine = export_onnx(model, preset, out_dir / "engine.onnx", checkpoint_sha256=sha,
                             training_data="benchmark run")
    naive_paths: dict[int, str] = {}
    for b in batch_sizes:
        if not naive:
            naive_paths[b] = "unavailable: naive peer disabled (--no-naive)"
            continue
        try:
            naive_paths[b] = str(export_naive(model, preset, b, out_dir / f"naive_b{b}.onnx"))
        except Exception as err:  # noqa: BLE001 - report, do not stop the other backends
            naive_paths[b] = f"unavailable: legacy export failed at batch {b}: {type(err).__name__}: {err}"[:300]
    return PreparedModels(preset, str(ckpt), str(engine), naive_paths, checkpoint is None,
                          checkpoint or "random weights (torch.manual_seed(0)), FrozenBN calibrated on 4 images", sha,
                          model)
