"""clumpdet.export: one end-to-end ONNX file per model (DESIGN §1, §3).

Public API (import from the modules; this package imports nothing eagerly):

- :func:`clumpdet.export.onnx_export.export_onnx` — model + preset → ``.onnx`` with
  the whole post-processing chain, a symbolic batch axis and ``metadata_props``;
- :class:`clumpdet.export.wrapper.ExportWrapper` — the fixed-shape inference module;
- :func:`clumpdet.export.checks.check_tensorrt_ready` / ``tensorrt_findings`` —
  TensorRT-readiness of any ONNX graph;
- ``clumpdet export`` (:mod:`clumpdet.export.cli_export`).
"""
