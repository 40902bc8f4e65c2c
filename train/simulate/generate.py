"""Parallel driver: simulate ``n`` cutouts and write a set directory (layout in :mod:`.writer`).

Image ``index`` depends only on ``(seed, index, params)``; workers write their
own FITS/PNG files and return truth records, which the parent writes in index
order, so the output is identical for any worker count.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import scipy

from clumpdet.engine import __version__
from clumpdet.train.simulate.params import SimParams
from clumpdet.train.simulate.scene import simulate_image
from clumpdet.train.simulate.writer import (
    coco_json,
    images_table,
    truth_table,
    write_fits,
    write_png,
)


def _one(job: tuple[int, int, SimParams, str]) -> dict[str, Any]:
    index, seed, p, out = job
    im = simulate_image(index, seed, p)
    fits_rel, png_rel = f"fits/{im.name}.fits", f"png/{im.name}.png"
    write_fits(Path(out) / fits_rel, im, seed, p)
    write_png(Path(out) / png_rel, im.cube)
    info = {"image": im.name, **im.info()}
    image = {
        "id": index + 1, "file_name": png_rel, "width": p.image_size, "height": p.image_size,
        "fits_file": fits_rel, "sim": info,
    }
    return {"image": image, "truth": im.truth, "info": info}


def generate(
    n: int, seed: int, out: str | os.PathLike, workers: int | None = None, params: SimParams | None = None
) -> dict[str, Any]:
    """Simulate images ``0 .. n-1`` of master ``seed`` into directory ``out``.

    Parameters
    ----------
    n : int
        Number of cutouts (>= 1).
    seed : int
        Master seed (>= 0).
    out : path-like
        Output directory (created; existing files of the same names are overwritten).
    workers : int or None
        Worker processes; ``None`` = ``os.cpu_count()``; 1 runs in-process.
    params : SimParams or None
        Simulator parameters (default ``SimParams()``).

    Returns
    -------
    dict
        Summary: ``n``, ``n_clumps``, ``n_stars``, ``seconds``, ``workers``, ``out``.
    """
    if n < 1 or seed < 0:
        msg = f"simulate/generate.py: need n >= 1 and seed >= 0, got n={n}, seed={seed}"
        raise ValueError(msg)
    p = params or SimParams()
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    root = Path(out)
    (root / "fits").mkdir(parents=True, exist_ok=True)
    (root / "png").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, p, str(root)) for i in range(n)]
    t0 = time.perf_counter()
    if workers == 1:
        records = [_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(_one, jobs, chunksize=max(1, min(16, n // (4 * workers)))))
    rows = [r for rec in records for r in rec["truth"]]
    (root / "annotations.json").write_text(json.dumps(coco_json(records, p)))
    truth_table(rows).write(root / "truth.ecsv", overwrite=True)
    images_table([rec["info"] for rec in records]).write(root / "images.ecsv", overwrite=True)
    meta = {
        "seed": seed, "n": n, "params": p.to_dict(), "clumpdet_version": __version__,
        "numpy": np.__version__, "scipy": scipy.__version__, "astropy": astropy.__version__,
        "flux_units": "nanomaggy per pixel, sky-subtracted",
        "fits_layout": "primary header + image HDUs G, R, I (float32, same TAN WCS)",
        "png": "Lupton RGB, (R, G, B) = (i, r, g), default LuptonStretch, not flipped",
        "box_rule": f"square, side = {p.box_fwhm_factor} x observed r FWHM (PSF (+) intrinsic)",
        "flux_fraction": "source r-band flux / host galaxy r-band flux (disc+bulge+bar+knots)",
    }
    (root / "params.json").write_text(json.dumps(meta, indent=1))
    seconds = time.perf_counter() - t0
    n_clumps = sum(r["label_id"] == 1 for r in rows)
    return {"n": n, "n_clumps": n_clumps, "n_stars": len(rows) - n_clumps, "seconds": seconds,
            "workers": workers, "out": str(root)}
