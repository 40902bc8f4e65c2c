"""Contracts shared by every part of clumpdet (DESIGN.md §3–§5).

One frozen, typed object per concern. The reference ``predict()``, the export
wrapper and the engine all read the same instances, so a threshold is declared
exactly once (STYLE 5). Everything here round-trips through JSON so that it can
travel in an ONNX model's ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

#: Version of the metadata layout written into exported models.
METADATA_FORMAT_VERSION = 1
#: Tensor names of every exported model (DESIGN §3).
INPUT_NAME = "images"
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "labels")


@dataclass(frozen=True)
class PostProcessConfig:
    """The detection post-processing chain, applied in this order.

    Parameters
    ----------
    score_thresh : float
        Candidates with class score ``<= score_thresh`` are dropped first
        (torchvision's ``box_score_thresh``).
    class_nms_iou : float
        IoU threshold of the per-class NMS.
    detections_per_img : int
        Top-k kept after the per-class NMS.
    agnostic_nms_iou : float or None
        IoU threshold of the class-agnostic NMS that follows; ``None`` skips it.
    final_score_thresh : float
        Detections with score ``< final_score_thresh`` are dropped last; this is
        also the operating threshold of the completeness/purity metrics.
    max_detections : int
        K, the fixed number of output rows of an exported model
        (``>= detections_per_img``).
    """

    score_thresh: float = 0.05
    class_nms_iou: float = 0.5
    detections_per_img: int = 100
    agnostic_nms_iou: float | None = 0.2
    final_score_thresh: float = 0.3
    max_detections: int = 100

    def __post_init__(self) -> None:
        for name in ("score_thresh", "class_nms_iou", "final_score_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                msg = f"PostProcessConfig.{name} must lie in [0, 1], got {value!r}"
                raise ValueError(msg)
        if self.agnostic_nms_iou is not None and not 0.0 <= self.agnostic_nms_iou <= 1.0:
            msg = f"PostProcessConfig.agnostic_nms_iou must lie in [0, 1] or be None, got {self.agnostic_nms_iou!r}"
            raise ValueError(msg)
        if self.detections_per_img < 1:
            msg = f"PostProcessConfig.detections_per_img must be >= 1, got {self.detections_per_img}"
            raise ValueError(msg)
        if self.max_detections < self.detections_per_img:
            msg = (
                "PostProcessConfig.max_detections (K) must be >= detections_per_img, got "
                f"{self.max_detections} < {self.detections_per_img}"
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class LuptonStretch:
    """Parameters of the Lupton et al. (2004) asinh RGB composite (DESIGN §4).

    Same semantics as :func:`astropy.visualization.make_lupton_rgb`:
    ``I = (g + r + i) / 3`` after subtracting ``minimum``;
    ``f(I) = asinh(Q * I / stretch) / Q``; each band is scaled by ``f(I) / I``
    and clipped to [0, 1].

    Parameters
    ----------
    stretch : float
        Linear stretch of the image (flux units of the FITS data).
    q : float
        Asinh softening parameter ``Q``.
    minimum : tuple of float
        Black level subtracted from each band, order (i, r, g) -> (R, G, B).
    bands : tuple of str
        Band names mapped to (R, G, B), in that order.
    """

    stretch: float = 0.5
    q: float = 8.0
    minimum: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bands: tuple[str, str, str] = ("i", "r", "g")

    def __post_init__(self) -> None:
        if self.stretch <= 0 or self.q <= 0:
            msg = f"LuptonStretch needs stretch > 0 and q > 0, got stretch={self.stretch}, q={self.q}"
            raise ValueError(msg)


@dataclass(frozen=True)
class InputSpec:
    """What the exported model's ``images`` input expects.

    Parameters
    ----------
    height, width : int
        Fixed spatial size of ``images`` ``[N, 3, H, W]``.
    scaling : str
        How pixel values are scaled; always ``"rgb_0_1"`` (float32 RGB in [0, 1]).
    crop : tuple of int or None
        ``(x0, y0, width, height)`` crop the graph applies internally, in input
        pixels; ``None`` when the model sees the whole input. Informational: the
        caller never crops.
    internal_size : tuple of int
        ``(height, width)`` the graph resizes the (cropped) image to.
    mean, std : tuple of float
        Per-channel normalisation applied inside the graph.
    lupton : LuptonStretch
        How FITS flux cubes are turned into the RGB input.
    """

    height: int = 400
    width: int = 400
    scaling: str = "rgb_0_1"
    crop: tuple[int, int, int, int] | None = None
    internal_size: tuple[int, int] = (400, 400)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    lupton: LuptonStretch = field(default_factory=LuptonStretch)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything an exported model carries in ``metadata_props`` (DESIGN §3).

    Each field is stored under its own key as a JSON value.
    """

    preset: str
    class_names: tuple[str, ...]
    input: InputSpec
    postprocess: PostProcessConfig
    format_version: int = METADATA_FORMAT_VERSION
    checkpoint_sha256: str = ""
    training_data: str = ""
    reference_metrics: dict[str, Any] = field(default_factory=dict)
    exporter: str = ""
    opset: int = 0
    clumpdet_version: str = ""

    def to_props(self) -> dict[str, str]:
        """Serialise to ``{key: json_string}`` for ONNX ``metadata_props``."""
        return {f"clumpdet.{k}": json.dumps(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], *, source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; raise ``ValueError`` naming ``source`` if incomplete."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"clumpdet.{f.name}"
            if key not in props:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    msg = f"{source}: missing clumpdet metadata key {key!r} (not a clumpdet export?)"
                    raise ValueError(msg)
                continue
            try:
                values[f.name] = json.loads(props[key])
            except json.JSONDecodeError as err:
                msg = f"{source}: metadata key {key!r} is not valid JSON: {err}"
                raise ValueError(msg) from err
        if values.get("format_version", METADATA_FORMAT_VERSION) > METADATA_FORMAT_VERSION:
            msg = (
                f"{source}: metadata format {values['format_version']} is newer than this "
                f"clumpdet understands ({METADATA_FORMAT_VERSION}); upgrade clumpdet"
            )
            raise ValueError(msg)
        values["input"] = input_spec_from_dict(values["input"])
        values["postprocess"] = PostProcessConfig(**values["postprocess"])
        values["class_names"] = tuple(values["class_names"])
        return cls(**values)


def input_spec_from_dict(data: dict[str, Any]) -> InputSpec:
    """Inverse of ``dataclasses.asdict(InputSpec)`` after a JSON round trip (lists -> tuples)."""
    inp = dict(data)
    lupton = dict(inp.get("lupton", {}))
    inp["lupton"] = LuptonStretch(**{**lupton, **_tuples(lupton, ("minimum", "bands"))})
    return InputSpec(**{**inp, **_tuples(inp, ("crop", "internal_size", "mean", "std"))})


def _tuples(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """JSON turns tuples into lists; turn the named keys back."""
    return {k: tuple(d[k]) for k in keys if k in d and d[k] is not None}
