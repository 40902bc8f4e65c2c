"""Analytic surface-brightness profiles rendered onto pixel grids.

Coordinates: ``x`` is the column, ``y`` the row, both in image pixels with
pixel ``i`` spanning ``[i, i + 1)`` (so the centre of pixel index ``i`` is at
``i + 0.5``). Images are float64 ``(H, W)`` arrays of flux per pixel; each
function returns flux (not surface brightness) per pixel.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, gamma, gammaincinv


def sersic_bn(n: float) -> float:
    """Sérsic ``b_n`` such that ``r_e`` encloses half the light."""
    return float(gammaincinv(2.0 * n, 0.5))


def elliptical_radius(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, q: float, pa: float
) -> tuple[np.ndarray, np.ndarray]:
    """Major-axis coordinates ``(u, v/q)`` of points ``(x, y)`` for an ellipse.

    ``pa`` (radians) is the major axis angle from the +x axis towards +y; ``q``
    the axis ratio b/a. Returns the deprojected coordinates ``(u, w)``; the
    elliptical radius is ``hypot(u, w)``.
    """
    dx, dy = x - x0, y - y0
    c, s = np.cos(pa), np.sin(pa)
    return dx * c + dy * s, (-dx * s + dy * c) / q


def _sersic_sb(r: np.ndarray, flux: float, re: float, n: float, q: float) -> np.ndarray:
    b = sersic_bn(n)
    ie = flux / (2.0 * np.pi * q * re**2 * n * np.exp(b) * b ** (-2.0 * n) * gamma(2.0 * n))
    x = r / re if n == 1.0 else (r / re) ** (1.0 / n)
    return ie * np.exp(-b * (x - 1.0))


def sersic_image(
    shape: tuple[int, int],
    x0: float,
    y0: float,
    flux: float,
    re: float,
    n: float,
    q: float,
    pa: float,
    window: int = 12,
    oversample: int = 11,
) -> np.ndarray:
    """Elliptical Sérsic profile with total flux ``flux`` (integrated to infinity).

    Pixels are sampled at their centres, except a ``(2 window + 1)^2`` box
    around the centre which is integrated on an ``oversample``-times finer
    grid (the cusp). ``re`` is the semi-major half-light radius in pixels.

    Returns
    -------
    numpy.ndarray
        float64, shape ``shape``: flux per pixel.
    """
    h, w = shape
    y = np.arange(h)[:, None] + 0.5
    x = np.arange(w)[None, :] + 0.5
    u, v = elliptical_radius(x, y, x0, y0, q, pa)
    img = _sersic_sb(np.hypot(u, v), flux, re, n, q)
    ic, jc = int(np.floor(y0)), int(np.floor(x0))
    i0, i1 = max(ic - window, 0), min(ic + window + 1, h)
    j0, j1 = max(jc - window, 0), min(jc + window + 1, w)
    sub = (np.arange(oversample) + 0.5) / oversample
    ys = (np.arange(i0, i1)[:, None] + sub[None, :]).ravel()
    xs = (np.arange(j0, j1)[:, None] + sub[None, :]).ravel()
    u, v = elliptical_radius(xs[None, :], ys[:, None], x0, y0, q, pa)
    fine = _sersic_sb(np.hypot(u, v), flux, re, n, q)
    img[i0:i1, j0:j1] = fine.reshape(i1 - i0, oversample, j1 - j0, oversample).mean(axis=(1, 3))
    return img


def ferrers_image(
    shape: tuple[int, int], x0: float, y0: float, flux: float, a: float, q: float, pa: float
) -> np.ndarray:
    """Ferrers bar ``(1 - m^2)^2`` inside the ellipse of semi-major axis ``a``.

    Normalised numerically to total ``flux`` on the grid (the bar lies well
    inside any cutout it is drawn on). float64, shape ``shape``.
    """
    h, w = shape
    y = np.arange(h)[:, None] + 0.5
    x = np.arange(w)[None, :] + 0.5
    u, v = elliptical_radius(x, y, x0, y0, q, pa)
    m2 = (u**2 + v**2) / a**2
    img = np.where(m2 < 1.0, (1.0 - np.minimum(m2, 1.0)) ** 2, 0.0)
    total = img.sum()
    return img * (flux / total) if total > 0 else img


def gaussian_stamp(
    shape: tuple[int, int], x0: float, y0: float, flux: float, sigma: float
) -> np.ndarray:
    """Circular Gaussian integrated exactly over each pixel (erf differences).

    Valid for any ``sigma > 0``, including ``sigma`` far below a pixel (a point
    source then lands in one pixel). ``(x0, y0)`` in the stamp's own pixel
    coordinates. float64, shape ``shape``; sums to ``flux`` up to truncation.
    """
    h, w = shape
    s = np.sqrt(2.0) * sigma
    ex = np.arange(w + 1, dtype=np.float64)
    ey = np.arange(h + 1, dtype=np.float64)
    fx = np.diff(erf((ex - x0) / s)) * 0.5
    fy = np.diff(erf((ey - y0) / s)) * 0.5
    return flux * fy[:, None] * fx[None, :]
