"""Data-dependent initialisation of FrozenBatchNorm statistics for randomly initialised models.

A randomly initialised ResNet-50 with FrozenBatchNorm2d (identity statistics:
mean 0, var 1) lets activations grow through 50 layers until every detection
score saturates at 1.0, which makes end-to-end tests and export parity checks
degenerate. :func:`calibrate_frozen_bn` sets each FrozenBatchNorm2d's running
mean and variance to the statistics of its own input on a batch, layer by
layer in forward order, so that activations stay O(1) and scores vary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


@torch.no_grad()
def calibrate_frozen_bn(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Set every FrozenBatchNorm2d's ``running_mean`` / ``running_var`` from one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision detector with ``transform`` and ``backbone`` (e.g. from
        :func:`clumpdet.train.models.build_model`).
    images : torch.Tensor or sequence of torch.Tensor
        float32 ``[N, 3, h, w]`` (or a list of ``[3, h, w]``) RGB in [0, 1], as
        the model's own ``forward`` takes them (i.e. already cropped). The
        model's transform normalises and resizes them.

    Returns
    -------
    int
        Number of FrozenBatchNorm2d layers calibrated (0 for a backbone
        without any, e.g. ConvNeXt).

    Notes
    -----
    Pre-forward hooks see each layer's input after all earlier layers were
    calibrated, so one pass suffices. Statistics are per channel over batch
    and space (population variance). The model's train/eval mode is restored.
    """
    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if not layers:
        return 0

    def hook(module: FrozenBatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    was_training = model.training
    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        model.eval()
        image_list, _ = model.transform(list(images))
        model.backbone(image_list.tensors)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return len(layers)
