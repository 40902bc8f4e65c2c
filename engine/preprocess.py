"""The one definition of model-input preprocessing (DESIGN §4).

Used by the simulator (to write PNGs), the PyTorch reference, the export
checks and the engine, so every path feeds the model bit-identical inputs.

Orientation: arrays are in numpy order everywhere, ``[row, column]`` with
row = FITS ``y`` (0-indexed) and column = FITS ``x``. A PNG written from a FITS
cube is *not* flipped: PNG row ``r`` is FITS data row ``r``.
"""

from __future__ import annotations

import numpy as np

from clumpdet.engine.contracts import LuptonStretch


def lupton_rgb_uint8(cube: np.ndarray, spec: LuptonStretch) -> np.ndarray:
    """Lupton et al. (2004) asinh composite of a 3-band flux cube.

    Parameters
    ----------
    cube : numpy.ndarray
        Float flux cube, shape ``(3, H, W)``, bands in the order of
        ``spec.bands`` (R, G, B; by default i, r, g). Must be finite.
    spec : LuptonStretch
        Stretch parameters (from the model's metadata).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array, shape ``(H, W, 3)``, RGB; exactly what
        :func:`astropy.visualization.make_lupton_rgb` returns.
    """
    cube = np.asarray(cube)
    if cube.ndim != 3 or cube.shape[0] != 3:
        msg = f"expected a (3, H, W) flux cube, got shape {cube.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(cube)):
        msg = "flux cube contains NaN or inf pixels; repair them before the stretch"
        raise ValueError(msg)
    from astropy.visualization import make_lupton_rgb  # only FITS input needs astropy here

    data = cube.astype(np.float64, copy=False)
    # astropy evaluates f(I)/I before masking I <= 0 (np.where), so pixels with zero
    # intensity warn "invalid value in divide" although the result (0) is right.
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(
            data[0], data[1], data[2], minimum=list(spec.minimum), stretch=spec.stretch, Q=spec.q
        )


def rgb_uint8_to_input(rgb: np.ndarray) -> np.ndarray:
    """Turn an ``(H, W, 3)`` uint8 RGB image into a ``(3, H, W)`` float32 model input in [0, 1]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        msg = f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}"
        raise ValueError(msg)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def cube_to_input(cube: np.ndarray, spec: LuptonStretch) -> np.ndarray:
    """Flux cube ``(3, H, W)`` -> float32 model input ``(3, H, W)`` in [0, 1].

    Goes through the same uint8 quantisation a PNG of the cube stores, so a
    FITS cutout and the PNG made from it give bit-identical model inputs.
    """
    return rgb_uint8_to_input(lupton_rgb_uint8(cube, spec))
