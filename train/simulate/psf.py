"""Point-spread functions: circular Moffat or Gaussian, pixel-integrated kernels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAUSS_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))  # FWHM / sigma


@dataclass(frozen=True)
class PSF:
    """One band's PSF.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum, pixels.
    profile : str
        ``"moffat"`` or ``"gaussian"``.
    beta : float
        Moffat index (ignored for Gaussian).
    """

    fwhm: float
    profile: str
    beta: float = 3.0

    def __post_init__(self) -> None:
        if self.profile not in ("moffat", "gaussian") or self.fwhm <= 0:
            msg = f"simulate/psf.py: bad PSF {self!r}"
            raise ValueError(msg)

    def profile_at(self, r: np.ndarray) -> np.ndarray:
        """Un-normalised radial profile at radius ``r`` (pixels), peak 1."""
        if self.profile == "gaussian":
            sigma = self.fwhm / GAUSS_FWHM
            return np.exp(-0.5 * (r / sigma) ** 2)
        alpha = self.fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))
        return (1.0 + (r / alpha) ** 2) ** (-self.beta)


def psf_kernel(psf: PSF, radius: int, oversample: int) -> np.ndarray:
    """Pixel-integrated PSF kernel, normalised to unit sum.

    Parameters
    ----------
    psf : PSF
        The PSF.
    radius : int
        Kernel half-size; the kernel is ``(2 radius + 1, 2 radius + 1)``, centred
        on the central pixel.
    oversample : int
        Sub-pixels per pixel and axis used for the integration.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(2 radius + 1, 2 radius + 1)``, sum 1 (the flux beyond
        ``radius`` is folded back by the normalisation).
    """
    n = 2 * radius + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - (radius + 0.5)
    rr = np.hypot(sub[:, None], sub[None, :])
    fine = psf.profile_at(rr)
    kern = fine.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    return kern / kern.sum()
