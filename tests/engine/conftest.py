"""Fixtures for the engine tests: a small but real contract-honouring ONNX model, and cutouts.

The toy detector (built with ``onnx.helper``, run by the real onnxruntime) splits
the input into ``cell x cell`` tiles, scores each tile by the maximum of the
channel-mean image, keeps the top K tiles (``TopK``, sorted), applies the final
score threshold and zero-pads (DESIGN §3): ``num_dets [N]``, ``boxes [N, K, 4]``
(the tile, ``x1, y1, x2, y2`` in input pixels), ``scores [N, K]``, ``labels
[N, K]`` (1 when the tile's mean red exceeds its mean blue, else 2). So a bright
square inside tile ``(row, col)`` gives the box ``(col*cell, row*cell,
col*cell+cell, row*cell+cell)`` with a known label. Dynamic batch, fixed K,
metadata from the ``native`` preset via ``ModelMetadata.to_props()``.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.train.presets import NATIVE

CELL = 8


def build_toy_model(path, preset=NATIVE, cell: int = CELL, metadata: bool = True) -> str:
    """Write the toy detector for ``preset``'s input/post-processing contract to ``path``."""
    onnx = pytest.importorskip("onnx", reason="building the test model needs onnx (the [export] extra)")
    from onnx import TensorProto as T
    from onnx import helper as h

    spec, post = preset.input, preset.postprocess
    gh, gw, k = spec.height // cell, spec.width // cell, post.max_detections
    assert spec.height % cell == 0 and spec.width % cell == 0 and gh * gw >= k

    def const(name, value, dtype):
        arr = np.asarray(value, dtype=dtype)
        return h.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(arr, name))

    pool = {"kernel_shape": [cell, cell], "strides": [cell, cell]}
    nodes = [
        const("flat_shape", [0, -1], np.int64), const("k", [k], np.int64), const("gw", gw, np.int64),
        const("cell", float(cell), np.float32), const("thr", post.final_score_thresh, np.float32),
        const("one", 1, np.int64), const("two", 2, np.int64), const("ax_last", [-1], np.int64),
        const("ax1", [1], np.int64), const("c0", [0], np.int64), const("c1", [1], np.int64),
        const("c2", [2], np.int64), const("c3", [3], np.int64),
        h.make_node("ReduceMean", ["images"], ["grey"], axes=[1], keepdims=1),
        h.make_node("MaxPool", ["grey"], ["tile_max"], **pool),
        h.make_node("Reshape", ["tile_max", "flat_shape"], ["tile_score"]),
        h.make_node("Slice", ["images", "c0", "c1", "ax1"], ["red"]),
        h.make_node("Slice", ["images", "c2", "c3", "ax1"], ["blue"]),
        h.make_node("AveragePool", ["red"], ["red_mean"], **pool),
        h.make_node("AveragePool", ["blue"], ["blue_mean"], **pool),
        h.make_node("Reshape", ["red_mean", "flat_shape"], ["red_flat"]),
        h.make_node("Reshape", ["blue_mean", "flat_shape"], ["blue_flat"]),
        h.make_node("Greater", ["red_flat", "blue_flat"], ["redder"]),
        h.make_node("TopK", ["tile_score", "k"], ["top", "idx"], axis=-1, largest=1, sorted=1),
        h.make_node("Div", ["idx", "gw"], ["row"]),
        h.make_node("Mod", ["idx", "gw"], ["col"]),
        h.make_node("Cast", ["col"], ["colf"], to=T.FLOAT),
        h.make_node("Cast", ["row"], ["rowf"], to=T.FLOAT),
        h.make_node("Mul", ["colf", "cell"], ["x1"]),
        h.make_node("Mul", ["rowf", "cell"], ["y1"]),
        h.make_node("Add", ["x1", "cell"], ["x2"]),
        h.make_node("Add", ["y1", "cell"], ["y2"]),
        *[h.make_node("Unsqueeze", [v, "ax_last"], [f"{v}_u"]) for v in ("x1", "y1", "x2", "y2")],
        h.make_node("Concat", ["x1_u", "y1_u", "x2_u", "y2_u"], ["raw_boxes"], axis=-1),
        h.make_node("GreaterOrEqual", ["top", "thr"], ["keep"]),
        h.make_node("Cast", ["keep"], ["keepf"], to=T.FLOAT),
        h.make_node("Cast", ["keep"], ["keepi"], to=T.INT64),
        h.make_node("Mul", ["top", "keepf"], ["scores"]),
        h.make_node("Unsqueeze", ["keepf", "ax_last"], ["keepf_u"]),
        h.make_node("Mul", ["raw_boxes", "keepf_u"], ["boxes"]),
        h.make_node("Cast", ["redder"], ["redder_i"], to=T.INT64),
        h.make_node("GatherElements", ["redder_i", "idx"], ["redder_k"], axis=1),
        h.make_node("Cast", ["redder_k"], ["redder_b"], to=T.BOOL),
        h.make_node("Where", ["redder_b", "one", "two"], ["raw_labels"]),
        h.make_node("Mul", ["raw_labels", "keepi"], ["labels"]),
        h.make_node("ReduceSum", ["keepi", "ax1"], ["num_dets"], keepdims=0),
    ]
    graph = h.make_graph(
        nodes, "clumpdet_toy",
        [h.make_tensor_value_info("images", T.FLOAT, ["N", 3, spec.height, spec.width])],
        [h.make_tensor_value_info("num_dets", T.INT64, ["N"]),
         h.make_tensor_value_info("boxes", T.FLOAT, ["N", k, 4]),
         h.make_tensor_value_info("scores", T.FLOAT, ["N", k]),
         h.make_tensor_value_info("labels", T.INT64, ["N", k])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], producer_name="clumpdet-tests")
    model.ir_version = 9
    if metadata:
        meta = ModelMetadata(preset=preset.name, class_names=preset.class_names, input=spec,
                             postprocess=post, exporter="tests/engine/conftest.py toy", opset=17,
                             clumpdet_version="test")
        h.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="session")
def toy_model_path(tmp_path_factory) -> str:
    """Path to the toy ONNX detector (native preset contract). Swap for a real export here."""
    return build_toy_model(tmp_path_factory.mktemp("model") / "toy.onnx")


@pytest.fixture(scope="session")
def spec():
    """The model input contract the fixtures are made for."""
    return NATIVE.input


#: Sources of :func:`make_cube`: (x, y) pixel of a 4x4 square's top-left corner, colour.
SOURCES = ((200, 96, "red"), (104, 240, "blue"), (296, 304, "red"))


def make_cube(height: int = 400, width: int = 400, sources=SOURCES, seed: int = 0) -> np.ndarray:
    """A float32 flux cube in file band order (g, r, i): faint noise plus 4x4 bright squares.

    Each square sits inside one toy-model tile, so the expected box is the tile.
    """
    rng = np.random.default_rng(seed)
    cube = rng.normal(0.0, 0.005, size=(3, height, width)).astype(np.float32)
    for x, y, colour in sources:
        g, r, i = (5.0, 20.0, 60.0) if colour == "red" else (60.0, 20.0, 5.0)
        for plane, flux in zip(cube, (g, r, i)):
            plane[y : y + 4, x : x + 4] += flux
    return cube


def expected_boxes(sources=SOURCES, cell: int = CELL) -> dict[tuple[float, ...], int]:
    """``{(x1, y1, x2, y2): label}`` the toy model should find for :func:`make_cube`."""
    out = {}
    for x, y, colour in sources:
        c, r = x // cell, y // cell
        out[(c * cell, r * cell, c * cell + cell, r * cell + cell)] = 1 if colour == "red" else 2
    return out


def wcs_header(height: int = 400, width: int = 400) -> fits.Header:
    """A TAN header: CRVAL (150.1, 2.2) deg at CRPIX (200.5, 200.5), 0.396 arcsec/pixel."""
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRPIX1"], hdr["CRPIX2"] = width / 2 + 0.5, height / 2 + 0.5
    hdr["CRVAL1"], hdr["CRVAL2"] = 150.1, 2.2
    hdr["CDELT1"], hdr["CDELT2"] = -0.396 / 3600, 0.396 / 3600
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["RADESYS"] = "ICRS"
    return hdr


def write_cube_fits(path, cube: np.ndarray, header: fits.Header | None = None) -> str:
    """Write a (3, H, W) cube (g, r, i) as the primary HDU, with an optional WCS header."""
    fits.PrimaryHDU(cube, header=header).writeto(path, overwrite=True)
    return str(path)
