"""Truth sources: star-forming clumps (label 1) and red foreground stars (label 2).

Flux fraction (both labels) = source r-band flux / host-galaxy r-band flux,
host = disc + bulge + bar + arm knots (:attr:`Galaxy.flux_r`, integrated to
infinity); clumps are added on top of the host, not carved out of it.

Truth box: a square centred on the source with side
``box_fwhm_factor * fwhm_obs`` (default 2 x), where ``fwhm_obs`` is the r-band
FWHM of the source as observed, ``sqrt(fwhm_psf^2 + fwhm_intrinsic^2)``
(the Gaussian sum rule; stars have no intrinsic size). Half the side is then
about one observed FWHM, the centre-matching radius of DESIGN §6. Boxes are
``(x1, y1, x2, y2)`` in image pixels, pixel ``i`` spanning ``[i, i + 1)``.

Placement rules (so that every truth is well defined): boxes lie entirely in
the central region ``[lo, hi)^2``; centres are at least ``exclusion_boxes``
box sides from the galaxy nucleus (volunteers do not mark the bulge) and
from every other truth source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from clumpdet.train.simulate.galaxy import Galaxy, draw_log_uniform, draw_uniform
from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.profiles import gaussian_stamp
from clumpdet.train.simulate.psf import GAUSS_FWHM


@dataclass(frozen=True)
class Source:
    """One truth source (pixels; fluxes in nmgy)."""

    label: int  # 1 clump, 2 odd_clump (index into CLUMP_CLASSES)
    x: float
    y: float
    flux_fraction: float
    flux_r: float
    gr: float
    ri: float
    fwhm_int: float  # intrinsic FWHM, pixels (0 for stars)
    fwhm_obs: float  # observed r-band FWHM, pixels
    r_over_re: float  # disc-plane radius / disc Re (nan for stars)
    on_arm: bool

    def box(self, factor: float) -> tuple[float, float, float, float]:
        """Square truth box ``(x1, y1, x2, y2)`` of side ``factor * fwhm_obs``."""
        h = 0.5 * factor * self.fwhm_obs
        return (self.x - h, self.y - h, self.x + h, self.y + h)


def _fractions(rng: np.random.Generator, n: int, p: SimParams) -> list[float]:
    for _ in range(100):
        fr = [draw_log_uniform(rng, p.clump_fraction) for _ in range(n)]
        if sum(fr) <= p.clump_fraction_sum_max:
            return fr
    return fr[:1]


def _fits(x: float, y: float, side: float, placed: list[tuple[float, float, float]],
          gal: Galaxy, p: SimParams) -> bool:
    lo, hi = p.central
    h = 0.5 * side
    if x - h < lo or y - h < lo or x + h > hi or y + h > hi:
        return False
    if np.hypot(x - gal.x0, y - gal.y0) < p.exclusion_boxes * side:
        return False
    return all(np.hypot(x - a, y - b) >= p.exclusion_boxes * max(side, s) for a, b, s in placed)


def sample_sources(
    rng: np.random.Generator, gal: Galaxy, fwhm_psf_r: float, p: SimParams
) -> list[Source]:
    """Draw the clumps and (maybe) a foreground star of one image.

    ``fwhm_psf_r`` is the r-band PSF FWHM in pixels. Sources that cannot be
    placed by the rules above in ``p.place_tries`` tries are dropped.
    """
    out: list[Source] = []
    placed: list[tuple[float, float, float]] = []
    n = 0 if rng.random() < p.no_clump_prob else min(1 + int(rng.poisson(p.clumps_extra_mean)), p.clumps_max)
    fracs = _fractions(rng, n, p) if n else []
    for frac in fracs:
        fwhm_int = draw_log_uniform(rng, p.clump_fwhm_kpc) / gal.kpc_per_pix
        fwhm_obs = float(np.hypot(fwhm_psf_r, fwhm_int))
        side = p.box_fwhm_factor * fwhm_obs
        gr, ri = draw_uniform(rng, p.clump_gr), draw_uniform(rng, p.clump_ri)
        for _ in range(p.place_tries):
            r = float(rng.gamma(2.0, gal.h))
            if r > p.clump_max_radius_h * gal.h:
                continue
            on_arm = bool(gal.n_arms) and rng.random() < p.clump_on_arm_prob
            if on_arm:
                k = int(rng.integers(gal.n_arms))
                phi = float(gal.arm_angle(r)) + 2 * np.pi * k / gal.n_arms
                phi += rng.normal(0.0, p.clump_arm_jitter_rad)
            else:
                phi = draw_uniform(rng, (0.0, 2.0 * np.pi))
            x, y = gal.disc_to_image(r, phi)
            if _fits(x, y, side, placed, gal, p):
                out.append(Source(1, x, y, frac, frac * gal.flux_r, gr, ri, fwhm_int, fwhm_obs,
                                  r / gal.re, on_arm))
                placed.append((x, y, side))
                break
    if rng.random() < p.star_prob:
        frac = draw_log_uniform(rng, p.star_fraction)
        gr, ri = draw_uniform(rng, p.star_gr), draw_uniform(rng, p.star_ri)
        side = p.box_fwhm_factor * fwhm_psf_r
        lo, hi = p.central
        for _ in range(p.place_tries):
            x, y = draw_uniform(rng, (lo, hi)), draw_uniform(rng, (lo, hi))
            if _fits(x, y, side, placed, gal, p):
                out.append(Source(2, x, y, frac, frac * gal.flux_r, gr, ri, 0.0, fwhm_psf_r,
                                  float("nan"), False))
                break
    return out


def render_source(
    src: Source, kernels: list[np.ndarray], band_factors: np.ndarray
) -> tuple[int, int, np.ndarray]:
    """PSF-convolved stamps of one source in every band.

    Parameters
    ----------
    src : Source
        The source.
    kernels : list of numpy.ndarray
        Per-band PSF kernels ``(2k + 1, 2k + 1)``, unit sum, order (g, r, i).
    band_factors : numpy.ndarray
        ``(3,)`` flux ratios to r (see :func:`galaxy.band_factor`).

    Returns
    -------
    (i0, j0, stamps)
        Row/column of the stamps' lower-left pixel in the image, and the float64
        ``(3, S, S)`` stamps (nmgy per pixel) to add there.
    """
    k = kernels[0].shape[0] // 2
    sigma = max(src.fwhm_int / GAUSS_FWHM, 1e-3)
    half = k + int(np.ceil(5.0 * sigma)) + 1
    i0, j0 = int(np.floor(src.y)) - half, int(np.floor(src.x)) - half
    size = 2 * half + 1
    intrinsic = gaussian_stamp((size, size), src.x - j0, src.y - i0, src.flux_r, sigma)
    stamps = np.stack([fftconvolve(intrinsic * f, kern, mode="same") for f, kern in zip(band_factors, kernels)])
    return i0, j0, np.clip(stamps, 0.0, None)


def add_stamp(image: np.ndarray, i0: int, j0: int, stamp: np.ndarray) -> None:
    """Add ``stamp`` (``(..., S, S)``) into ``image`` (``(..., H, W)``) at ``(i0, j0)``, clipped."""
    h, w = image.shape[-2:]
    s = stamp.shape[-1]
    a0, b0 = max(i0, 0), max(j0, 0)
    a1, b1 = min(i0 + s, h), min(j0 + s, w)
    if a1 > a0 and b1 > b0:
        image[..., a0:a1, b0:b1] += stamp[..., a0 - i0 : a1 - i0, b0 - j0 : b1 - j0]
