"""Shared helpers: small detectors of both presets' architectures, and ONNX Runtime runners.

Reduced inputs keep the suite fast: a 128x128 input whose 64x64 central crop is
resized to 128x128 (popp2024's ResNet-50 FPN) or to 80x80 and zero-padded to 96x96
(native's ConvNeXt-pico FPN). Random weights with data-calibrated FrozenBatchNorm
statistics (``calibrate_frozen_bn``) give varied, non-saturated scores.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from clumpdet.engine.contracts import InputSpec, PostProcessConfig
from clumpdet.engine.metrics import Detections, detections_from_batch
from clumpdet.train.models import build_model, calibrate_frozen_bn
from clumpdet.train.presets import NATIVE, POPP2024

CROP = (32, 32, 64, 64)
SMALL_POPP = POPP2024.with_options(
    input=InputSpec(height=128, width=128, crop=CROP, internal_size=(128, 128)),
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    postprocess=PostProcessConfig(final_score_thresh=0.05),
)
#: More candidates than K: no agnostic NMS, top 8 per image, K = 10 (two padding rows).
SMALL_NATIVE = NATIVE.with_options(
    input=InputSpec(height=128, width=128, crop=CROP, internal_size=(80, 80)),
    rpn_pre_nms_top_n_test=150,
    rpn_post_nms_top_n_test=60,
    postprocess=PostProcessConfig(final_score_thresh=0.05, agnostic_nms_iou=None, detections_per_img=8, max_detections=10),
)


def make_images(n: int, seed: int, size: int = 128) -> torch.Tensor:
    """``[n, 3, size, size]`` float32 in [0, 1]: noise plus a few Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = rng.uniform(0.0, 0.3, size=(n, 3, size, size))
    for img in out:
        for _ in range(6):
            cx, cy, s = rng.uniform(30, 98), rng.uniform(30, 98), rng.uniform(1.5, 6)
            img += rng.uniform(0.2, 0.7, size=(3, 1, 1)) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return torch.from_numpy(np.clip(out, 0, 1).astype(np.float32))


def calibrated(preset, seed: int):
    """A randomly initialised model of ``preset`` with calibrated FrozenBN, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(preset)
    x0, y0, w, h = CROP
    calibrate_frozen_bn(model, make_images(4, seed + 100)[:, :, y0 : y0 + h, x0 : x0 + w])
    return model.eval()


def session(path) -> ort.InferenceSession:
    """A single-threaded ONNX Runtime CPU session."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(sess: ort.InferenceSession, images: torch.Tensor) -> tuple[list[Detections], list[np.ndarray]]:
    """Run the model on one batch; return per-image Detections and the raw outputs."""
    outs = sess.run(None, {"images": images.numpy()})
    return detections_from_batch(*outs), outs

