"""Every distribution and constant of the synthetic clump simulator (DESIGN §7).

One frozen dataclass, :class:`SimParams`, holds them all; the driver writes
``dataclasses.asdict(params)`` plus the master seed to ``params.json`` so that a
set can be regenerated exactly. Ranges are ``(low, high)`` tuples; "log-uniform"
means uniform in ``log10``.

Units
-----
Fluxes are SDSS nanomaggies (1 nmgy = 3.631 µJy, AB mag 22.5), images are
nanomaggies per pixel, sky-subtracted (like SDSS ``frame`` images). Lengths are
pixels of ``pixel_scale`` arcsec unless named ``*_kpc`` or ``*_arcsec``.

Physical choices (approximate, documented so they can be argued with)
--------------------------------------------------------------------
* Redshift uniform in 0.02–0.10 (flat ΛCDM, H0 = 70, Ωm = 0.3), absolute
  magnitude M_r uniform in −22.5 to −19.0, redrawn while r > 17.77 (the SDSS
  main-sample spectroscopic limit); disc half-light radius from a loose
  size–luminosity relation ``log10 Re[kpc] = 0.55 − 0.15 (M_r + 20.5) ± 0.15``.
* Camera: electrons per nanomaggy ``gain / NMGY`` with SDSS-typical gains
  (g 3.9, r 4.7, i 5.2 e⁻/DN) and ``NMGY`` (g 0.0039, r 0.0052, i 0.0071
  nmgy/DN) for the 53.9 s drift scan; read/dark noise as a Gaussian.
* Sky: SDSS dark-time median surface brightness (g 22.0, r 21.0, i 20.3
  mag/arcsec²), shifted per image by one offset (moon, airmass).
* Seeing: r-band FWHM uniform in 1.0–2.0″; FWHM ∝ λ^−0.2 across bands.
* Clumps: r-band flux fraction (clump r flux / host-galaxy r flux, host =
  disc + bulge + bar + arm knots, clumps and stars excluded) log-uniform in
  1–50 %; intrinsic Gaussian FWHM log-uniform 0.1–1 kpc (barely resolved at
  z = 0.02, point-like at z = 0.1); colours bluer than any disc.
* Look-alikes that are *not* truth: arm knots (0.2–1 % of the host flux, i.e.
  up to the truth floor; 0.8–2.5 kpc; disc colour, so not bluer), bars, arms
  without knots. Red foreground stars (point sources, g - r 0.9–1.5) are
  truth of class ``odd_clump``.
* Simplifications: no k-corrections, no dust lanes, no background galaxies,
  circular PSF identical in shape across bands, exactly known sky.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class SimParams:
    """All simulator parameters. See the module docstring for units and sources."""

    # --- image geometry -------------------------------------------------------
    image_size: int = 400
    pixel_scale: float = 0.396  # arcsec / pixel
    central: tuple[int, int] = (100, 300)  # truth lies in [lo, hi) on both axes
    centre_jitter: float = 0.5  # galaxy centre = 200 +- U(-j, j) pixels
    bands: tuple[str, str, str] = ("g", "r", "i")
    wavelength_aa: tuple[float, float, float] = (4770.0, 6231.0, 7625.0)
    ra_deg: Range = (110.0, 260.0)
    dec_deg: Range = (-5.0, 65.0)  # drawn uniform in sin(dec)

    # --- camera / sky / noise -----------------------------------------------
    gain_e_per_dn: tuple[float, float, float] = (3.9, 4.7, 5.2)
    nmgy_per_dn: tuple[float, float, float] = (0.0039, 0.0052, 0.0071)
    read_noise_e: tuple[float, float, float] = (5.0, 5.0, 6.5)
    sky_mag_arcsec2: tuple[float, float, float] = (22.0, 21.0, 20.3)
    sky_offset_mag: Range = (-0.8, 0.3)  # added to all bands; negative = brighter sky

    # --- PSF --------------------------------------------------------------
    psf_fwhm_r_arcsec: Range = (1.0, 2.0)
    psf_moffat_prob: float = 0.7  # else Gaussian
    psf_moffat_beta: Range = (2.5, 4.5)
    psf_seeing_exponent: float = -0.2  # FWHM ∝ λ^exponent
    psf_kernel_radius: int = 25  # kernel is (2r+1)^2 pixels
    psf_oversample: int = 5

    # --- galaxy population ------------------------------------------------
    h0: float = 70.0
    om0: float = 0.3
    redshift: Range = (0.02, 0.10)
    abs_mag_r: Range = (-22.5, -19.0)
    mag_limit_r: float = 17.77
    re_kpc_zero: float = 0.55  # log10 Re at M_r = -20.5
    re_kpc_slope: float = -0.15  # d log10 Re / d M_r
    re_kpc_scatter: float = 0.15  # dex
    re_pix_max: float = 45.0  # disc Re clipped so the disc fits the 200x200 crop
    re_pix_min: float = 3.0
    cos_incl: Range = (0.15, 1.0)
    disc_thickness_q0: float = 0.2
    bulge_to_total: Range = (0.0, 0.35)
    bulge_sersic_n: Range = (1.5, 4.0)
    bulge_re_ratio: Range = (0.10, 0.25)  # bulge Re / disc Re
    bulge_q: Range = (0.7, 0.95)
    bar_prob: float = 0.3
    bar_half_length_re: Range = (0.5, 1.0)  # in disc Re
    bar_q: Range = (0.2, 0.35)
    bar_fraction: Range = (0.03, 0.10)  # of host r flux, taken from the disc
    arms_prob: float = 0.6
    arms_m3_prob: float = 0.3  # else two arms
    arms_pitch_deg: Range = (10.0, 30.0)
    arms_amplitude: Range = (0.3, 0.9)
    arms_sharpness: Range = (2.0, 6.0)
    arms_inner_re: float = 0.5  # arms fade inside this many disc Re
    knots_mean: float = 3.0  # Poisson mean, arm galaxies only
    knot_fraction: Range = (0.002, 0.01)  # log-uniform, of host r flux; below the truth floor
    knot_fwhm_kpc: Range = (0.8, 2.5)
    disc_gr: Range = (0.35, 0.70)
    disc_ri: Range = (0.15, 0.35)
    bulge_gr: Range = (0.70, 0.85)
    bulge_ri: Range = (0.35, 0.45)

    # --- clumps (truth label 1) -------------------------------------------
    no_clump_prob: float = 0.25
    clumps_extra_mean: float = 2.5  # n = 1 + Poisson(mean), when not clump-free
    clumps_max: int = 12
    clump_fraction: Range = (0.01, 0.50)  # log-uniform r-band flux fraction
    clump_fraction_sum_max: float = 1.0  # redraw a galaxy's set while the sum exceeds this
    clump_fwhm_kpc: Range = (0.1, 1.0)  # log-uniform intrinsic Gaussian FWHM
    clump_gr: Range = (-0.2, 0.25)  # always < disc g-r - 0.1
    clump_ri: Range = (-0.2, 0.2)
    clump_on_arm_prob: float = 0.7  # in arm galaxies
    clump_arm_jitter_rad: float = 0.25
    clump_max_radius_h: float = 4.0  # disc-plane radius cap, in exponential scale lengths
    place_tries: int = 60

    # --- red foreground stars (truth label 2, odd_clump) ------------------
    star_prob: float = 0.2
    star_fraction: Range = (0.01, 0.50)  # log-uniform, star r flux / host r flux
    star_gr: Range = (0.9, 1.5)
    star_ri: Range = (0.4, 1.2)

    # --- truth boxes ------------------------------------------------------
    box_fwhm_factor: float = 2.0  # square side = factor x observed r FWHM
    exclusion_boxes: float = 1.0  # min centre distance (in box sides) to nucleus / other truth

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every parameter."""
        return asdict(self)
