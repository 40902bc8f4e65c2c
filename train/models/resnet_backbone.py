"""The torchvision ResNet-50 + FPN backbone of Popp et al. (2024), with local weights.

The body is torchvision ``resnet50`` with ``FrozenBatchNorm2d`` and the FPN
over ``layer1``–``layer4`` plus ``LastLevelMaxPool`` (P2–P6, 256 channels):
exactly ``torchvision.models.detection.fasterrcnn_resnet50_fpn``'s backbone.

Body weights come from a local file in one of two layouts:

``"imagenet"``
    A torchvision ``resnet50`` state dict (``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight``, ..., ``fc.*``), e.g. ``IMAGENET1K_V1``.
``"zoobot1"``
    Zoobot 1 (PyTorch, ``architecture_name="resnet_torchvision"``). Its
    encoder is ``nn.Sequential(*list(torchvision.models.resnet50().children())[:-1],
    nn.Flatten())``, stored inside the LightningModule as ``model[0]``, so a
    checkpoint's ``state_dict`` keys read ``model.0.0.weight`` (conv1),
    ``model.0.1.*`` (bn1), ``model.0.4.*`` … ``model.0.7.*`` (layer1–layer4);
    head keys (``model.2.*``) are ignored. Any prefix before the Sequential
    index is accepted (``model.0.``, ``encoder.``, none).
"""

from __future__ import annotations

import os
import re

import torch
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from clumpdet.train.checkpoints import check_state_dict, read_state_dict

#: Index in Zoobot 1's ``nn.Sequential`` encoder -> torchvision ResNet attribute.
ZOOBOT1_SEQUENTIAL_NAMES = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
_ZOOBOT1_PROBE = re.compile(r"^(?P<prefix>(?:.*\.)?)4\.0\.conv1\.weight$")


def build_resnet50_fpn_backbone(
    trainable_layers: int, weights: str | os.PathLike | None = None
) -> BackboneWithFPN:
    """ResNet-50 + FPN (P2–P6, 256 channels) with FrozenBatchNorm, optionally with body weights.

    Parameters
    ----------
    trainable_layers : int
        0–5, torchvision semantics: how many of ``layer4, layer3, layer2,
        layer1, conv1`` keep ``requires_grad``; the FPN is always trainable.
    weights : str or os.PathLike, optional
        Local body weights file (``.pth``/``.pt``/``.safetensors``) in the
        ``"imagenet"`` or ``"zoobot1"`` layout (detected from the keys).
        ``None`` leaves the body randomly initialised.
    """
    if not 0 <= trainable_layers <= 5:
        msg = f"resnet_backbone.py: trainable_layers must be in 0..5, got {trainable_layers}"
        raise ValueError(msg)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=trainable_layers
    )
    if weights is not None:
        load_resnet50_body_weights(backbone.body, weights)
    return backbone


def detect_resnet50_layout(state_dict: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Return ``(layout, prefix)`` of a ResNet-50 state dict: ``("imagenet", "")`` or ``("zoobot1", prefix)``.

    Raises ``ValueError`` when neither layout is recognised.
    """
    if "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        return "imagenet", ""
    for key in state_dict:
        m = _ZOOBOT1_PROBE.match(key)
        if m and f"{m['prefix']}0.weight" in state_dict and f"{m['prefix']}7.0.conv1.weight" in state_dict:
            return "zoobot1", m["prefix"]
    msg = (
        "resnet_backbone.py: weights are neither a torchvision resnet50 state dict (conv1.weight, layer1.*) "
        f"nor a Zoobot-1 resnet_torchvision checkpoint (<prefix>0.weight, <prefix>4.0.conv1.weight); "
        f"first keys: {list(state_dict)[:5]}"
    )
    raise ValueError(msg)


def resnet50_body_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ImageNet or Zoobot-1 ResNet-50 state dict to torchvision body keys.

    Drops the classifier / Zoobot head and ``num_batches_tracked`` buffers
    (FrozenBatchNorm2d has none); returns ``conv1.weight``, ``bn1.weight``,
    ``layer1.0.conv1.weight``, ... .
    """
    layout, prefix = detect_resnet50_layout(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if layout == "imagenet":
            if not key.startswith("fc."):
                out[key] = value
            continue
        if not key.startswith(prefix):
            continue
        index, _, rest = key[len(prefix):].partition(".")
        if index.isdigit() and int(index) in ZOOBOT1_SEQUENTIAL_NAMES and rest:
            out[f"{ZOOBOT1_SEQUENTIAL_NAMES[int(index)]}.{rest}"] = value
    return out


def load_resnet50_body_weights(
    body: torch.nn.Module, weights: str | os.PathLike | dict[str, torch.Tensor]
) -> str:
    """Load ResNet-50 body weights strictly into ``body`` (``BackboneWithFPN.body``).

    Parameters
    ----------
    body : torch.nn.Module
        torchvision ``IntermediateLayerGetter`` over resnet50 (keys ``conv1.*`` … ``layer4.*``).
    weights : str, os.PathLike or dict
        A weights file or an already-read state dict.

    Returns
    -------
    str
        The detected layout, ``"imagenet"`` or ``"zoobot1"``.

    Raises
    ------
    ValueError
        If the layout is unknown, keys are missing or unexpected, or shapes differ.
    """
    source = weights if isinstance(weights, dict) else read_state_dict(weights)
    name = "state dict" if isinstance(weights, dict) else repr(str(weights))
    layout, _ = detect_resnet50_layout(source)
    renamed = resnet50_body_state_dict(source)
    check_state_dict(
        body.state_dict(), renamed, f"resnet_backbone.py: {name} ({layout} layout) does not fit the ResNet-50 body"
    )
    body.load_state_dict(renamed, strict=True)
    return layout
