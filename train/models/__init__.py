"""Model builders: the torchvision Faster R-CNN reference and its backbones (DESIGN §2).

Public API
----------
build_model(preset, *, backbone_weights=None) -> torchvision FasterRCNN
calibrate_frozen_bn(model, images) -> int
"""

from clumpdet.train.models.calibrate import calibrate_frozen_bn
from clumpdet.train.models.reference import build_model

__all__ = ["build_model", "calibrate_frozen_bn"]
