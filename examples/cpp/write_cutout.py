"""Write the model input of one image as a file ``clumpdet_detect`` reads.

Usage::

    python examples/cpp/write_cutout.py MODEL.onnx INPUT OUT.f32   # raw little-endian float32
    python examples/cpp/write_cutout.py MODEL.onnx INPUT OUT.fits  # FITS, BITPIX -32, one [3, H, W] cube

``INPUT`` is anything ``clumpdet detect`` reads (a FITS g, r, i flux cube, a
PNG/JPEG, a ``.npy``); it goes through the engine's own reader and
preprocessing (:func:`clumpdet.engine.readers.read_cutout`: Lupton stretch from
the model's metadata, centre crop/pad), so the C++ program sees exactly the
array the Python engine feeds the model: float32 ``[3, H, W]`` RGB in [0, 1],
plane order R, G, B, row 0 first (numpy order; FITS ``NAXIS1 = W``,
``NAXIS2 = H``, ``NAXIS3 = 3``). The crop/pad offset, printed on stdout as
``offset x0 y0``, maps model pixels to original ones (``original = model +
offset``); the raw file carries no header.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def write_model_input(image: np.ndarray, path: str) -> str:
    """Write a float32 ``(3, H, W)`` model input as ``.f32``/``.raw`` (little-endian) or ``.fits``.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(3, H, W)`` RGB in [0, 1].
    path : str
        Output; the extension picks the format.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3:
        msg = f"{path}: model input must be (3, H, W), got {image.shape}"
        raise ValueError(msg)
    data = image.astype("<f4", copy=False)
    if path.lower().endswith((".fits", ".fit")):
        from astropy.io import fits

        fits.PrimaryHDU(data.astype(">f4")).writeto(path, overwrite=True)
    elif path.lower().endswith((".f32", ".raw")):
        with open(path, "wb") as fh:
            fh.write(np.ascontiguousarray(data).tobytes())
    else:
        msg = f"{path}: unknown output type; use .f32, .raw or .fits"
        raise ValueError(msg)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="exported .onnx (its metadata gives the input size and stretch)")
    parser.add_argument("input", help="FITS/PNG/JPEG/.npy image")
    parser.add_argument("out", help="output .f32/.raw or .fits")
    args = parser.parse_args(argv)
    from clumpdet.engine.detector import Detector
    from clumpdet.engine.readers import read_cutout

    detector = Detector(args.model)
    cutout = read_cutout(args.input, detector.metadata.input)
    write_model_input(cutout.image, args.out)
    print(f"offset {cutout.offset[0]} {cutout.offset[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
