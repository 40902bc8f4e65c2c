"""Synthetic SDSS-like clump cutouts with known truth (DESIGN §7). numpy/scipy/astropy only.

Modules: :mod:`.params` (every distribution), :mod:`.profiles` (Sérsic, Ferrers,
Gaussian pixel integrals), :mod:`.psf`, :mod:`.galaxy` (hosts), :mod:`.clumps`
(truth sources), :mod:`.noise`, :mod:`.scene` (one cutout), :mod:`.writer`
(FITS/PNG/COCO/ECSV), :mod:`.generate` (parallel driver).
"""

from clumpdet.train.simulate.generate import generate
from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.scene import SimImage, simulate_image

__all__ = ["SimImage", "SimParams", "generate", "simulate_image"]
