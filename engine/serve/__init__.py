"""``clumpdet serve``: the Open Inference Protocol (KServe v2) over HTTP, with dynamic batching.

Modules: :mod:`~clumpdet.engine.serve.protocol` (v2 JSON and the binary-tensor
extension), :mod:`~clumpdet.engine.serve.batcher` (dynamic batching queue),
:mod:`~clumpdet.engine.serve.metrics` (Prometheus text exposition) and
:mod:`~clumpdet.engine.serve.app` (the Starlette ASGI app). Needs the
``[serve]`` extra (starlette, uvicorn, python-multipart); no torch.
"""
