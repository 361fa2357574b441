"""Accuracy benchmark: sabgal against ground truth on fresh synthetic images.

Renders N fields (all three set-ups, 1024x1360 by default) with a seed that
was never used in development, writes them to disk as a microscope would
(TIFF / PNG / JPEG, 8/16-bit), runs ``sabgal run`` on the folder exactly as a
user would (thresholds learnt from the whole set), and scores every image:

* fraction SA-β-gal positive: absolute error in percentage points (mean, max)
* cell count: mean absolute % error
* detection F1: cells matched one-to-one at IoU >= 0.5
* positive-call F1: true positives = matched cells positive in both

Usage::

    python benchmarks/accuracy.py --n 42 --seed 20261122
    python benchmarks/accuracy.py --n 6 --shape 512 640    # quick look
    python benchmarks/accuracy.py --setups brightfield --n 60 --seed 5151 --name accuracy_brightfield
    python benchmarks/accuracy.py --setups brightfield --n 40 --seed 6464 --negative
    python benchmarks/accuracy.py --setups brightfield --n 40 --seed 5858 --xgal-grey-angle 4 9
    python benchmarks/accuracy.py --n 30 --seed 2020 --magnify 2
    python benchmarks/accuracy.py --n 42 --seed 2222 --camera-encoding srgb [--config srgb]
    python benchmarks/accuracy.py --n 42 --seed 4343 --glass-level 1.05

Writes ``benchmarks/results/accuracy.json`` and ``accuracy_per_image.csv``
(``NAME.json`` and ``NAME_per_image.csv`` with ``--name``). ``--setups``
renders only the given set-ups: one set-up's figures over many more images
than its third of a mixed set (the bars are per set-up). ``--negative``
renders negative controls (no cell stained: the fraction error is then the
false-positive rate; positive-call F1 is undefined and reads 0); the name
defaults to ``accuracy_negative``. ``--xgal-grey-angle LO HI`` renders a pale
X-gal (each field's hue kept, LO-HI degrees from neutral grey: navy or pale
teal, the hardest colours to tell from the cells' own grey density); the
name defaults to ``accuracy_pale``. ``--magnify F`` renders each field at
1/F of the size and enlarges it F times (TIFF/PNG only): nuclei of 16-44 px
at F = 2, as through a 20x objective where the renderer draws a 10x one; the
name defaults to ``accuracy_magnifiedF``. ``--camera-encoding srgb`` renders
through a camera that encodes light with the sRGB tone curve (a number G:
``light ** (1/G)``), as consumer cameras and display exports do; read as
linear by default, or decoded with ``--config srgb``; the name defaults to
``accuracy_camera_ENC`` (``_srgb`` added with that config). ``--glass-level L``
puts every field's glass at L x full scale in its brightest channel: above 1
an overexposed camera, its glass clipped in that channel (in every channel
under a near-white lamp); the name defaults to ``accuracy_glassL``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

BARS = {"fraction_positive_mae_pp": 2.0, "fraction_positive_max_pp": 6.0, "count_mape_pct": 5.0,
        "detection_f1": 0.95, "positive_f1": 0.95}


def score_run(manifest: pd.DataFrame, truth_dir: Path, results_dir: Path, *, bars: dict | None = None
              ) -> tuple[pd.DataFrame, dict, dict]:
    """Score a ``sabgal run`` results folder against rendered truth.

    ``manifest`` has one row per field (``stem``, ``setup``, optionally
    ``counterstain`` and ``image``); ``truth_dir`` holds
    ``<stem>_cells_true.tif`` and ``<stem>_truth.csv`` (``cell_id``,
    ``sabgal_positive``). Returns (per-image scores, summary per set-up and
    overall, whether each meets ``bars``, by default :data:`BARS`)."""
    from sabgal import io as sio
    from sabgal.evaluate import aggregate_scores, score_image

    images = pd.read_csv(results_dir / "images.csv")
    cells = pd.read_csv(results_dir / "cells.csv")
    rows = []
    for rec in manifest.to_dict("records"):
        stem = rec["stem"]
        image_name = Path(rec["image"]).name if isinstance(rec.get("image"), str) else None
        img_row = images[images["image"].map(lambda s: Path(s).stem) == stem]
        truth = pd.read_csv(truth_dir / f"{stem}_truth.csv")
        true_lab = sio.read_labels(truth_dir / f"{stem}_cells_true.tif")
        if img_row.empty or img_row.iloc[0]["status"] != "ok":
            pred_lab = np.zeros_like(true_lab)
            pred_cells = cells.iloc[:0]
        else:
            key = Path(img_row.iloc[0]["image"]).with_suffix("").as_posix().replace("/", "__")
            pred_lab = sio.read_labels(results_dir / "labels" / f"{key}_cells.tif")
            pred_cells = cells[cells["image"] == img_row.iloc[0]["image"]]
        s = score_image(true_lab, truth, pred_lab, pred_cells)
        s.update(stem=stem, image=image_name, setup=rec["setup"], counterstain=rec.get("counterstain"),
                 detected_setup=img_row.iloc[0]["setup"] if not img_row.empty else "")
        rows.append(s)
    per = pd.DataFrame(rows)
    summary = {"all": aggregate_scores(per)}
    for setup, grp in per.groupby("setup"):
        summary[setup] = aggregate_scores(grp)
    passed = {}
    for group, agg in summary.items():
        passed[group] = all(
            (agg[k] <= v) if k.endswith(("_pp", "_pct")) else (agg[k] >= v) for k, v in (bars or BARS).items())
    return per, summary, passed


def magnify_dataset(images_dir: Path, manifest: pd.DataFrame, factor: int) -> None:
    """Enlarge every field of ``manifest`` (its paths relative to
    ``images_dir``) ``factor`` times in place: the RGB image and any DAPI
    companion by bilinear interpolation (same format and bit depth), the true
    cell and nucleus labels by repeating each pixel. A field rendered at
    1/``factor`` of the size so becomes the same field seen through an
    objective ``factor`` times stronger (its optics' blur enlarged with it)."""
    import cv2
    import tifffile

    def grow(a: np.ndarray, interpolation: int) -> np.ndarray:
        h, w = a.shape[:2]
        return cv2.resize(a, (w * factor, h * factor), interpolation=interpolation)

    for rec in manifest.to_dict("records"):
        for key in ("image", "dapi"):
            name = rec.get(key)
            if not isinstance(name, str) or not name:
                continue
            path = images_dir / name
            if path.suffix.lower() in (".tif", ".tiff"):
                tifffile.imwrite(path, grow(tifffile.imread(path), cv2.INTER_LINEAR))
            else:  # PNG: OpenCV reads and writes it in its own (BGR) order
                cv2.imwrite(str(path), grow(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.INTER_LINEAR))
        for key in ("cells_true", "nuclei_true"):
            path = images_dir / rec[key]
            lab = tifffile.imread(path)  # (uint32, which OpenCV does not resize: each pixel F x F times)
            tifffile.imwrite(path, np.repeat(np.repeat(lab, factor, axis=0), factor, axis=1))


def argument_parser(doc: str, *, n: int, seed: int, work: str) -> argparse.ArgumentParser:
    """The options every rendered-truth benchmark takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--shape", type=int, nargs=2, default=(1024, 1360))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=str(HERE / "_work" / work))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--keep", action="store_true", help="keep rendered images and results")
    return ap


def print_summary(summary: dict) -> None:
    cols = ["fraction_positive_mae_pp", "fraction_positive_max_pp", "count_mape_pct", "detection_f1",
            "positive_f1"]
    table = pd.DataFrame(summary).T[["n_images"] + cols]
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


def main(argv: list[str] | None = None) -> int:
    from sabgal import __version__
    from sabgal.cli import main as sabgal_main
    from sabgal.synth import SETUPS, generate_dataset

    ap = argument_parser(__doc__, n=42, seed=20261122, work="accuracy")
    ap.add_argument("--config", default=None)
    ap.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS),
                    help="set-ups to render, cycled through (default: all three)")
    ap.add_argument("--name", default=None,
                    help="result file name stem (default: accuracy, or accuracy_negative)")
    ap.add_argument("--negative", action="store_true", help="negative controls: no cell stained")
    ap.add_argument("--xgal-grey-angle", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="pale X-gal, LO-HI degrees from neutral grey (its hue kept)")
    ap.add_argument("--camera-encoding", default=None, metavar="ENC",
                    help="render through a camera that encodes light for display: 'srgb' (the sRGB "
                         "tone curve) or a number G (light ** (1/G)); pair with --config srgb to read it so")
    ap.add_argument("--magnify", type=int, default=1, metavar="F",
                    help="a higher magnification: render each field at 1/F of --shape and enlarge it F "
                         "times (images bilinear, true labels nearest; TIFF/PNG only), so nuclei span "
                         "F times the renderer's 8-22 px")
    ap.add_argument("--glass-level", type=float, default=None, metavar="L",
                    help="the brightest channel's glass at L x full scale in every field (default: drawn; "
                         "above 1: an overexposed camera, the glass clipped)")
    args = ap.parse_args(argv)
    if args.name is None:
        args.name = (f"accuracy_glass{args.glass_level:g}" if args.glass_level is not None
                     else "accuracy_negative" if args.negative
                     else "accuracy_pale" if args.xgal_grey_angle
                     else f"accuracy_magnified{args.magnify}" if args.magnify != 1
                     else f"accuracy_camera_{args.camera_encoding}" + ("_" + Path(args.config).stem if args.config else "")
                     if args.camera_encoding else "accuracy")

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    images_dir, results_dir = work / "images", work / "results"
    t0 = time.perf_counter()
    shape = tuple(args.shape) if args.magnify == 1 else tuple(v // args.magnify for v in args.shape)
    manifest = generate_dataset(images_dir, n=args.n, seed=args.seed, shape=shape,
                                setups=args.setups, truth_dir=str(work / "truth"), negative=args.negative,
                                xgal_grey_angle_deg=args.xgal_grey_angle, camera_encoding=args.camera_encoding,
                                glass_level=args.glass_level,
                                **({} if args.magnify == 1 else {"formats": ("tif", "png")}))
    if args.magnify != 1:
        magnify_dataset(images_dir, manifest, args.magnify)
    t_render = time.perf_counter() - t0
    cmd = ["run", str(images_dir), "--out", str(results_dir), "--workers", str(args.workers), "-q"]
    if args.config:
        cmd += ["--config", args.config]
    t0 = time.perf_counter()
    rc = sabgal_main(cmd)
    t_run = time.perf_counter() - t0
    # (no stained cell: positive-call F1 is undefined; the fraction error is the false-positive rate)
    bars = {k: v for k, v in BARS.items() if k != "positive_f1"} if args.negative else BARS
    per, summary, passed = score_run(manifest, work / "truth", results_dir, bars=bars)
    result = {
        "sabgal_version": __version__,
        "seed": args.seed,
        "n_images": args.n,
        "shape": list(args.shape),
        "setups": list(args.setups),
        "negative": args.negative,
        "xgal_grey_angle_deg": args.xgal_grey_angle,
        "magnify": args.magnify,
        "camera_encoding": args.camera_encoding,
        "glass_level": args.glass_level,
        "config": args.config,
        "run_exit_code": rc,
        "render_s": round(t_render, 1),
        "run_s": round(t_run, 1),
        "bars": bars,
        "summary": summary,
        "passed": passed,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    per.to_csv(out / f"{args.name}_per_image.csv", index=False)
    print_summary(summary)
    print("pass:", passed)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
