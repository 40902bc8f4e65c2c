"""The reference Faster R-CNN and its backbones (DESIGN §2)."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from clumpdet.train.models import build_model
from clumpdet.train.models.reference import transform_sizes
from clumpdet.train.models.resnet_backbone import (
    build_resnet50_fpn_backbone,
    detect_resnet50_layout,
    resnet50_body_state_dict,
)
from clumpdet.train.models.timm_backbone import (
    ZOOBOT2_ENCODERS,
    TimmFPNBackbone,
    build_timm_fpn_backbone,
    encoder_state_dict,
)
from clumpdet.train.presets import NATIVE, POPP2024

torch.set_num_threads(1)


def test_popp2024_is_torchvision_fasterrcnn_resnet50_fpn():
    model = build_model(POPP2024)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    ours = model.state_dict()
    theirs = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)

    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 53
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert anchors.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    t = model.transform
    assert (t.min_size, t.max_size) == ((800,), 1333)
    assert t.image_mean == [0.485, 0.456, 0.406] and t.image_std == [0.229, 0.224, 0.225]
    rpn = model.rpn
    assert (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], rpn.nms_thresh) == (1000, 1000, 0.7)
    heads = model.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    assert heads.box_roi_pool.output_size == (7, 7) and heads.box_roi_pool.sampling_ratio == 2
    assert heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert heads.box_head.fc6.in_features == 256 * 7 * 7 and heads.box_head.fc7.out_features == 1024
    assert heads.box_predictor.cls_score.out_features == 3
    # trainable_layers=3: layer2-4 train, conv1 and layer1 stay frozen (FrozenBN has no parameters).
    body = model.backbone.body
    for name in ("layer2", "layer3", "layer4"):
        assert all(p.requires_grad for p in getattr(body, name).parameters())
    for name in ("conv1", "layer1"):
        assert not any(p.requires_grad for p in getattr(body, name).parameters())


def test_native_builds_with_truncated_convnext_pico_and_four_levels():
    model = build_model(NATIVE).eval()
    assert isinstance(model.backbone, TimmFPNBackbone)
    # The encoder stops at stride 16: the stride-32 stage's parameters are gone.
    assert model.backbone.body.feature_info.channels() == [64, 128, 256]
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,))
    assert model.roi_heads.box_head.fc7.out_features == 256
    assert sum(p.numel() for p in model.parameters()) < 10_000_000  # ships as a < 40 MB ONNX
    assert (model.transform.min_size, model.transform.max_size) == ((200,), 1333)
    assert (model.rpn._pre_nms_top_n["testing"], model.rpn._post_nms_top_n["testing"]) == (300, 100)
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 224, 224))
        out = model([torch.rand(3, 200, 200)])
    assert list(feats) == ["0", "1", "2", "pool"]
    assert [f.shape[-1] for f in feats.values()] == [56, 28, 14, 7]
    assert all(f.shape[1] == 128 for f in feats.values())
    assert set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4


def test_transform_sizes_reach_internal_size_and_reject_bad_presets():
    assert transform_sizes(POPP2024) == (800, 1333)
    assert transform_sizes(NATIVE) == (200, 1333)
    squashed = POPP2024.with_options(input=dataclasses.replace(POPP2024.input, internal_size=(800, 400)))
    with pytest.raises(ValueError, match="not a uniform rescale"):
        transform_sizes(squashed)
    with pytest.raises(ValueError, match="anchor sizes"):
        build_model(POPP2024.with_options(anchor_sizes=(32, 64, 128)))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(POPP2024.with_options(backbone="vgg16"))


# --------------------------------------------------------------------------- ResNet-50 weights


@pytest.fixture(scope="module")
def resnet50_source():
    torch.manual_seed(1)
    return torchvision.models.resnet50(weights=None)


def _assert_body_equals(body: nn.Module, source: nn.Module) -> None:
    src = source.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.1.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(body.state_dict()[key], src[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet_body_loads_imagenet_layout(tmp_path, resnet50_source, suffix):
    path = tmp_path / f"resnet50{suffix}"
    state = resnet50_source.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model(POPP2024, backbone_weights=path)
    _assert_body_equals(model.backbone.body, resnet50_source)


def test_resnet_body_loads_zoobot1_lightning_checkpoint(tmp_path, resnet50_source):
    # Zoobot 1 (resnet_torchvision): LightningModule.model = Sequential(encoder, dropout, dirichlet head),
    # encoder = Sequential(*list(resnet50().children())[:-1], Flatten()).
    encoder = nn.Sequential(*list(resnet50_source.children())[:-1], nn.Flatten(1))
    state = {f"model.0.{k}": v for k, v in encoder.state_dict().items()}
    state["model.2.linear.weight"] = torch.randn(34, 2048)
    state["model.2.linear.bias"] = torch.randn(34)
    path = tmp_path / "zoobot.ckpt"
    torch.save({"epoch": 12, "global_step": 3400, "pytorch-lightning_version": "1.6.5", "state_dict": state}, path)

    assert detect_resnet50_layout(state) == ("zoobot1", "model.0.")
    backbone = build_resnet50_fpn_backbone(0, path)
    _assert_body_equals(backbone.body, resnet50_source)
    assert not any(p.requires_grad for p in backbone.body.parameters())  # trainable_layers=0

    bare = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    renamed = resnet50_body_state_dict(bare)
    assert torch.equal(renamed["layer3.5.conv2.weight"], resnet50_source.layer3[5].conv2.weight)
    assert not any(k.endswith("num_batches_tracked") for k in renamed)


def test_resnet_body_rejects_wrong_weights(tmp_path):
    wrong_arch = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong_arch)
    with pytest.raises(ValueError, match="does not fit the ResNet-50 body.*wrong shapes"):
        build_resnet50_fpn_backbone(3, wrong_arch)
    not_resnet = tmp_path / "convnext.safetensors"
    save_file(timm.create_model("convnext_pico", pretrained=False).state_dict(), str(not_resnet))
    with pytest.raises(ValueError, match="neither a torchvision resnet50"):
        build_resnet50_fpn_backbone(3, not_resnet)


# --------------------------------------------------------------------------- Zoobot-2 timm encoders


def _check_timm_encoder(name: str, tmp_path) -> None:
    torch.manual_seed(2)
    source = timm.create_model(name, pretrained=False)  # with its 1000-class head
    headless = {k: v for k, v in source.state_dict().items() if not k.startswith(("fc.", "head.fc."))}
    with_head = tmp_path / f"{name}.safetensors"
    save_file(source.state_dict(), str(with_head))
    without_head = tmp_path / f"{name}.pt"
    torch.save(headless, without_head)
    for path in (with_head, without_head):
        backbone = build_timm_fpn_backbone(name, weights=path)
        body = backbone.body.state_dict()
        first_conv = "stem_0.weight" if "stem_0.weight" in body else "conv1.weight"
        assert torch.equal(body[first_conv], source.state_dict()[first_conv.replace("stem_0", "stem.0")])
        last = [k for k in body if k.endswith("weight")][-1]
        assert torch.equal(body[last], source.state_dict()[last.replace("stages_", "stages.")])
        assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
        with torch.no_grad():
            feats = backbone.eval()(torch.rand(1, 3, 64, 64))
        assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]
    assert set(encoder_state_dict(name, with_head)) == set(headless)


@pytest.mark.parametrize("name", ["convnext_pico", "resnet18"])
def test_timm_encoder_loads_local_weights(tmp_path, name):
    _check_timm_encoder(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOOBOT2_ENCODERS)
def test_every_zoobot2_encoder_loads_local_weights(tmp_path, name):
    _check_timm_encoder(name, tmp_path)


def test_timm_encoder_rejects_wrong_weights(tmp_path):
    other_model = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(other_model))
    with pytest.raises(ValueError, match="is not a 'convnext_pico' state dict.*missing"):
        build_timm_fpn_backbone("convnext_pico", weights=other_model)
    other_size = {k: v for k, v in timm.create_model("convnext_nano", pretrained=False).state_dict().items()}
    with pytest.raises(ValueError, match="wrong shapes"):
        build_timm_fpn_backbone("convnext_pico", weights=other_size)


def test_timm_trainable_layers_and_frozen_batchnorm():
    convnext = build_timm_fpn_backbone("convnext_pico", trainable_layers=2)
    trainable = {n.split(".")[0] for n, p in convnext.body.named_parameters() if p.requires_grad}
    assert trainable == {"stages_2", "stages_3"}
    assert all(p.requires_grad for p in convnext.fpn.parameters())
    frozen = build_timm_fpn_backbone("resnet18", trainable_layers=0)
    assert not any(p.requires_grad for p in frozen.body.parameters())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.body.modules()) == 20
    everything = build_timm_fpn_backbone("resnet18", trainable_layers=5)
    assert all(p.requires_grad for p in everything.body.parameters())
    with pytest.raises(ValueError, match="trainable_layers"):
        build_timm_fpn_backbone("resnet18", trainable_layers=6)
