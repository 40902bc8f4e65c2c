"""Zoobot-2 timm encoders as FPN backbones for torchvision's Faster R-CNN.

The encoder is ``timm.create_model(name, features_only=True, pretrained=False)``
restricted to the feature maps of the preset's strides (by default 4, 8, 16
and 32); a torchvision ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` turns
them into one more level than strides (keys ``"0"``, ``"1"``, ..., ``"pool"``),
each ``out_channels`` wide (default 256), the same interface as the ResNet-50
FPN backbone. BatchNorm layers (the ResNet encoders) are replaced by
``torchvision.ops.FrozenBatchNorm2d`` after the weights are loaded.

Weights come from a local file holding the state dict of
``timm.create_model(name)`` (as published under ``mwalmsley/zoobot-encoder-<name>``
on the Hugging Face hub), with or without the classifier head, as safetensors
or a torch state dict. ``"hf-hub:mwalmsley/zoobot-encoder-<name>"`` downloads
them with timm, only when asked explicitly (needs network and
``huggingface_hub``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from clumpdet.train.checkpoints import check_state_dict, read_state_dict

#: The Zoobot-2 encoders published as ``mwalmsley/zoobot-encoder-<name>``.
ZOOBOT2_ENCODERS = ("convnext_pico", "convnext_nano", "resnet18", "resnet50")
#: Default feature strides fed to the FPN (P2–P5; P6 is LastLevelMaxPool).
FPN_REDUCTIONS = (4, 8, 16, 32)
#: Default FPN width, as torchvision's ResNet-50 FPN.
FPN_CHANNELS = 256
HUB_PREFIX = "hf-hub:"


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` encoder followed by an FPN.

    ``forward(x)``: ``x`` float32 ``[N, 3, H, W]`` (normalised) ->
    ``OrderedDict`` ``{"0": [N, C, H/s0, W/s0], "1": [N, C, H/s1, W/s1], ...,
    "pool": [N, C, H/(2 s_last), W/(2 s_last)]}`` with ``C = out_channels``
    and ``s_i`` the encoder strides (default 4, 8, 16, 32). Attribute
    ``out_channels``, as torchvision's ``FasterRCNN`` requires.
    """

    def __init__(self, body: nn.Module, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=list(body.feature_info.channels()),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _features_model(name: str, strides: tuple[int, ...] = FPN_REDUCTIONS) -> nn.Module:
    """timm features_only model returning exactly the feature maps of ``strides``.

    timm truncates the encoder after the last requested stage, so asking for
    strides (4, 8, 16) also drops the stride-32 stage's parameters.
    """
    body = timm.create_model(name, features_only=True, pretrained=False)
    reductions = tuple(body.feature_info.reduction())
    if reductions == tuple(strides):
        return body
    indices = tuple(i for i, r in enumerate(reductions) if r in strides)
    if tuple(reductions[i] for i in indices) != tuple(strides):
        msg = f"timm_backbone.py: {name!r} has feature strides {reductions}, need {tuple(strides)}"
        raise ValueError(msg)
    return timm.create_model(name, features_only=True, pretrained=False, out_indices=indices)


def _plain_key(features_key: str, plain_keys: set[str]) -> str:
    """Name of a features_only parameter in the plain timm model.

    timm's ``FeatureListNet`` flattens top-level ``nn.Sequential`` modules,
    joining names with ``_`` (``stem.0.weight`` -> ``stem_0.weight``).
    """
    if features_key in plain_keys:
        return features_key
    head, _, rest = features_key.partition(".")
    parent, _, child = head.rpartition("_")
    candidate = f"{parent}.{child}.{rest}" if rest else f"{parent}.{child}"
    if parent and candidate in plain_keys:
        return candidate
    msg = f"timm_backbone.py: cannot map features_only key {features_key!r} to the timm model's keys"
    raise RuntimeError(msg)


def encoder_state_dict(name: str, weights: str | os.PathLike | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read and check the weights of timm encoder ``name`` (plain-model keys, classifier dropped).

    Parameters
    ----------
    name : str
        timm model name, e.g. ``"convnext_pico"``.
    weights : str, os.PathLike or dict
        A local file, an already-read state dict, or ``"hf-hub:<repo>"``.

    Returns
    -------
    dict of str to torch.Tensor
        Keys exactly those of ``timm.create_model(name, num_classes=0)``.

    Raises
    ------
    ValueError
        If keys are missing or unexpected or shapes differ (e.g. weights of
        another encoder).
    """
    if isinstance(weights, dict):
        state, source = dict(weights), "state dict"
    elif str(weights).startswith(HUB_PREFIX):
        state = timm.create_model(str(weights), pretrained=True, num_classes=0).state_dict()
        source = str(weights)
    else:
        state, source = read_state_dict(weights), repr(str(weights))
    plain = timm.create_model(name, pretrained=False, num_classes=0)
    classifier = plain.pretrained_cfg.get("classifier") or ""
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {
        k: v for k, v in state.items() if not any(c and k.startswith(c + ".") for c in classifiers)
    }
    check_state_dict(plain.state_dict(), state, f"timm_backbone.py: {source} is not a {name!r} state dict")
    return state


def load_encoder_weights(body: nn.Module, name: str, weights: str | os.PathLike | dict[str, torch.Tensor]) -> None:
    """Load checked encoder weights (see :func:`encoder_state_dict`) into a features_only ``body``.

    Parameters after the last feature stage (ConvNeXt's ``head.norm``) are
    not part of the backbone and are ignored.
    """
    state = encoder_state_dict(name, weights)
    plain_keys = set(state)
    mapped = {k: state[_plain_key(k, plain_keys)] for k in body.state_dict()}
    body.load_state_dict(mapped, strict=True)


def freeze_batch_norm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with its statistics.

    Returns the number of layers replaced.
    """
    count = 0
    for child_name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight if child.affine else torch.ones_like(frozen.weight))
                frozen.bias.copy_(child.bias if child.affine else torch.zeros_like(frozen.bias))
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, child_name, frozen)
            count += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            msg = f"timm_backbone.py: cannot freeze {type(child).__name__} at {child_name!r} (not a plain BatchNorm2d)"
            raise ValueError(msg)
        else:
            count += freeze_batch_norm(child)
    return count


def _set_trainable(body: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of (stem, stage1..stage4); 5 = all trainable."""
    stage_names = [n.replace(".", "_") for n in body.feature_info.module_name()]
    children = [n for n, _ in body.named_children()]
    missing = [n for n in stage_names if n not in children]
    if missing:
        msg = f"timm_backbone.py: feature stages {missing} are not top-level modules of the encoder"
        raise RuntimeError(msg)
    first_stage = children.index(stage_names[0])
    groups = [children[:first_stage]] + [[n] for n in stage_names]
    # A truncated encoder (fewer stages) counts its layers from the top as well.
    first = max(0, len(groups) - trainable_layers)
    trainable = {n for group in groups[first:] for n in group} if trainable_layers else set()
    for child_name, child in body.named_children():
        child.requires_grad_(child_name in trainable)


def build_timm_fpn_backbone(
    name: str,
    *,
    trainable_layers: int = 5,
    weights: str | os.PathLike | None = None,
    feature_strides: tuple[int, ...] = FPN_REDUCTIONS,
    out_channels: int = FPN_CHANNELS,
) -> TimmFPNBackbone:
    """A Zoobot-2 timm encoder + FPN backbone.

    Parameters
    ----------
    name : str
        One of :data:`ZOOBOT2_ENCODERS` (other timm models with stride 4–32
        features may work but are not tested).
    trainable_layers : int
        0–5: how many of (stage4, stage3, stage2, stage1, stem) keep
        ``requires_grad``; the FPN is always trainable.
    weights : str or os.PathLike, optional
        Local weights file, or ``"hf-hub:mwalmsley/zoobot-encoder-<name>"``
        (network; only on explicit request). ``None``: random init.
    feature_strides : tuple of int
        Encoder strides fed to the FPN (a subset of the encoder's, in order).
    out_channels : int
        FPN width.
    """
    if not 0 <= trainable_layers <= 5:
        msg = f"timm_backbone.py: trainable_layers must be in 0..5, got {trainable_layers}"
        raise ValueError(msg)
    body = _features_model(name, tuple(feature_strides))
    if weights is not None:
        load_encoder_weights(body, name, weights)
    freeze_batch_norm(body)
    _set_trainable(body, trainable_layers)
    return TimmFPNBackbone(body, out_channels=out_channels)
