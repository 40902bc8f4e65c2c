"""``clumpdet serve``: serve an exported model over the Open Inference Protocol (KServe v2) with dynamic batching.

Binds to 127.0.0.1 by default (pass ``--host 0.0.0.0`` to expose it; there is no
authentication). ``--port 0`` picks a free port; the URL is printed on stdout as
``clumpdet serve: listening on http://HOST:PORT``. Needs the ``[serve]`` extra.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``clumpdet serve``."""
    parser.add_argument("--model", required=True, help="exported .onnx (or TensorRT .plan)")
    parser.add_argument("--name", help="model name under /v2/models/ (default: the file name without extension)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-batch", type=int, default=8, help="most images per model call and per request (default 8)")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0,
                        help="longest wait for a batch to fill, milliseconds (default 5)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="most images waiting before requests get 503 (default 8 x --max-batch)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="concurrent connections before new ones get 503 (default 256)")
    parser.add_argument("--providers", default="cpu",
                        help="onnxruntime execution providers in order, comma-separated (cpu, cuda, tensorrt)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``port`` 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def make_server(app, log_level: str = "warning", max_connections: int = 256):
    """A ``uvicorn.Server`` for ``app`` (run it with ``server.run(sockets=[bind(host, port)])``)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, limit_concurrency=max_connections,
                            timeout_keep_alive=30, lifespan="on")
    return uvicorn.Server(config)


def _usage(text: str) -> int:
    print(f"clumpdet serve: error: {text}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``clumpdet serve`` until interrupted; returns the exit status."""
    from clumpdet.engine.detector import Detector

    try:
        from clumpdet.engine.serve.app import ServeConfig, create_app
    except ModuleNotFoundError as err:
        return _usage(f"needs {err.name!r}, which is not installed; pip install 'clumpdet[serve]'")

    if args.max_batch < 1 or args.max_queue_delay_ms < 0 or args.max_body_mb <= 0 or args.max_connections < 1:
        return _usage("--max-batch, --max-connections must be >= 1, --max-queue-delay-ms >= 0, --max-body-mb > 0")
    max_queue = args.max_queue if args.max_queue is not None else 8 * args.max_batch
    if max_queue < args.max_batch:
        return _usage(f"--max-queue ({max_queue}) must be >= --max-batch ({args.max_batch})")
    try:
        detector = Detector(args.model, providers=[p for p in args.providers.split(",") if p.strip()],
                            intra_op_threads=args.threads)
        detector.model_sha256  # noqa: B018 - hash once, before the first request
        sock = bind(args.host, args.port)
    except (ValueError, OSError) as err:
        return _usage(str(err))
    name = args.name or os.path.basename(args.model).split(".")[0]
    config = ServeConfig(model_name=name, max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                         max_queue_images=max_queue, max_body_bytes=int(args.max_body_mb * (1 << 20)))
    server = make_server(create_app(detector, config), args.log_level, args.max_connections)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"clumpdet serve: model {name!r} ({', '.join(detector.providers)}), max batch {args.max_batch}, "
          f"max queue delay {args.max_queue_delay_ms} ms", file=sys.stderr)
    print(f"clumpdet serve: listening on http://{shown}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0
