"""Metadata round-trips through ONNX-style string props; bad configs are refused."""

import pytest

from clumpdet.engine.contracts import ModelMetadata, PostProcessConfig
from clumpdet.train.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_metadata_round_trip(name):
    preset = get_preset(name)
    meta = ModelMetadata(
        preset=preset.name,
        class_names=preset.class_names,
        input=preset.input,
        postprocess=preset.postprocess,
        reference_metrics={"completeness": 0.8},
    )
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert ModelMetadata.from_props(props) == meta


def test_missing_metadata_names_the_source():
    with pytest.raises(ValueError, match="m.onnx: missing clumpdet metadata key 'clumpdet.preset'"):
        ModelMetadata.from_props({}, source="m.onnx")


@pytest.mark.parametrize(
    "kwargs", [{"score_thresh": 1.5}, {"agnostic_nms_iou": -0.1}, {"max_detections": 10}]
)
def test_postprocess_config_validates(kwargs):
    with pytest.raises(ValueError, match="PostProcessConfig"):
        PostProcessConfig(**kwargs)


def test_unknown_preset_lists_known():
    with pytest.raises(KeyError, match="popp2024"):
        get_preset("nope")
