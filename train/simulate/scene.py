"""Compose one synthetic cutout: host + PSF + truth sources + noise, with its truth.

Per-image randomness comes from ``SeedSequence(master_seed, spawn_key=(index,))``,
so image ``index`` is identical whatever the set size or the worker count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.signal import fftconvolve

from clumpdet.train.presets import CLUMP_CLASSES
from clumpdet.train.simulate.clumps import Source, add_stamp, render_source, sample_sources
from clumpdet.train.simulate.galaxy import Galaxy, band_factor, draw_uniform, render_host, sample_galaxy
from clumpdet.train.simulate.noise import observe, sky_per_pixel, variance_band
from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.psf import PSF, psf_kernel


@dataclass
class SimImage:
    """One simulated cutout.

    Attributes
    ----------
    name : str
        ``sim_{index:06d}``.
    cube : numpy.ndarray
        float32 ``(3, H, W)``, bands (g, r, i), sky-subtracted nmgy per pixel.
    model : numpy.ndarray
        float64 ``(3, H, W)`` noiseless image (host + sources), same units.
    host : numpy.ndarray
        float64 ``(3, H, W)`` noiseless PSF-convolved host alone.
    galaxy : Galaxy
        Host parameters.
    sources : list of Source
        Truth sources, in drawing order.
    psfs : list of PSF
        Per-band PSFs (g, r, i).
    sky : numpy.ndarray
        ``(3,)`` sky level that was subtracted, nmgy per pixel.
    truth : list of dict
        One row per source (see :func:`simulate_image`).
    """

    name: str
    cube: np.ndarray
    model: np.ndarray
    host: np.ndarray
    galaxy: Galaxy
    sources: list[Source]
    psfs: list[PSF]
    sky: np.ndarray
    truth: list[dict[str, Any]]

    def info(self) -> dict[str, Any]:
        """JSON-ready per-image record (host parameters, PSF, sky)."""
        gal = {k: v for k, v in asdict(self.galaxy).items() if k != "knots"}
        gal["n_knots"] = len(self.galaxy.knots)
        return {
            **gal,
            "psf_profile": self.psfs[1].profile,
            "psf_beta": self.psfs[1].beta,
            "psf_fwhm_pix": [ps.fwhm for ps in self.psfs],
            "sky_nmgy_per_pix": [float(s) for s in self.sky],
            "n_clumps": sum(s.label == 1 for s in self.sources),
            "n_stars": sum(s.label == 2 for s in self.sources),
        }


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of a set with master ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_psfs(rng: np.random.Generator, p: SimParams) -> list[PSF]:
    """Per-band PSFs (g, r, i): one profile, FWHM scaled as λ^exponent from r."""
    fwhm_r = draw_uniform(rng, p.psf_fwhm_r_arcsec) / p.pixel_scale
    moffat = rng.random() < p.psf_moffat_prob
    beta = draw_uniform(rng, p.psf_moffat_beta)
    lam = np.asarray(p.wavelength_aa)
    scale = (lam / lam[1]) ** p.psf_seeing_exponent
    return [PSF(float(fwhm_r * s), "moffat" if moffat else "gaussian", beta if moffat else 0.0)
            for s in scale]


def simulate_image(index: int, seed: int, p: SimParams) -> SimImage:
    """Render image ``index`` of the set with master ``seed``.

    Truth rows hold: ``image``, ``label`` (class name), ``label_id``, ``x``,
    ``y`` (centre, pixel ``i`` spanning ``[i, i + 1)``), ``x1 y1 x2 y2``
    (square box), ``flux_fraction`` (r-band source / host flux), ``flux_r``
    (nmgy), ``mag_r``, ``g_r``, ``r_i``, ``fwhm_int_pix``, ``fwhm_int_kpc``,
    ``fwhm_obs_pix``, ``r_over_re`` (disc-plane radius / disc Re), ``on_arm``,
    ``host_sb_r`` (PSF-convolved host r surface brightness at the source,
    mag/arcsec²), ``peak_contrast`` (source peak / host at that pixel, r) and
    ``snr_r`` (matched-filter S/N of the source in r, host and sky noise).
    """
    rng = image_rng(seed, index)
    name = f"sim_{index:06d}"
    shape = (p.image_size, p.image_size)
    gal = sample_galaxy(rng, p)
    psfs = sample_psfs(rng, p)
    kernels = [psf_kernel(ps, p.psf_kernel_radius, p.psf_oversample) for ps in psfs]
    sources = sample_sources(rng, gal, psfs[1].fwhm, p)
    sky = sky_per_pixel(p, draw_uniform(rng, p.sky_offset_mag))

    comps = render_host(gal, shape)
    fd, fb = band_factor(gal.disc_gr, gal.disc_ri), band_factor(gal.bulge_gr, gal.bulge_ri)
    old = comps["bulge"] + comps["bar"]
    host = np.stack([
        fftconvolve(comps["disc"] * fd[b] + old * fb[b], kernels[b], mode="same") for b in range(3)
    ])
    model = host.copy()
    stamps = []
    for src in sources:
        i0, j0, st = render_source(src, kernels, band_factor(src.gr, src.ri))
        add_stamp(model, i0, j0, st)
        stamps.append((i0, j0, st[1]))
    cube = observe(rng, model, sky, p)
    truth = [_truth_row(name, s, st, host[1], sky, gal, p) for s, st in zip(sources, stamps)]
    return SimImage(name, cube, model, host, gal, sources, psfs, sky, truth)


def _truth_row(name: str, s: Source, stamp: tuple[int, int, np.ndarray], host_r: np.ndarray,
               sky: np.ndarray, gal: Galaxy, p: SimParams) -> dict[str, Any]:
    i0, j0, st = stamp
    n = st.shape[0]
    hwin = np.zeros_like(st)
    add_stamp(hwin, -i0, -j0, host_r)  # host_r[i0:i0+n, j0:j0+n], zero outside the image
    var = variance_band(hwin + st, float(sky[1]), p, band=1)
    snr = float(np.sqrt(np.sum(st**2 / var)))
    ipk, jpk = np.unravel_index(int(np.argmax(st)), st.shape)
    host_pk = float(hwin[ipk, jpk])
    ic, jc = int(np.floor(s.y)) - i0, int(np.floor(s.x)) - j0
    host_c = max(float(hwin[min(max(ic, 0), n - 1), min(max(jc, 0), n - 1)]), 1e-12)
    x1, y1, x2, y2 = s.box(p.box_fwhm_factor)
    return {
        "image": name, "label": CLUMP_CLASSES[s.label], "label_id": s.label,
        "x": s.x, "y": s.y, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        "flux_fraction": s.flux_fraction, "flux_r": s.flux_r,
        "mag_r": float(22.5 - 2.5 * np.log10(s.flux_r)), "g_r": s.gr, "r_i": s.ri,
        "fwhm_int_pix": s.fwhm_int, "fwhm_int_kpc": s.fwhm_int * gal.kpc_per_pix,
        "fwhm_obs_pix": s.fwhm_obs, "r_over_re": s.r_over_re, "on_arm": s.on_arm,
        "host_sb_r": float(22.5 - 2.5 * np.log10(host_c / p.pixel_scale**2)),
        "peak_contrast": float(st[ipk, jpk] / max(host_pk, 1e-12)), "snr_r": snr,
    }

