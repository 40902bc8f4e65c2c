"""clumpdet.engine: the lean, torch-free runtime (numpy, onnxruntime, astropy, Pillow)."""

__version__ = "0.1.0"
