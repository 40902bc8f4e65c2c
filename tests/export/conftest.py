"""Session fixtures: the small detectors of :mod:`tests.export.helpers`, exported once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clumpdet.export.onnx_export import export_onnx

from .helpers import SMALL_NATIVE, SMALL_POPP, calibrated, session


@pytest.fixture(scope="session")
def popp(tmp_path_factory):
    """Small popp2024-architecture model, exported once."""
    torch.set_num_threads(1)
    model = calibrated(SMALL_POPP, 0)
    path = export_onnx(
        model,
        SMALL_POPP,
        tmp_path_factory.mktemp("popp") / "popp_small.onnx",
        checkpoint_sha256="ab" * 32,
        training_data="random weights, calibrated FrozenBN (test)",
        reference_metrics={"completeness": 0.5},
    )
    return SimpleNamespace(model=model, preset=SMALL_POPP, path=path, session=session(path))


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """Small native-architecture model (ConvNeXt-pico, padded input, K > top-k), exported once."""
    torch.set_num_threads(1)
    model = calibrated(SMALL_NATIVE, 1)
    path = export_onnx(model, SMALL_NATIVE, tmp_path_factory.mktemp("native") / "native_small.onnx")
    return SimpleNamespace(model=model, preset=SMALL_NATIVE, path=path, session=session(path))
