"""Model presets: architecture plus the contracts that travel with an exported model.

A preset is the single source of truth for one detector configuration. The
architecture fields are read by :mod:`clumpdet.train` builders and by the export
wrapper; ``input`` and ``postprocess`` are engine contracts
(:mod:`clumpdet.engine.contracts`) that get written into the ONNX metadata.
This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from clumpdet.engine.contracts import InputSpec, LuptonStretch, PostProcessConfig

CLUMP_CLASSES = ("background", "clump", "odd_clump")


@dataclass(frozen=True)
class Preset:
    """One detector configuration.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"popp2024"``.
    class_names : tuple of str
        Index = label id; index 0 is the background class.
    backbone : str
        ``"resnet50"`` (torchvision, FrozenBatchNorm, FPN; ImageNet or Zoobot-1
        weights) or ``"timm:<name>"`` for a Zoobot-2 timm encoder
        (``convnext_pico``, ``convnext_nano``, ``resnet18``, ``resnet50``).
    trainable_layers : int
        Backbone blocks left trainable (0–5, torchvision semantics).
    input : InputSpec
        The model input contract (size, internal crop and resize, normalisation,
        FITS stretch). Boxes are always reported in ``input`` pixels.
    anchor_sizes : tuple of int
        One anchor size per FPN level, in *internal* (resized) pixels.
    aspect_ratios : tuple of float
        Anchor aspect ratios (height / width), shared by every level.
    feature_strides : tuple of int
        Strides of the encoder feature maps fed to the FPN; the FPN adds one
        max-pooled level on top, so there are ``len(feature_strides) + 1``
        levels and as many ``anchor_sizes``. RoIAlign uses the encoder levels.
    fpn_channels : int
        Width of every FPN level (and of the RPN head's convolution).
    box_head_dim : int
        Width of the two fully connected layers of the box head (TwoMLPHead).
    rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test : int
        Proposal budget at inference (per level before NMS, per image after).
    rpn_nms_thresh : float
        IoU of the RPN's NMS.
    postprocess : PostProcessConfig
        The detection post-processing chain.
    """

    name: str
    class_names: tuple[str, ...]
    backbone: str
    trainable_layers: int
    input: InputSpec
    anchor_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    feature_strides: tuple[int, ...] = (4, 8, 16, 32)
    fpn_channels: int = 256
    box_head_dim: int = 1024
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.anchor_sizes) != len(self.feature_strides) + 1:
            msg = (
                f"preset {self.name!r}: {len(self.anchor_sizes)} anchor sizes for "
                f"{len(self.feature_strides) + 1} FPN levels (feature_strides {self.feature_strides} + pool)"
            )
            raise ValueError(msg)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def with_options(self, **changes: object) -> "Preset":
        """Return a copy with some fields replaced (e.g. a smaller proposal budget)."""
        return replace(self, **changes)


POPP2024 = Preset(
    name="popp2024",
    class_names=CLUMP_CLASSES,
    backbone="resnet50",
    trainable_layers=3,
    # Training input of Popp et al. 2024: the 400x400 Clump Scout PNG, central
    # 200x200 crop (pixels 100-300), resized by the model transform to 800x800
    # (min_size 800, max_size 1333). The authors' prediction script fed the full
    # 400x400 instead; this preset follows the training input.
    input=InputSpec(
        height=400,
        width=400,
        crop=(100, 100, 200, 200),
        internal_size=(800, 800),
        lupton=LuptonStretch(),
    ),
    anchor_sizes=(32, 64, 128, 256, 512),
    description="Popp et al. 2024: torchvision fasterrcnn_resnet50_fpn v1, 200x200 crop upsampled 4x",
)

NATIVE = Preset(
    name="native",
    class_names=CLUMP_CLASSES,
    backbone="timm:convnext_pico",
    trainable_layers=5,
    # Throughput preset: the same central 200x200 crop at its own resolution
    # (no 4x upsampling), anchors sized to clumps (~6-32 px at 0.396"/px), a
    # small proposal budget, and a model small enough to ship (~6M parameters):
    # the encoder stops at stride 16 (clumps are a few pixels; a stride-32 map
    # of a 200 px crop is 7x7), a 128-wide FPN and a 256-wide box head.
    input=InputSpec(
        height=400,
        width=400,
        crop=(100, 100, 200, 200),
        internal_size=(200, 200),
        lupton=LuptonStretch(),
    ),
    anchor_sizes=(8, 16, 32, 64),
    feature_strides=(4, 8, 16),
    fpn_channels=128,
    box_head_dim=256,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    description="Native-resolution throughput preset with a Zoobot-2 timm encoder",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (POPP2024, NATIVE)}


def get_preset(name: str) -> Preset:
    """Look up a preset by name; raise ``KeyError`` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        msg = f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        raise KeyError(msg) from None
