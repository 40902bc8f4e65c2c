"""Load test of ``clumpdet serve``: N concurrent clients for T seconds, batch-1 versus dynamic batching.

Loopback only and bounded in time. For each mode the server runs as its own
process (``python -m clumpdet.engine.cli serve --port 0 ...``); the clients are
coroutines in this process speaking the v2 binary-tensor protocol, with request
bodies made and responses decoded by ``tritonclient.http`` (its
``generate_request_body`` / ``InferResult.from_response_body``) over ``httpx``.

Validate, warm up, then time: each client sends one image at a time from a
pool of distinct images whose detections were computed beforehand with the
engine's Python API (:meth:`Detector.detect`, one image per call); *every*
response is checked (request id echoed, same number of detections, labels
equal, boxes within 1e-3 px, scores within 1e-5). Lost (transport error or
timeout), failed (non-200) and mismatched responses are counted; the run fails
(exit 1) if any occur. Achieved batch sizes come from the server's ``/metrics``.

Usage::

    python benchmarks/load_test.py --model M.onnx [--clients 16] [--duration 10] [--max-batch 8]
        [--delay-ms 5] [--threads 1] [--repeats 2] [--out-dir benchmarks/results]
    python benchmarks/load_test.py --make-model /tmp/small.onnx ...   # export the test-size model first

Writes ``serve_load_<date>.json`` and ``.md`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(path: str) -> str:
    """Export the tests' small native-architecture detector (random weights, calibrated BN) to ``path``."""
    import torch

    sys.path.insert(0, ROOT)
    from clumpdet.export.onnx_export import export_onnx
    from tests.export.helpers import SMALL_NATIVE, calibrated

    torch.set_num_threads(1)
    return str(export_onnx(calibrated(SMALL_NATIVE, 1), SMALL_NATIVE, path))


def image_pool(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """float32 ``(n, 3, H, W)`` in [0, 1]: noise plus Gaussian blobs, all different."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = rng.uniform(0.0, 0.3, size=(n, 3, h, w))
    for img in out:
        for _ in range(6):
            cx, cy, s = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h), rng.uniform(1.5, 6)
            img += rng.uniform(0.2, 0.7, size=(3, 1, 1)) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return np.clip(out, 0, 1).astype(np.float32)


def start_server(model: str, max_batch: int, delay_ms: float, threads: int, max_queue: int):
    cmd = [sys.executable, "-m", "clumpdet.engine.cli", "serve", "--model", model, "--name", "bench", "--port", "0",
           "--max-batch", str(max_batch), "--max-queue-delay-ms", str(delay_ms), "--threads", str(threads),
           "--max-queue", str(max_queue)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        msg = f"load_test.py: server did not start: {line!r}"
        raise RuntimeError(msg)
    return proc, line.split()[-1]


def metrics_snapshot(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("clumpdet_batch_size") or line.startswith("clumpdet_inference_images_total"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    calls = after["clumpdet_batch_size_count"] - before.get("clumpdet_batch_size_count", 0)
    images = after["clumpdet_batch_size_sum"] - before.get("clumpdet_batch_size_sum", 0)
    buckets, prev = {}, 0.0
    for key in sorted((k for k in after if "_bucket" in k and "+Inf" not in k), key=lambda k: float(k.split('"')[1])):
        cum = after[key] - before.get(key, 0)
        if cum - prev:
            buckets[f"<={key.split(chr(34))[1]}"] = int(cum - prev)
        prev = cum
    return {"model_calls": int(calls), "images": int(images), "mean_batch": images / calls if calls else 0.0,
            "calls_by_batch_size": buckets}


def same(result, expected, tol_box: float = 1e-3, tol_score: float = 1e-5) -> bool:
    num, boxes, scores, labels = (result.as_numpy(n) for n in ("num_dets", "boxes", "scores", "labels"))
    n = len(expected)
    if num is None or num.shape != (1,) or int(num[0]) != n:
        return False
    return (np.allclose(boxes[0, :n], expected.boxes, rtol=0, atol=tol_box)
            and np.allclose(scores[0, :n], expected.scores, rtol=0, atol=tol_score)
            and np.array_equal(labels[0, :n], expected.labels) and not np.any(scores[0, n:]))


async def run_clients(url: str, pool: np.ndarray, expected: list, clients: int, duration: float) -> dict:
    import httpx
    import tritonclient.http as th

    def body_for(i: int, rid: str) -> tuple[bytes, dict]:
        inp = th.InferInput("images", [1, *pool.shape[1:]], "FP32")
        inp.set_data_from_numpy(pool[i : i + 1], binary_data=True)
        body, json_size = th.InferenceServerClient.generate_request_body([inp], request_id=rid)
        return body, {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}

    latencies: list[float] = []
    counts = {"ok": 0, "mismatched": 0, "failed": 0, "lost": 0}
    t0 = time.perf_counter()
    end = t0 + duration
    last_done = [t0]

    async def client(c: int, http: httpx.AsyncClient) -> None:
        k = 0
        while time.perf_counter() < end:
            i = (c + k * clients) % len(pool)
            rid = f"c{c}-r{k}-img{i}"
            body, headers = body_for(i, rid)
            start = time.perf_counter()
            try:
                resp = await http.post(url + "/v2/models/bench/infer", content=body, headers=headers)
            except httpx.HTTPError:
                counts["lost"] += 1
                k += 1
                continue
            latencies.append(time.perf_counter() - start)
            last_done[0] = time.perf_counter()
            if resp.status_code != 200:
                counts["failed"] += 1
            else:
                hl = resp.headers.get("Inference-Header-Content-Length")
                result = th.InferResult.from_response_body(resp.content, header_length=int(hl) if hl else None)
                ok = result.get_response().get("id") == rid and same(result, expected[i])
                counts["ok" if ok else "mismatched"] += 1
            k += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    elapsed = last_done[0] - t0
    lat = np.asarray(latencies) * 1e3
    return {"requests": int(sum(counts.values())), **counts, "elapsed_s": elapsed,
            "throughput_img_s": counts["ok"] / elapsed if elapsed > 0 else 0.0,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())} if len(lat) else {}}


def one_run(args, mode: str, max_batch: int, pool, expected) -> dict:
    import httpx

    proc, url = start_server(args.model, max_batch, args.delay_ms, args.threads, max_queue=max(4 * args.clients, 8))
    try:
        warm = asyncio.run(run_clients(url, pool, expected, args.clients, min(2.0, args.duration)))
        if warm["mismatched"] or warm["failed"] or warm["lost"]:
            msg = f"load_test.py: validation failed during warm-up: {warm}"
            raise RuntimeError(msg)
        before = metrics_snapshot(httpx.get(url + "/metrics", timeout=30).text)
        load1 = os.getloadavg()[0]
        res = asyncio.run(run_clients(url, pool, expected, args.clients, args.duration))
        after = metrics_snapshot(httpx.get(url + "/metrics", timeout=30).text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
    res.update(mode=mode, max_batch=max_batch, delay_ms=args.delay_ms if max_batch > 1 else 0.0,
               loadavg_1min_at_start=load1, batching=batch_stats(before, after))
    return res


def machine() -> dict:
    import onnxruntime

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "loadavg_before": os.getloadavg()}


def markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [f"# clumpdet serve load test ({report['date']})", "",
             f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['platform']}, Python {m['python']}, "
             f"onnxruntime {m['onnxruntime']}; 1-min load average before the runs: {m['loadavg_before'][0]:.1f}. "
             f"{cfg.get('note', '')}", "",
             f"Model: `{cfg['model']}` ({cfg['model_desc']}). Server: `clumpdet serve`, onnxruntime CPU, "
             f"{cfg['threads']} intra-op thread(s); {cfg['clients']} concurrent clients (one image per request, "
             f"binary tensors, loopback), {cfg['duration_s']} s per run after a warm-up; every response checked "
             "against `Detector.detect`.", "",
             "| run | mode | max batch | delay ms | requests | ok | mismatched | failed | lost | img/s | "
             "p50 ms | p99 ms | mean batch | model calls | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(report["runs"]):
        lat, b = r["latency_ms"], r["batching"]
        lines.append(f"| {i + 1} (pair {r.get('pair', 0) + 1}) | {r['mode']} | {r['max_batch']} | {r['delay_ms']:g} | "
                     f"{r['requests']} | {r['ok']} | "
                     f"{r['mismatched']} | {r['failed']} | {r['lost']} | {r['throughput_img_s']:.1f} | "
                     f"{lat.get('p50', float('nan')):.0f} | {lat.get('p99', float('nan')):.0f} | "
                     f"{b['mean_batch']:.2f} | {b['model_calls']} | {r['loadavg_1min_at_start']:.1f} |")
    s = report["summary"]
    runs = report["runs"]
    by_pair: dict[int, dict[str, float]] = {}
    for r in runs:
        by_pair.setdefault(r.get("pair", 0), {})[r["mode"]] = r["throughput_img_s"]
    ratios = [p["dynamic"] / p["batch-1"] for p in by_pair.values() if p.get("batch-1") and "dynamic" in p]
    wins = sum(x > 1 for x in ratios)
    lines += ["", f"Throughput (mean over runs): batch-1 {s['batch1_img_s']:.1f} img/s, dynamic "
              f"{s['dynamic_img_s']:.1f} img/s (x{s['speedup']:.2f}); dynamic batching beat batch-1 in {wins} of "
              f"{len(ratios)} back-to-back pairs (dynamic/batch-1 ratios {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {float(np.median(ratios)) if ratios else float('nan'):.2f}). "
              f"Lost, failed or mismatched responses: {s['bad_responses']}.", "", "Achieved batch sizes (dynamic runs, model calls per size bucket): "
              + "; ".join(json.dumps(r["batching"]["calls_by_batch_size"]) for r in report["runs"]
                          if r["mode"] == "dynamic"), "",
              f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="exported .onnx to serve")
    p.add_argument("--make-model", metavar="PATH", help="first export the tests' small model to PATH and use it")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (bounded to 60)")
    p.add_argument("--max-batch", type=int, default=8, help="max batch of the dynamic mode")
    p.add_argument("--delay-ms", type=float, default=5.0, help="max queue delay of the dynamic mode")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of the server")
    p.add_argument("--repeats", type=int, default=2, help="alternating batch-1/dynamic pairs")
    p.add_argument("--pool", type=int, default=32, help="distinct images")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--note", default="", help="a sentence about the machine's load, printed next to the numbers")
    args = p.parse_args(argv)
    args.duration = min(args.duration, 60.0)
    if args.make_model:
        args.model = make_model(args.make_model)
    if not args.model:
        p.error("--model or --make-model is needed")
    from clumpdet.engine.detector import Detector

    det = Detector(args.model, intra_op_threads=args.threads)
    pool = image_pool(args.pool, det.input_size)
    expected = [det.detect(pool[i : i + 1])[0] for i in range(len(pool))]  # the reference, one image per call
    runs = []
    for pair in range(args.repeats):  # back-to-back pairs; which mode goes first alternates
        modes = [("batch-1", 1), ("dynamic", args.max_batch)]
        for mode, max_batch in modes if pair % 2 == 0 else modes[::-1]:
            runs.append({"pair": pair, **one_run(args, mode, max_batch, pool, expected)})
        print(json.dumps(runs[-2:], indent=1), file=sys.stderr)
    b1 = [r["throughput_img_s"] for r in runs if r["mode"] == "batch-1"]
    dyn = [r["throughput_img_s"] for r in runs if r["mode"] == "dynamic"]
    bad = sum(r["mismatched"] + r["lost"] + r["failed"] for r in runs)
    h, w = det.input_size
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "config": {"model": os.path.basename(args.model), "model_sha256": det.model_sha256,
                   "model_desc": f"preset {det.metadata.preset}, input {h}x{w}, K={det.metadata.postprocess.max_detections}",
                   "clients": args.clients, "duration_s": args.duration, "threads": args.threads, "pool": args.pool,
                   "note": args.note},
        "runs": runs,
        "summary": {"batch1_img_s": float(np.mean(b1)), "dynamic_img_s": float(np.mean(dyn)),
                    "speedup": float(np.mean(dyn) / np.mean(b1)) if np.mean(b1) else float("nan"), "bad_responses": bad},
    }
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"serve_load_{dt.date.today().isoformat()}")
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    with open(stem + ".md", "w", encoding="utf-8") as fh:
        fh.write(markdown(report))
    print(markdown(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
