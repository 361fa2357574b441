"""Command-line interface: ``sabgal run``, ``sabgal report``, ``sabgal synth``.

A thin shell: parse, load the config, call :mod:`sabgal.batch`, return an exit
code (0 when every image succeeded, 1 when some failed, 2 on bad usage).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main"]

log = logging.getLogger("sabgal")


def build_parser() -> argparse.ArgumentParser:
    from sabgal import __version__

    parser = argparse.ArgumentParser(
        prog="sabgal",
        description="Quantify SA-β-gal stained microscopy: per-cell X-gal, morphology, senescence calls.")
    parser.add_argument("--version", action="version", version=f"sabgal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="analyse images, folders or globs into an output folder",
                         description="Analyse SA-β-gal images. Writes images.csv, cells.csv, labels/ and run.json.")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    run.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    run.add_argument("--config", "-c", metavar="FILE", help="TOML config file or preset name "
                     "(default, counterstain, brightfield, fluorescence); default: decide per image")
    g = run.add_argument_group("execution")
    g.add_argument("--workers", "-j", type=int, default=None, metavar="N",
                   help="parallel workers: processes, or threads with --threads (default: all cores)")
    g.add_argument("--threads", action="store_true",
                   help="run the workers as threads of this one process instead of separate processes "
                        "(config batch.executor): less memory and no start-up, but a crash in a C "
                        "library ends the whole run (finished images are kept)")
    g.add_argument("--force", action="store_true", help="redo images already finished in DIR")
    g.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster, e.g. tcp://host:8786 (workers must see INPUT and DIR "
                        "at the same paths); default: config batch.dask_scheduler, else local processes")
    g.add_argument("--dry-run", action="store_true",
                   help="list the image sets found (image, companion, plate, well, field, plate map) and stop")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")
    g.add_argument("--verbose", "-v", action="count", default=0, help="more log output")
    p = run.add_argument_group("plate")
    p.add_argument("--platemap", metavar="FILE",
                   help="plate map: long CSV (plate, well, condition, dose, replicate, role) or an "
                        "8x12 / 16x24 grid (CSV or .xlsx); every image's well must be listed")
    p.add_argument("--filename-pattern", metavar="PATTERN",
                   help="how file names give plate/well/field: auto (default), imagexpress, operetta, "
                        "cytation, incucyte, generic, or a regex with named groups (?P<well>...), "
                        "(?P<plate>...), (?P<field>...)")
    p.add_argument("--flat-field", metavar="PATH|blanks",
                   help="flat-field correction from a blank image, a folder of blank images (median), "
                        "or 'blanks': per plate, the median of the plate map's blank wells")
    o = run.add_argument_group("options")
    o.add_argument("--pixel-size", type=float, metavar="UM", help="µm per pixel when files carry none")
    o.add_argument("--no-labels", action="store_true", help="do not write label images")
    o.add_argument("--format", choices=("csv", "parquet", "both"), default="csv",
                   help="table format (default csv; parquet needs pyarrow)")
    o.add_argument("--no-overlays", action="store_true", help="do not write QC overlays (DIR/qc/*.png)")
    o.add_argument("--no-report", action="store_true", help="do not write DIR/report.html at the end")

    rep = sub.add_parser("report", help="write the HTML report of a results folder",
                         description="Write DIR/report.html: plate heat-maps, conditions, distributions, "
                                     "QC, provenance and methods, in one self-contained file.")
    rep.add_argument("dir", metavar="DIR", help="results folder of 'sabgal run'")
    rep.add_argument("--output", "-o", metavar="FILE", help="where to write (default DIR/report.html)")
    rep.add_argument("--plate-format", type=int, choices=(6, 12, 24, 48, 96, 384, 1536), metavar="WELLS",
                     help="plate layout for the heat-maps (default: 96, 384 or 1536, the smallest that fits)")
    rep.add_argument("--max-thumbnails", type=int, default=48, metavar="N",
                     help="flagged images shown with a thumbnail (default 48)")
    rep.add_argument("--quiet", "-q", action="store_true", help="warnings only")

    synth = sub.add_parser("synth", help="render synthetic SA-β-gal images with ground truth",
                           add_help=False)
    synth.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _fail(msg: object, code: int = 2) -> int:
    print(f"sabgal: error: {msg}", file=sys.stderr)
    return code


def _print_dry_run(sets, metadata, with_map: bool) -> None:
    import pandas as pd

    from sabgal.plate import plate_summary

    table = pd.DataFrame({
        "image": [s.image for s in sets],
        "companion": [s.companion or "" for s in sets],
        "plate": metadata["plate"].to_numpy(),
        "well": metadata["well"].to_numpy(),
        "field": metadata["field"].astype("object").where(metadata["field"].notna(), "").to_numpy(),
    })
    if with_map:
        for col in ("condition", "dose", "role"):
            table[col] = metadata[col].to_numpy()
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 80, "display.width", 250):
        sys.stdout.write(table.to_string(index=False) + "\n")
    sys.stdout.write(f"{plate_summary(metadata)}; file-name pattern: "
                     f"{metadata.attrs.get('filename_pattern') or 'none matched'}\n")


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _LogProgress:
    """Progress as occasional log lines (every 10 % or 60 s) when stderr is not a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self.last_t, self.last_pct = self.t0, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        pct = int(100 * self.n / max(self.total, 1))
        if self.n == self.total or pct >= self.last_pct + 10 or now - self.last_t >= 60:
            rate = self.n / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            log.info("%d/%d images (%d %%), %.2f img/s, ETA %s", self.n, self.total, pct, rate,
                     _fmt_eta(eta) if eta == eta else "?")
            self.last_t, self.last_pct = now, pct


# One BLAS/OpenMP thread per process, set before numpy loads: BLAS threads spin and
# take the cores the worker processes need (benchmarks/batch.py, 1024x1360 images:
# 15-20 % more CPU per image, no gain for one worker, lower throughput for two; on
# 256x340 images 2-worker scaling fell to 0.45). Dask workers set the same by default.
# An explicit value in the environment wins.
_BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _cmd_run(args: argparse.Namespace) -> int:
    for var in _BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    from sabgal import __version__, batch
    from sabgal.config import ConfigError, load_config

    _setup_logging(args.quiet, args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(exc)
    overrides: dict = {}
    if args.pixel_size is not None:
        if args.pixel_size <= 0:
            return _fail("--pixel-size must be > 0 (µm per pixel)")
        overrides["setup"] = {"pixel_size_um": args.pixel_size}
    batch_overrides: dict = {}
    if args.no_labels:
        batch_overrides["write_labels"] = False
    if args.no_overlays:
        batch_overrides["overlays"] = False
    if args.filename_pattern:
        batch_overrides["filename_pattern"] = args.filename_pattern
    if args.dask_scheduler:
        batch_overrides["dask_scheduler"] = args.dask_scheduler
    if args.threads:
        batch_overrides["executor"] = "threads"
    if batch_overrides:
        overrides["batch"] = batch_overrides
    if args.flat_field:
        overrides["illumination"] = {"method": "flat_field", "flat_field_path": args.flat_field}
    try:
        if overrides:
            config = config.replace(**overrides)
    except ConfigError as exc:
        return _fail(exc)
    out = Path(args.out)
    try:
        sets = batch.discover_images(args.inputs, config, exclude=[out])
        metadata = batch.collect_metadata(sets, config, platemap=args.platemap)
    except batch.InputError as exc:
        return _fail(exc)
    if args.dry_run:
        _print_dry_run(sets, metadata, with_map=args.platemap is not None)
        return 0
    formats = ("csv", "parquet") if args.format == "both" else (args.format,)
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return _fail("--format parquet needs pyarrow (pip install 'sabgal[parquet]')")
    scheduler = config.batch.dask_scheduler
    workers = args.workers if args.workers is not None else (config.batch.workers or os.cpu_count() or 1)
    workers = max(1, min(workers, len(sets)))
    try:
        flats = batch.prepare_flat_fields(sets, config, out, metadata=metadata)
    except batch.InputError as exc:
        return _fail(exc)
    done, todo = batch.pending_images(sets, config, out, force=args.force, flat_fields=flats)
    kind = "thread" if config.batch.executor == "threads" and workers > 1 else "worker"
    where = f"Dask cluster {scheduler}" if scheduler else f"{workers} {kind}{'s' if workers > 1 else ''}"
    log.info("sabgal %s: %d image(s) -> %s (%s)", __version__, len(sets), out, where)
    if done:
        log.info("%d image(s) finished by an earlier run are kept (--force redoes them)", len(done))
    t0 = time.perf_counter()
    n_err = 0
    peak_rss: list[float] = []
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: worker processes can then be forked safely
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet or not tty, file=sys.stderr, smoothing=0.1)
    progress = bar if (tty or args.quiet) else _LogProgress(len(todo))
    try:
        for rec in batch.run_batch(sets, config, out, workers=workers, force=args.force, metadata=metadata,
                                   flat_fields=flats):
            if rec.get("skipped"):
                continue
            if rec.get("status") != "ok":
                n_err += 1
                log.warning("%s", rec.get("error"))
            if rec.get("peak_rss_mb"):
                peak_rss.append(float(rec["peak_rss_mb"]))
            progress.update(1)
        # plain-brightfield fields with too few stained cells to size their
        # nuclei by take their plate's size where theirs disagrees
        again = batch.refine_nucleus_sizes(sets, config, out, metadata=metadata, workers=workers,
                                           flat_fields=flats)
        if again:
            log.info("%d plain-brightfield field(s) analysed again with their plate's nucleus size", len(again))
    except KeyboardInterrupt:
        bar.close()
        print(f"sabgal: interrupted; finished images are kept in {out}. Rerun the same command to resume.",
              file=sys.stderr)
        return 130
    except batch.InputError as exc:
        bar.close()
        return _fail(exc)
    bar.close()
    elapsed = time.perf_counter() - t0
    try:
        images, cells = batch.rebuild_tables(sets, config, out, metadata=metadata, formats=formats, run_info={
            "command": ["sabgal"] + sys.argv[1:] if sys.argv else [],
            "timings": {"wall_s": round(elapsed, 3), "workers": None if scheduler else workers,
                        "dask_scheduler": scheduler, "images_processed": len(todo),
                        "images_skipped": len(done),
                        "images_per_s": round(len(todo) / elapsed, 4) if todo and elapsed > 0 else None,
                        "worker_peak_rss_mb": max(peak_rss) if peak_rss else None},
        })
    except (batch.InputError, ValueError) as exc:
        return _fail(exc)
    failed_rows = images[images["status"] != "ok"] if len(images) else images
    failed = len(failed_rows)
    ok = len(images) - failed
    log.info("%d image(s) ok, %d failed, %d cells; %.1f s. Results in %s", ok, failed, len(cells), elapsed, out)
    if not args.no_report:
        from sabgal.report import report_after_run

        report_after_run(out)
    if failed:
        lines = [f"sabgal: {failed} of {len(images)} image(s) failed:"]
        lines += [f"  {e}" for e in failed_rows["error"].head(10)]
        if failed > 10:
            lines.append(f"  ... and {failed - 10} more")
        lines.append(f"see {out / 'images.csv'} (columns status, error)")
        print("\n".join(lines), file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sabgal.report import write_report

    _setup_logging(args.quiet, 0)
    if args.max_thumbnails < 0:
        return _fail("--max-thumbnails must be >= 0")
    try:
        path = write_report(args.dir, args.output, max_thumbnails=args.max_thumbnails,
                            plate_wells=args.plate_format)
    except ImportError as exc:
        return _fail(f"the report needs matplotlib (pip install 'sabgal[report]'): {exc}")
    except (FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    log.info("report written to %s", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sabgal`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "synth":
        from sabgal.synth import synth_main

        return synth_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "report":
        return _cmd_report(args)
    parser.error(f"unknown command {args.command!r}")
    return 2
