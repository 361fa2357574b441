"""Command-line interface: ``sabgal run``, ``sabgal synth``.

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
                   help="parallel worker processes (default: all cores)")
    g.add_argument("--force", action="store_true", help="redo images already finished in DIR")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")
    g.add_argument("--verbose", "-v", action="count", default=0, help="more log output")
    o = run.add_argument_group("options")
    o.add_argument("--pixel-size", type=float, metavar="UM", help="µm per pixel when files carry none")
    o.add_argument("--no-labels", action="store_true", help="do not write label images")

    synth = sub.add_parser("synth", help="render synthetic SA-β-gal images with ground truth",
                           add_help=False)
    synth.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from sabgal import __version__, batch
    from sabgal.config import ConfigError, load_config

    _setup_logging(args.quiet, args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sabgal: error: {exc}", file=sys.stderr)
        return 2
    overrides: dict = {}
    if args.pixel_size is not None:
        if args.pixel_size <= 0:
            print("sabgal: error: --pixel-size must be > 0 (µm per pixel)", file=sys.stderr)
            return 2
        overrides["setup"] = {"pixel_size_um": args.pixel_size}
    if args.no_labels:
        overrides["batch"] = {"write_labels": False}
    if overrides:
        config = config.replace(**overrides)
    try:
        sets = batch.discover_images(args.inputs, config)
    except batch.InputError as exc:
        print(f"sabgal: error: {exc}", file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else (config.batch.workers or os.cpu_count() or 1)
    workers = max(1, min(workers, len(sets)))
    out = Path(args.out)
    log.info("sabgal %s: %d image(s) -> %s (%d worker%s)", __version__, len(sets), out, workers,
             "s" if workers > 1 else "")
    t0 = time.perf_counter()
    n_err = n_skip = 0
    from tqdm import tqdm

    show = not args.quiet and sys.stderr.isatty()
    with tqdm(total=len(sets), unit="img", disable=not show, file=sys.stderr) as bar:
        for rec in batch.run_batch(sets, config, out, workers=workers, force=args.force):
            if rec.get("skipped"):
                n_skip += 1
            elif rec.get("status") != "ok":
                n_err += 1
                log.warning("%s", rec.get("error"))
            bar.update(1)
    elapsed = time.perf_counter() - t0
    images, cells = batch.rebuild_tables(sets, config, out, run_info={
        "command": ["sabgal"] + sys.argv[1:] if sys.argv else [],
        "timings": {"wall_s": round(elapsed, 3), "workers": workers,
                    "images_processed": len(sets) - n_skip, "images_skipped": n_skip},
    })
    failed = int((images["status"] != "ok").sum()) if len(images) else 0
    ok = len(images) - failed
    log.info("%d image(s) ok, %d failed, %d cells; %.1f s. Results in %s", ok, failed, len(cells), elapsed, out)
    if failed:
        print(f"sabgal: {failed} of {len(images)} image(s) failed; see {out / 'images.csv'} (status, error)",
              file=sys.stderr)
        return 1
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
    parser.error(f"unknown command {args.command!r}")
    return 2
