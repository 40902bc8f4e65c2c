"""Host galaxies: sampling of the physical parameters and rendering (before the PSF).

A host is an exponential disc (optionally with logarithmic spiral arms that
redistribute its light, and faint disc-coloured arm knots), a Sérsic bulge and
optionally a Ferrers bar. All of it is host light: it defines the denominator of
the clump flux fraction and none of it is truth.

Coordinates: ``x`` column, ``y`` row, pixel ``i`` spans ``[i, i + 1)``.
Angles in radians; position angles measured from +x towards +y.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from math import lgamma

import numpy as np

from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.profiles import (
    elliptical_radius,
    ferrers_image,
    gaussian_stamp,
    sersic_image,
)
from clumpdet.train.simulate.psf import GAUSS_FWHM

EXP_RE_PER_H = 1.6783  # half-light radius of an exponential disc in scale lengths


@dataclass(frozen=True)
class Galaxy:
    """Sampled host parameters (lengths in pixels, fluxes in r-band nanomaggies)."""

    x0: float
    y0: float
    ra: float
    dec: float
    z: float
    abs_mag_r: float
    mag_r: float
    flux_r: float  # total host r flux (disc + bulge + bar + knots), nmgy
    kpc_per_pix: float
    re: float  # disc half-light radius (semi-major)
    q: float  # disc projected axis ratio
    pa: float
    cos_incl: float
    bt: float
    bulge_n: float
    bulge_re: float
    bulge_q: float
    bar_fraction: float  # 0 when no bar
    bar_a: float
    bar_q: float
    bar_pa: float
    n_arms: int  # 0 when no arms
    arm_pitch: float
    arm_amp: float
    arm_sharp: float
    arm_phase0: float
    disc_gr: float
    disc_ri: float
    bulge_gr: float
    bulge_ri: float
    knots: tuple[tuple[float, float, float, float], ...]  # (x, y, fraction, fwhm_pix)

    @property
    def h(self) -> float:
        """Exponential scale length, pixels."""
        return self.re / EXP_RE_PER_H

    def arm_angle(self, r: np.ndarray | float) -> np.ndarray | float:
        """Disc-plane azimuth of arm 0 at disc-plane radius ``r`` (pixels)."""
        return self.arm_phase0 + np.log(np.maximum(r, 1e-3) / self.h) / np.tan(self.arm_pitch)

    def disc_to_image(self, r: float, phi: float) -> tuple[float, float]:
        """Image ``(x, y)`` of the disc-plane point at radius ``r``, azimuth ``phi``."""
        u, w = r * np.cos(phi), r * np.sin(phi) * self.q
        c, s = np.cos(self.pa), np.sin(self.pa)
        return float(self.x0 + u * c - w * s), float(self.y0 + u * s + w * c)


@lru_cache(maxsize=4)
def _cosmo_table(h0: float, om0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=h0, Om0=om0)
    zs = np.linspace(0.005, 0.3, 300)
    dm = np.asarray(cosmo.distmod(zs).value)
    kpc_arcsec = np.asarray(cosmo.kpc_proper_per_arcmin(zs).value) / 60.0
    return zs, dm, kpc_arcsec


def cosmology(p: SimParams, z: float) -> tuple[float, float]:
    """``(distance modulus, kpc per arcsec)`` at redshift ``z`` (flat ΛCDM of ``p``)."""
    zs, dm, kpa = _cosmo_table(p.h0, p.om0)
    return float(np.interp(z, zs, dm)), float(np.interp(z, zs, kpa))


def draw_uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    """One draw, uniform in ``[r[0], r[1])``."""
    return float(rng.uniform(r[0], r[1]))


def draw_log_uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    """One draw, uniform in ``log10`` between ``r[0]`` and ``r[1]`` (both > 0)."""
    return float(10.0 ** rng.uniform(np.log10(r[0]), np.log10(r[1])))


def sample_galaxy(rng: np.random.Generator, p: SimParams) -> Galaxy:
    """Draw one host galaxy from the distributions in ``p``."""
    c = p.image_size / 2.0
    x0 = c + draw_uniform(rng, (-p.centre_jitter, p.centre_jitter))
    y0 = c + draw_uniform(rng, (-p.centre_jitter, p.centre_jitter))
    ra = draw_uniform(rng, p.ra_deg)
    sd = np.sin(np.radians(p.dec_deg))
    dec = float(np.degrees(np.arcsin(rng.uniform(sd[0], sd[1]))))
    while True:  # magnitude-limited sample
        z = draw_uniform(rng, p.redshift)
        abs_mag = draw_uniform(rng, p.abs_mag_r)
        dmod, kpc_arcsec = cosmology(p, z)
        mag = abs_mag + dmod
        if mag <= p.mag_limit_r:
            break
    kpc_per_pix = kpc_arcsec * p.pixel_scale
    log_re = p.re_kpc_zero + p.re_kpc_slope * (abs_mag + 20.5) + rng.normal(0.0, p.re_kpc_scatter)
    re = float(np.clip(10.0**log_re / kpc_per_pix, p.re_pix_min, p.re_pix_max))
    cos_i = draw_uniform(rng, p.cos_incl)
    q = float(np.sqrt(cos_i**2 * (1.0 - p.disc_thickness_q0**2) + p.disc_thickness_q0**2))
    pa = draw_uniform(rng, (0.0, np.pi))
    bt = draw_uniform(rng, p.bulge_to_total)
    bulge_n = draw_uniform(rng, p.bulge_sersic_n)
    bulge_re = max(re * draw_uniform(rng, p.bulge_re_ratio), 0.8)
    bulge_q = max(q, draw_uniform(rng, p.bulge_q))
    has_bar = rng.random() < p.bar_prob
    bar_fraction = draw_uniform(rng, p.bar_fraction) if has_bar else 0.0
    bar_a = re * draw_uniform(rng, p.bar_half_length_re)
    bar_q = draw_uniform(rng, p.bar_q)
    bar_pa = draw_uniform(rng, (0.0, np.pi))
    has_arms = rng.random() < p.arms_prob
    n_arms = (3 if rng.random() < p.arms_m3_prob else 2) if has_arms else 0
    pitch = np.radians(draw_uniform(rng, p.arms_pitch_deg))
    amp, sharp = draw_uniform(rng, p.arms_amplitude), draw_uniform(rng, p.arms_sharpness)
    phase0 = draw_uniform(rng, (0.0, 2.0 * np.pi))
    colours = [draw_uniform(rng, r) for r in (p.disc_gr, p.disc_ri, p.bulge_gr, p.bulge_ri)]
    gal = Galaxy(
        x0, y0, ra, dec, z, abs_mag, mag, 10.0 ** ((22.5 - mag) / 2.5), kpc_per_pix, re, q, pa,
        cos_i, bt, bulge_n, bulge_re, bulge_q, bar_fraction, bar_a, bar_q, bar_pa, n_arms,
        float(pitch), amp, sharp, phase0, *colours, (),
    )
    if not has_arms:
        return gal
    knots = []
    for _ in range(int(rng.poisson(p.knots_mean))):
        r = float(np.clip(rng.gamma(2.0, gal.h), p.arms_inner_re * re, 3.0 * gal.h))
        k = int(rng.integers(n_arms))
        phi = float(gal.arm_angle(r)) + 2.0 * np.pi * k / n_arms + rng.normal(0.0, 0.15)
        x, y = gal.disc_to_image(r, phi)
        fwhm = draw_uniform(rng, p.knot_fwhm_kpc) / kpc_per_pix
        knots.append((x, y, draw_log_uniform(rng, p.knot_fraction), fwhm))
    return replace(gal, knots=tuple(knots))


def render_host(gal: Galaxy, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Noiseless, unconvolved r-band host components.

    Returns
    -------
    dict
        ``{"disc": ..., "bulge": ..., "bar": ...}``, float64 ``shape`` images in
        r-band nmgy per pixel; ``disc`` includes the arm modulation and the knots
        (both disc-coloured); the bar has the bulge's colour. Their sum
        integrates to ``gal.flux_r`` (up to light beyond the cutout).
    """
    f = gal.flux_r
    knot_total = sum(k[2] for k in gal.knots)
    disc_flux = f * (1.0 - gal.bt - gal.bar_fraction - knot_total)
    disc = sersic_image(shape, gal.x0, gal.y0, disc_flux, gal.re, 1.0, gal.q, gal.pa)
    if gal.n_arms:
        h, w = shape
        y = np.arange(h)[:, None] + 0.5
        x = np.arange(w)[None, :] + 0.5
        u, v = elliptical_radius(x, y, gal.x0, gal.y0, gal.q, gal.pa)
        r = np.hypot(u, v)
        wave = 0.5 * (1.0 + np.cos(gal.n_arms * (np.arctan2(v, u) - gal.arm_angle(r))))
        p = gal.arm_sharp
        mean_wp = np.exp(lgamma(p + 0.5) - lgamma(p + 1.0)) / np.sqrt(np.pi)  # <w^p> over phi
        taper = 1.0 - np.exp(-((r / (0.5 * gal.re)) ** 2))
        disc *= 1.0 + gal.arm_amp * taper * (wave**p / mean_wp - 1.0)
    for x, y, frac, fwhm in gal.knots:
        disc += _stamp(shape, x, y, f * frac, fwhm / GAUSS_FWHM)
    bulge = sersic_image(
        shape, gal.x0, gal.y0, f * gal.bt, gal.bulge_re, gal.bulge_n, gal.bulge_q, gal.pa,
        oversample=15 if gal.bulge_re < 2.0 else 9,
    )
    bar = np.zeros(shape)
    if gal.bar_fraction > 0:
        bar = ferrers_image(shape, gal.x0, gal.y0, f * gal.bar_fraction, gal.bar_a, gal.bar_q, gal.bar_pa)
    return {"disc": disc, "bulge": bulge, "bar": bar}


def _stamp(shape: tuple[int, int], x: float, y: float, flux: float, sigma: float) -> np.ndarray:
    """Full-size image holding a pixel-integrated Gaussian (cut to ±6 sigma)."""
    img = np.zeros(shape)
    half = int(np.ceil(6.0 * sigma)) + 2
    i0, j0 = max(int(y) - half, 0), max(int(x) - half, 0)
    i1, j1 = min(int(y) + half + 1, shape[0]), min(int(x) + half + 1, shape[1])
    if i1 > i0 and j1 > j0:
        img[i0:i1, j0:j1] = gaussian_stamp((i1 - i0, j1 - j0), x - j0, y - i0, flux, sigma)
    return img


def band_factor(gr: float, ri: float) -> np.ndarray:
    """Flux ratios ``(f_g, f_r, f_i) / f_r`` for colours ``g - r`` and ``r - i``."""
    return np.array([10.0 ** (-0.4 * gr), 1.0, 10.0 ** (0.4 * ri)])
