"""Report benchmark: how long ``sabgal report`` takes against the run it reports on.

Two measurements:

1. **Real run** (default): a synthetic 384-well plate (one 1024 x 1360 field per
   well, counterstain set-up; columns 1-2 negative controls, 23-24 positive
   controls, a dose series in between) is analysed with ``sabgal run``
   (``--no-report``: overlays and tables included, as a user runs it), then
   ``sabgal report DIR`` is run in a fresh process. Both are timed as wall
   clock of the whole command (interpreter start-up and imports included).
   Rendering a field takes seconds, so ``--unique`` distinct fields are
   rendered with :mod:`sabgal.synth` and laid out over the plate as hard links;
   the analysis does not know. With ``--compare-overlays`` the run is repeated
   with ``--no-overlays`` to show what the overlays cost.
2. **Tables only** (``--tables-only``): a 384-image results folder is written
   directly as tables (``--cells-per-image`` cells each, 5 % of images flagged
   with a 1024 x 771 overlay), to time the report on realistic table sizes
   without running the pipeline.

The bar: report time <= 10 % of the run's own time.

Usage::

    python benchmarks/report.py                            # 384 x 1024x1360, all cores
    python benchmarks/report.py --images 96 --shape 512 680 --unique 6   # quick
    python benchmarks/report.py --tables-only

Writes ``benchmarks/results/report.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROWS384 = "ABCDEFGHIJKLMNOP"


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _plate_layout(n_images: int) -> list[tuple[str, str, float, str]]:
    """(well, condition, dose, role) for the first n_images wells of a 384-well plate."""
    out = []
    for r in ROWS384:
        for c in range(1, 25):
            if c <= 2:
                cond, dose, role = "DMSO", 0.0, "negative_control"
            elif c >= 23:
                cond, dose, role = "palbociclib", 1.0, "positive_control"
            else:
                cond = "etoposide" if r < "I" else "doxorubicin"
                dose, role = float(2 ** ((c - 3) % 10)) / 8, "sample"
            out.append((f"{r}{c:02d}", cond, dose, role))
    if n_images > len(out):
        raise SystemExit(f"--images {n_images}: a 384-well plate has 384 wells")
    # keep controls in small plates: take whole columns first
    order = sorted(out, key=lambda w: (int(w[0][1:]) not in (1, 2, 23, 24), int(w[0][1:]), w[0][0]))
    return sorted(order[:n_images], key=lambda w: (w[0][0], int(w[0][1:])))


def make_plate(work: Path, *, n_images: int, shape: tuple[int, int], n_unique: int, seed: int) -> tuple[Path, Path]:
    """Render ``n_unique`` fields (cached) and hard-link them into a plate; returns (folder, plate map)."""
    import tifffile

    from sabgal import synth

    cache = work / f"fields_{shape[0]}x{shape[1]}_{n_unique}_{seed}"
    cache.mkdir(parents=True, exist_ok=True)
    for i in range(n_unique):
        kind = ("control", "treated", "positive")[i % 3]
        path = cache / f"{kind}_{i:03d}.tif"
        if path.exists():
            continue
        frac = {"control": 0.03, "treated": 0.3, "positive": 0.7}[kind]
        params = synth.random_params(np.random.default_rng([seed, i]), setup="counterstain", shape=shape,
                                     senescent_fraction=frac, jpeg=False)
        field = synth.render_field(params, np.random.default_rng([seed, i, 1]))
        tifffile.imwrite(path, field.rgb, photometric="rgb")
        logging.info("rendered %s", path.name)
    pools = {k: sorted(cache.glob(f"{k}_*.tif")) for k in ("control", "treated", "positive")}
    if not all(pools.values()):
        raise SystemExit("--unique must be >= 3 (control, treated and positive fields)")
    plate = work / f"plate_{n_images}_{shape[0]}x{shape[1]}"
    if plate.exists():
        shutil.rmtree(plate)
    plate.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = ["well,condition,dose,role"]
    for well, cond, dose, role in _plate_layout(n_images):
        pool = pools[{"negative_control": "control", "positive_control": "positive"}.get(role, "treated")]
        src = pool[int(rng.integers(len(pool)))]
        dst = plate / f"{well}_f1.tif"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        rows.append(f"{well},{cond},{dose:g},{role}")
    platemap = work / f"platemap_{n_images}.csv"
    platemap.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return plate, platemap


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def real_run(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    t = time.perf_counter()
    plate, platemap = make_plate(work, n_images=args.images, shape=tuple(args.shape), n_unique=args.unique,
                                 seed=args.seed)
    render_s = time.perf_counter() - t
    sabgal = [sys.executable, "-m", "sabgal"]
    workers = args.workers or os.cpu_count() or 1
    out = work / "out"
    result: dict = {"mode": "real run", "n_images": args.images, "shape": list(args.shape),
                    "unique_fields": args.unique, "workers": workers, "render_s": round(render_s, 1)}
    runs = [("with_overlays", [])]
    if args.compare_overlays:
        runs.append(("without_overlays", ["--no-overlays"]))
    for label, extra in runs:
        if out.exists():
            shutil.rmtree(out)
        load = _load()
        run_s = _timed([*sabgal, "run", str(plate), "--out", str(out), "--platemap", str(platemap), "-q",
                        "--no-report", "-j", str(workers), *extra])
        result[f"run_s_{label}"] = round(run_s, 2)
        result[f"load_before_run_{label}"] = load
        logging.info("sabgal run (%s): %.1f s", label, run_s)
    # the report of the last run with overlays (so thumbnails are included)
    if args.compare_overlays:
        shutil.rmtree(out)
        _timed([*sabgal, "run", str(plate), "--out", str(out), "--platemap", str(platemap), "-q", "--no-report",
                "-j", str(workers)])
    reports = [_timed([*sabgal, "report", str(out), "-q"]) for _ in range(args.repeat)]
    result["report_s_runs"] = [round(r, 2) for r in reports]
    result["report_s"] = round(float(np.median(reports)), 2)
    result["report_in_process_s"] = round(_in_process(out), 2)
    result["report_fraction_of_run"] = round(result["report_s"] / result["run_s_with_overlays"], 4)
    if args.compare_overlays:
        result["overlay_cost_fraction_of_run"] = round(
            result["run_s_with_overlays"] / result["run_s_without_overlays"] - 1, 4)
    run_json = json.loads((out / "run.json").read_text(encoding="utf-8"))
    result["analysis_wall_s"] = (run_json.get("timings") or {}).get("wall_s")
    import pandas as pd

    images = pd.read_csv(out / "images.csv")
    result["n_cells"] = int(images["n_cells"].sum())
    result["n_qc_flagged"] = int((~images["qc_pass"].astype(bool)).sum())
    result["report_html_mb"] = round((out / "report.html").stat().st_size / 1e6, 2)
    qc_dir = out / "qc"
    result["overlays_mb"] = round(sum(p.stat().st_size for p in qc_dir.glob("*.png")) / 1e6, 1)
    result["overlay_state_mb"] = round(sum(p.stat().st_size for p in (out / ".sabgal").glob("*.overlay.npz"))
                                       / 1e6, 1)
    return result


def _in_process(out: Path) -> float:
    from sabgal.report import write_report

    write_report(out)  # warm (imports, font cache)
    t = time.perf_counter()
    write_report(out)
    return time.perf_counter() - t


def tables_only(args: argparse.Namespace) -> dict:
    """A 384-image results folder written as tables, then ``sabgal report`` on it."""
    import pandas as pd

    from sabgal.batch import image_key
    from sabgal.config import Config, config_to_dict
    from sabgal.overlay import render_overlay, write_overlay

    out = Path(args.work) / "tables_only"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    rows, cells = [], []
    layout = _plate_layout(args.images)
    for well, cond, dose, role in layout:
        image = f"{well}_f1.tif"
        n = int(rng.poisson(args.cells_per_image))
        p = {"negative_control": 0.05, "positive_control": 0.7}.get(role, 0.05 + 0.5 * dose / 64)
        pos = rng.random(n) < p
        enl = rng.random(n) < 0.1 + 0.5 * pos
        flagged = rng.random() < 0.05
        rows.append({"image": image, "plate": "BENCH", "well": well, "row": well[0], "column": int(well[1:]),
                     "field": 1, "condition": cond, "dose": dose, "role": role, "n_cells": n,
                     "n_sabgal_positive": int(pos.sum()), "fraction_sabgal_positive": pos.mean() if n else np.nan,
                     "n_enlarged": int(enl.sum()), "fraction_enlarged": enl.mean() if n else np.nan,
                     "n_senescent": int((pos & enl).sum()),
                     "fraction_senescent": (pos & enl).mean() if n else np.nan, "status": "ok", "error": "",
                     "qc_pass": not flagged,
                     "qc_reasons": "out of focus: sharpness 0.20x plate median (< 0.35)" if flagged else "",
                     "setup": "counterstain", "counterstain": "nuclear_fast_red",
                     "xgal_angle_from_reference_deg": 4.0, "qc_saturated_fraction": 0.0,
                     "qc_background_od_nonuniformity": 0.02, "qc_debris_area_fraction": 0.001,
                     "qc_focus_ratio": 0.2 if flagged else 1.0, "qc_cell_count_ratio": 1.0,
                     "positive_threshold_od": 0.12, "positive_threshold_source": "controls"})
        cells.append(pd.DataFrame({
            "image": image, "cell_id": np.arange(1, n + 1),
            "xgal_od_p90": np.where(pos, rng.lognormal(np.log(0.4), 0.4, n), rng.lognormal(np.log(0.04), 0.5, n)),
            "area_px": (rng.lognormal(np.log(2500), 0.35, n) * np.where(enl, 2.2, 1)).astype(int),
            "sabgal_positive": pos, "enlarged": enl, "senescent": pos & enl, "touches_border": rng.random(n) < 0.08}))
        if flagged:
            rgb = (rng.random((771, 1024, 3)) * 40 + 200).astype(np.uint8)
            lab = np.zeros((771, 1024), np.uint32)
            write_overlay(out / "qc" / f"{image_key(image)}.png", render_overlay(rgb, lab, lab, None, title=image))
    images = pd.DataFrame(rows)
    images.to_csv(out / "images.csv", index=False)
    cell_table = pd.concat(cells, ignore_index=True)
    cell_table.to_csv(out / "cells.csv", index=False)
    run = {"sabgal_version": "bench", "config": config_to_dict(Config()),
           "thresholds": {"positive": 0.12, "positive_source": "controls", "measure": "xgal_od_p90"},
           "inputs": [{"image": i, "path": i} for i in images["image"]], "n_images": len(images),
           "timings": {"wall_s": None}}
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    reports = [_timed([sys.executable, "-m", "sabgal", "report", str(out), "-q"]) for _ in range(args.repeat)]
    return {"mode": "tables only", "n_images": len(images), "n_cells": int(len(cell_table)),
            "n_flagged_with_overlay": int((~images["qc_pass"]).sum()),
            "report_s_runs": [round(r, 2) for r in reports], "report_s": round(float(np.median(reports)), 2),
            "report_in_process_s": round(_in_process(out), 2),
            "report_html_mb": round((out / "report.html").stat().st_size / 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=384, help="images (wells of a 384-well plate; default 384)")
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1360), metavar=("ROWS", "COLS"))
    parser.add_argument("--unique", type=int, default=12, help="distinct rendered fields (default 12)")
    parser.add_argument("--workers", type=int, default=0, help="workers for sabgal run (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="report repetitions (median reported)")
    parser.add_argument("--compare-overlays", action="store_true", help="also run with --no-overlays")
    parser.add_argument("--tables-only", action="store_true", help="time the report on synthetic tables only")
    parser.add_argument("--cells-per-image", type=int, default=250)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--work", default=str(HERE / "_work" / "report"), help="scratch folder")
    parser.add_argument("--output", default=str(HERE / "results" / "report.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sabgal").setLevel(logging.WARNING)
    from sabgal import __version__

    result = tables_only(args) if args.tables_only else real_run(args)
    result.update({"sabgal_version": __version__, "python": platform.python_version(),
                   "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_after": _load()})
    if "report_fraction_of_run" in result:
        ok = result["report_fraction_of_run"] <= 0.10
        logging.info("report %.2f s vs run %.1f s: %.1f %% of the run (bar: <= 10 %%) %s", result["report_s"],
                     result["run_s_with_overlays"], 100 * result["report_fraction_of_run"],
                     "PASS" if ok else "FAIL")
    else:
        logging.info("report on %d images / %d cells: %.2f s", result["n_images"], result["n_cells"],
                     result["report_s"])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    existing[result["mode"]] = result
    out.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
