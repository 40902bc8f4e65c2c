"""The bundled default model runs through the engine and finds the example cutouts' known clumps."""

import json
from pathlib import Path

import numpy as np
import pytest

from clumpdet.engine.detector import Detector
from clumpdet.engine.metrics import Truth, evaluate

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "clumpdet-native-sim.onnx"
EXAMPLES = ROOT / "examples" / "cutouts"


def _truth(path: Path) -> dict[str, Truth]:
    coco = json.loads(path.read_text())
    out = {}
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=float).reshape(-1, 4)
        out[im["file_name"]] = Truth(boxes, np.array([a["category_id"] for a in anns], dtype=np.int64))
    return out


def test_bundled_model_metadata_drives_the_engine():
    detector = Detector(MODEL)
    meta = detector.metadata
    assert meta.preset == "native"
    assert meta.class_names == ("background", "clump", "odd_clump")
    assert detector.score_threshold == pytest.approx(meta.postprocess.final_score_thresh)
    assert meta.reference_metrics["completeness"] > 0.8


def test_bundled_model_finds_the_example_clumps():
    truth = _truth(EXAMPLES / "annotations.json")
    results = Detector(MODEL).detect_files([str(EXAMPLES / name) for name in truth])
    assert [r.status for r in results].count("failed") == 0
    preds = [r.detections for r in results]
    res = evaluate(preds, list(truth.values()), score_thresh=0.0, n_boot=0)
    # 25 true objects in 8 cutouts (FITS and PNG); measured 25 found, 4 false (2026-11-25).
    assert res.n_true == 25
    assert res.completeness >= 0.9
    assert res.purity >= 0.75
    # The empty cutout stays empty.
    assert len(preds[list(truth).index("sim_000007.png")]) == 0
