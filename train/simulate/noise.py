"""Sky, photon and read noise in SDSS-like units (nanomaggies per pixel)."""

from __future__ import annotations

import numpy as np

from clumpdet.train.simulate.params import SimParams


def electrons_per_nmgy(p: SimParams) -> np.ndarray:
    """``(3,)`` float64: electrons per nanomaggy in (g, r, i) = gain / NMGY."""
    return np.asarray(p.gain_e_per_dn) / np.asarray(p.nmgy_per_dn)


def sky_per_pixel(p: SimParams, offset_mag: float) -> np.ndarray:
    """``(3,)`` float64 sky level in nmgy per pixel for a sky ``offset_mag`` brighter/fainter."""
    mu = np.asarray(p.sky_mag_arcsec2) + offset_mag
    return 10.0 ** ((22.5 - mu) / 2.5) * p.pixel_scale**2


def variance_band(model: np.ndarray, sky: float, p: SimParams, band: int) -> np.ndarray:
    """Per-pixel noise variance (nmgy²) of a noiseless single-band ``model`` plus ``sky``.

    ``band`` indexes (g, r, i); ``model`` is any-shaped float flux, nmgy per pixel.
    """
    e = float(electrons_per_nmgy(p)[band])
    rn = float(p.read_noise_e[band])
    return (np.clip(model, 0.0, None) + sky) / e + (rn / e) ** 2


def observe(rng: np.random.Generator, model: np.ndarray, sky: np.ndarray, p: SimParams) -> np.ndarray:
    """Sky-subtracted noisy image.

    Photon noise is drawn in its Gaussian limit, ``N(λ, λ + rn²)`` electrons
    with ``λ = (model + sky) e``: the sky alone gives λ ≳ 300 e⁻ in every pixel
    and band, where Poisson and Gaussian differ by a skewness ``1/√λ < 0.06``
    (and drawing 480k Poisson variates would dominate the run time).

    Parameters
    ----------
    rng : numpy.random.Generator
        Noise source.
    model : numpy.ndarray
        Noiseless ``(3, H, W)`` float flux (nmgy per pixel), bands (g, r, i).
    sky : numpy.ndarray
        ``(3,)`` sky level, nmgy per pixel.
    p : SimParams
        Camera constants.

    Returns
    -------
    numpy.ndarray
        float32 ``(3, H, W)``: ``model + noise``, i.e. nmgy per pixel with the
        (exactly known) sky subtracted; noise variance as :func:`variance_band`.
    """
    variance = np.stack([variance_band(model[b], float(sky[b]), p, b) for b in range(model.shape[0])])
    sigma = np.sqrt(variance).astype(np.float32)
    return model.astype(np.float32) + sigma * rng.standard_normal(model.shape, dtype=np.float32)
