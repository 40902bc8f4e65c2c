"""``clumpdet detect``: run an exported model on FITS/PNG cutouts, write a catalogue.

Exit status: 0 when at least one input was processed (or nothing was left to
do with ``--resume``), 1 when every input failed, 2 for usage errors (bad
options, unreadable model, unknown output format, no inputs, output exists).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from clumpdet.engine.readers import MAX_SIZE_MISMATCH

_FLUSH_SECONDS = 30.0  # rewrite the outputs this often, so --resume loses little after a crash


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``clumpdet detect``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="FITS/PNG/JPEG/.npy files, globs, directories or @filelist "
                             "(x_g.fits x_r.fits x_i.fits are one source)")
    parser.add_argument("--model", required=True, help="exported .onnx (or TensorRT .plan)")
    parser.add_argument("--out", required=True, help="catalogue: .fits, .ecsv, .csv or .parquet")
    parser.add_argument("--summary", help="per-image summary table (default: <out>_summary.<ext>)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    parser.add_argument("--providers", default="cpu",
                        help="onnxruntime execution providers in order, comma-separated (cpu, cuda, tensorrt)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default min(4, CPUs))")
    parser.add_argument("--overlays", metavar="DIR", help="write PNGs with the boxes drawn into DIR")
    parser.add_argument("--threshold", type=float, default=None,
                        help="final score threshold; may only raise the model's own (the exported graph "
                             "already dropped detections below it)")
    parser.add_argument("--max-size-mismatch", type=float, default=MAX_SIZE_MISMATCH,
                        help="centre-crop/pad images within this fraction of the model's input size "
                             f"(default {MAX_SIZE_MISMATCH})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="skip inputs already in the summary (or catalogue) and append to them")
    group.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--ray", action="store_true",
                        help="run on a Ray cluster (extra [scale]): decode tasks plus an actor pool, each actor "
                             "opening the model once; model and inputs must be at the same paths on every node")
    parser.add_argument("--address", help="Ray cluster for --ray (auto, ray://head:10001, ...; default "
                                          "RAY_ADDRESS, else a local Ray instance)")
    parser.add_argument("--ray-actors", type=int, default=None,
                        help="Ray actor pool size (default one per GPU with cuda/tensorrt, else CPUs - 1)")


def default_summary_path(out: str) -> str:
    """``cat.fits`` -> ``cat_summary.fits`` (also for ``.fits.gz``)."""
    lower = out.lower()
    for ext in (".fits.gz", ".fits", ".fit", ".ecsv", ".csv", ".parquet"):
        if lower.endswith(ext):
            return out[: -len(ext)] + "_summary" + out[-len(ext):]
    return out + "_summary"


class Progress:
    """A progress line on stderr: done/total, images/s, failures, ETA."""

    def __init__(self, total: int, enabled: bool = True, stream=None) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = self.last = time.perf_counter()
        self.done = self.failed = 0

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        return (f"clumpdet detect: {self.done}/{self.total} images  {rate:.1f} images/s  "
                f"{self.failed} failed  ETA {eta_s}")

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        now = time.perf_counter()
        if self.enabled and (now - self.last >= (0.25 if self.tty else 10.0) or self.done == self.total):
            self.last = now
            self.stream.write(("\r\x1b[K" + self.line()) if self.tty else self.line() + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty and self.enabled else "") + text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def _usage(text: str) -> int:
    print(f"clumpdet detect: error: {text}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``clumpdet detect``; returns the exit status."""
    from clumpdet.engine.catalogue import CatalogueBuilder, read_table, table_format, write_table
    from clumpdet.engine.detector import Detector
    from clumpdet.engine.inputs import expand_inputs
    from clumpdet.engine.overlay import overlay_names, write_overlay
    from clumpdet.engine.runner import run_detector

    summary_path = args.summary or default_summary_path(args.out)
    if args.batch_size < 1:
        return _usage(f"--batch-size must be >= 1, got {args.batch_size}")
    use_ray = getattr(args, "ray", False)
    if use_ray:
        from clumpdet.engine.scale_ray import import_ray

        if args.overlays:
            return _usage("--overlays is not supported with --ray")
        try:
            import_ray()
        except ValueError as err:
            return _usage(str(err))
    elif getattr(args, "address", None) or getattr(args, "ray_actors", None):
        return _usage("--address and --ray-actors need --ray")
    try:
        table_format(args.out)
        table_format(summary_path)
        detector = Detector(args.model, providers=[p for p in args.providers.split(",") if p.strip()],
                            intra_op_threads=args.threads, score_threshold=args.threshold)
        sources = expand_inputs(args.inputs, detector.metadata.input.lupton.bands)
    except ValueError as err:
        return _usage(str(err))
    if not sources:
        return _usage(f"no input files matched {' '.join(args.inputs)}")
    previous = previous_summary = None
    if args.resume:
        try:
            if os.path.exists(summary_path):
                previous_summary = read_table(summary_path)
            if os.path.exists(args.out):
                previous = read_table(args.out)
        except Exception as err:  # noqa: BLE001 - a damaged earlier output is a usage problem
            return _usage(f"cannot resume from {args.out} / {summary_path}: {err}")
        for table in (previous, previous_summary):
            made_with = table.meta.get("MODELSHA") if table is not None else None
            if made_with and made_with != detector.model_sha256:
                return _usage(f"cannot resume: {args.out} was made by another model (sha256 {made_with[:12]}...); "
                              "use --overwrite or another --out")
        if previous_summary is not None:
            done = {str(s) for s, st in zip(previous_summary["image"], previous_summary["status"]) if st != "failed"}
            previous_summary = previous_summary[[str(s) in done for s in previous_summary["image"]]]
        else:
            done = {str(s) for s in previous["image"]} if previous is not None else set()
        if previous is not None:
            previous = previous[[str(s) in done for s in previous["image"]]]
        sources = [s for s in sources if s.id not in done]
    elif not args.overwrite:
        for path in (args.out, summary_path):
            if os.path.exists(path):
                return _usage(f"{path} exists; pass --resume to continue it or --overwrite to replace it")

    builder = CatalogueBuilder(detector, previous, previous_summary)
    png_names = overlay_names([s.id for s in sources]) if args.overlays else {}
    progress = Progress(len(sources), enabled=not args.quiet)
    if not args.quiet:
        progress.message(f"clumpdet detect: {len(sources)} inputs, model {detector.model_name} "
                         f"({', '.join(detector.providers)}), threshold {detector.score_threshold}")
    counts = {"ok": 0, "no_detections": 0, "failed": 0}
    last_flush = time.perf_counter()
    if use_ray:
        from clumpdet.engine.scale_ray import run_detector_ray

        results = run_detector_ray(detector, sources, model_path=args.model, providers=args.providers.split(","),
                                   batch_size=args.batch_size, actors=args.ray_actors, threads=args.threads,
                                   score_threshold=args.threshold, max_size_mismatch=args.max_size_mismatch,
                                   address=args.address)
    else:
        results = run_detector(detector, sources, batch_size=args.batch_size, workers=args.workers,
                               max_size_mismatch=args.max_size_mismatch)
    for result in results:
        builder.add(result)
        counts[result.status] += 1
        if result.status == "failed":
            progress.message(f"clumpdet detect: failed: {result.error}")
        elif args.overlays:
            try:
                write_overlay(os.path.join(args.overlays, png_names[result.source]), result.cutout.image,
                              result.detections, detector.class_names)
            except OSError as err:
                progress.message(f"clumpdet detect: overlay for {result.source} not written: {err}")
        result.cutout = None  # free the image
        progress.update(result.status == "failed")
        if time.perf_counter() - last_flush > _FLUSH_SECONDS:
            write_table(builder.catalogue(), args.out)
            write_table(builder.summary(), summary_path)
            last_flush = time.perf_counter()
    progress.finish()
    catalogue = builder.catalogue()
    write_table(catalogue, args.out)
    write_table(builder.summary(), summary_path)
    if not args.quiet:
        print(f"clumpdet detect: {len(sources)} inputs: {counts['ok']} with detections, "
              f"{counts['no_detections']} without, {counts['failed']} failed; {progress.rate():.1f} images/s; "
              f"{len(catalogue)} detections in {args.out}; summary {summary_path}", file=sys.stderr)
    return 1 if sources and counts["failed"] == len(sources) else 0
