"""Checkpoints: the published DataParallel format, our safetensors format, safe loading."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import torch
import torchvision
from torch import nn

from clumpdet.engine.contracts import PostProcessConfig
from clumpdet.train.checkpoints import (
    load_model,
    preset_from_dict,
    preset_to_dict,
    read_checkpoint_config,
    read_published_state_dict,
    read_state_dict,
    save_checkpoint,
    sha256_file,
)
from clumpdet.train.models import build_model
from clumpdet.train.presets import NATIVE, POPP2024

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A checkpoint in the published format: torchvision model, 3 classes, saved from nn.DataParallel."""
    torch.manual_seed(3)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path_factory.mktemp("published") / "Zoobot_pre_trained_run20_120.pth"
    torch.save(nn.DataParallel(model).state_dict(), path)
    return path, model


def test_published_dataparallel_checkpoint_loads_strictly(published):
    path, source = published
    raw = read_state_dict(path)
    assert all(k.startswith("module.") for k in raw)
    stripped = read_published_state_dict(path)
    assert "roi_heads.box_predictor.cls_score.weight" in stripped

    model, preset = load_model(path)
    assert preset is POPP2024 and not model.training
    ours, theirs = model.state_dict(), source.state_dict()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # and strict=True directly, as the brief of the format says
    fresh = build_model(POPP2024)
    assert not fresh.load_state_dict(stripped, strict=True).missing_keys


def test_published_checkpoint_into_the_wrong_preset_fails_clearly(published):
    with pytest.raises(ValueError, match="does not fit preset 'native'"):
        load_model(published[0], NATIVE)


class _Payload:
    """Unpickling this would create a file: what an untrusted checkpoint can do."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_weights_only_refuses_a_pickle_with_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"not a plain tensor state dict: torch.load\(weights_only=True\) refused"):
        read_state_dict(path)
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        load_model(path)
    assert not marker.exists()


def test_read_state_dict_rejects_non_state_dicts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="holds a list"):
        read_state_dict(listed)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_dict(corrupt)
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, lightning)
    assert set(read_state_dict(lightning)) == {"w"}


def test_our_checkpoint_round_trips_model_and_modified_preset(tmp_path):
    preset = NATIVE.with_options(
        postprocess=PostProcessConfig(final_score_thresh=0.5, agnostic_nms_iou=None),
        input=dataclasses.replace(NATIVE.input, internal_size=(160, 160), crop=(120, 120, 160, 160)),
    )
    torch.manual_seed(4)
    model = build_model(preset)
    weights, config_path = save_checkpoint(model, preset, tmp_path / "run1", extra={"epochs": 2})
    assert (weights.name, config_path.name) == ("run1.safetensors", "run1.json")
    config = json.loads(config_path.read_text())
    assert config["preset"] == "native" and config["extra"] == {"epochs": 2}
    assert config["weights_sha256"] == sha256_file(weights)

    loaded, loaded_preset = load_model(weights)
    assert loaded_preset == preset
    assert loaded.roi_heads.score_thresh == preset.postprocess.score_thresh
    assert loaded.transform.min_size == (160,)
    original = model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in loaded.state_dict().items())
    assert read_checkpoint_config(config_path)[0] == preset
    with pytest.raises(ValueError, match="trained with preset 'native', not 'popp2024'"):
        load_model(weights, POPP2024)
    config_path.unlink()
    with pytest.raises(FileNotFoundError, match="config"):
        load_model(weights)


def test_presets_round_trip_through_json():
    for preset in (POPP2024, NATIVE):
        assert preset_from_dict(json.loads(json.dumps(preset_to_dict(preset)))) == preset


def test_sha256_file(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path, chunk_size=2) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
