"""Batch throughput benchmark: a synthetic 96-well plate through the process pool
(1 and 2 workers) and through a Dask ``LocalCluster`` (2 worker processes).

The plate has 96 wells x 2 fields = 192 images of 1024 x 1360 px (counterstain
set-up; columns 1-2 are negative controls with few senescent cells, the rest
treated). Rendering a field takes seconds, so ``--unique`` distinct fields are
rendered with :mod:`sabgal.synth` (RGB TIFF) and laid out over the plate as hard links
(copies where links are impossible); the analysis does not know, and its cost
does not depend on it.

Each configuration analyses the whole plate into its own folder through
:func:`sabgal.batch.run_batch` (exactly what ``sabgal run`` calls; a process
pool is started per call, as ``sabgal run`` does), timed from the first
submission to the last committed result. To be fair on a machine shared with
other work, the plate is cut into ``--slices`` slices and every slice goes
through all configurations in an order rotated from slice to slice; the Dask
cluster is started once (its start-up reported separately). The table rebuild
(thresholds from controls, wells, conditions, CellProfiler export, QC
overlays) is timed separately. Reported:

* images/s for each configuration (whole plate and per slice), and the
  scaling efficiency ``rate(2 workers) / (2 x rate(1 worker))``;
* peak resident memory per worker (max over workers of ``ru_maxrss``);
* Dask overhead ``time(Dask, 2 workers) / time(pool, 2 workers) - 1``, with
  and without the cluster start-up;
* CPU seconds per image in the worker and the workers' CPU utilisation, and
  the load average before and after each run: other work on the machine
  distorts scaling, so read the rates with them.

Usage::

    python benchmarks/batch.py                        # full: 192 images, 1024x1360
    python benchmarks/batch.py --images 48            # quicker: 24 wells x 2 fields
    python benchmarks/batch.py --images 16 --shape 512 680 --unique 4   # smoke test

Writes ``benchmarks/results/batch.json``.
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

# As `sabgal run` does (see sabgal.cli): one BLAS thread per process, before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on this platform
        return []


def _wells(n_images: int, fields: int) -> list[str]:
    n_wells = -(-n_images // fields)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    if n_wells > len(wells):
        raise SystemExit(f"--images {n_images} needs {n_wells} wells; a 96-well plate has 96 (use --fields)")
    # spread over columns first so that small plates still have control columns 1-2
    order = sorted(wells, key=lambda w: (int(w[1:]) > 2, w[1:], w[0]))
    return sorted(order[:n_wells], key=lambda w: (w[0], int(w[1:])))


def make_plate(work: Path, *, n_images: int, fields: int, shape: tuple[int, int], n_unique: int,
               seed: int) -> tuple[Path, Path]:
    """Render the unique fields (cached) and lay the plate out; returns (folder, plate map)."""
    import tifffile

    from sabgal import synth

    cache = work / f"fields_{shape[0]}x{shape[1]}_{n_unique}_{seed}"
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = []
    for i in range(n_unique):
        control = i % 3 == 0  # a third of the distinct fields look like controls
        kinds.append("control" if control else "treated")
        path = cache / f"{kinds[-1]}_{i:03d}.tif"
        if path.exists():
            continue
        params = synth.random_params(np.random.default_rng([seed, i]), setup="counterstain", shape=shape,
                                     senescent_fraction=0.02 if control else 0.4, jpeg=False)
        field = synth.render_field(params, np.random.default_rng([seed, i, 1]))
        tifffile.imwrite(path, field.rgb, photometric="rgb")
        logging.info("rendered %s", path.name)
    controls = sorted(cache.glob("control_*.tif"))
    treated = sorted(cache.glob("treated_*.tif"))
    if not controls or not treated:
        raise SystemExit("--unique must be >= 2 (a control field and a treated field)")
    plate = work / f"plate_{n_images}_{shape[0]}x{shape[1]}"
    if plate.exists():
        shutil.rmtree(plate)
    plate.mkdir(parents=True)
    rows = ["well,condition,dose,role"]
    k = 0
    for well in _wells(n_images, fields):
        col = int(well[1:])
        control = col <= 2
        pool = controls if control else treated
        dose = 0 if control else 2 ** ((col - 3) % 10)
        rows.append(f"{well},{'DMSO' if control else 'etoposide'},{dose},"
                    f"{'negative_control' if control else 'sample'}")
        for f in range(1, fields + 1):
            if k >= n_images:
                break
            src = pool[int(rng.integers(len(pool)))]
            dst = plate / f"BENCH1_{well}_s{f}.tif"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            k += 1
    platemap = work / f"platemap_{n_images}.csv"
    platemap.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return plate, platemap


CONFIGS = (("pool-1", 1, False), ("pool-2", 2, False), ("dask-2", 2, True))


def run_interleaved(plate: Path, platemap: Path, work: Path, *, blocks: int, dask: bool) -> list[dict]:
    """Analyse the whole plate once per configuration, in ``blocks`` interleaved slices.

    On a machine shared with other work the load drifts by the minute; running
    slice k of the plate through every configuration, in an order rotated from
    slice to slice, exposes all configurations to the same conditions.
    """
    from sabgal import batch
    from sabgal.config import Config

    config = Config()
    sets = batch.discover_images([plate], config)
    meta = batch.collect_metadata(sets, config, platemap=platemap)
    configs = [c for c in CONFIGS if dask or not c[2]]
    state = {label: {"wall": 0.0, "recs": [], "blocks": [], "load": []} for label, _, _ in configs}
    cluster = client = None
    startup = None
    if dask:
        from distributed import Client, LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.wait_for_workers(2)
        startup = time.perf_counter() - t
    outs = {label: work / f"out_{label}" for label, _, _ in configs}
    for out in outs.values():
        if out.exists():
            shutil.rmtree(out)
    try:
        slices = np.array_split(np.arange(len(sets)), blocks)
        for b, idx in enumerate(slices):
            k = b % len(configs)
            for label, workers, is_dask in configs[k:] + configs[:k]:
                part = [sets[i] for i in idx]
                kwargs: dict = {"metadata": meta, "force": True}
                if is_dask:
                    kwargs["dask_scheduler"] = client
                else:
                    kwargs["executor_factory"] = batch._default_pool  # a pool even for 1 worker
                state[label]["load"].append(_load()[0] if _load() else None)
                t0 = time.perf_counter()
                recs = list(batch.run_batch(part, config, outs[label], workers=workers, **kwargs))
                wall = time.perf_counter() - t0
                failed = [r for r in recs if r.get("status") != "ok"]
                if failed:
                    raise SystemExit(f"{label}: {len(failed)} image(s) failed, e.g. {failed[0].get('error')}")
                state[label]["wall"] += wall
                state[label]["recs"] += recs
                state[label]["blocks"].append(round(len(part) / wall, 4))
            logging.info("slice %d/%d: %s", b + 1, len(slices),
                         ", ".join(f"{lbl} {st['blocks'][-1]:.3f} img/s" for lbl, st in state.items()))
    finally:
        if client is not None:
            client.close()
            cluster.close()
    results = []
    for label, workers, is_dask in configs:
        st = state[label]
        recs = st["recs"]
        t = time.perf_counter()
        images, cells = batch.rebuild_tables(sets, config, outs[label], metadata=meta)
        rebuild = time.perf_counter() - t
        per_image = [r["elapsed_s"] for r in recs]
        cpu = [r["cpu_s"] for r in recs if r.get("cpu_s") is not None]
        rss = [r["peak_rss_mb"] for r in recs if r.get("peak_rss_mb")]
        result = {
            "label": label,
            "executor": "dask LocalCluster (processes, 1 thread each)" if is_dask else "process pool",
            "workers": workers,
            "n_images": len(recs),
            "wall_s": round(st["wall"], 3),
            "images_per_s": round(len(recs) / st["wall"], 4),
            "images_per_s_by_slice": st["blocks"],
            "per_image_s_mean": round(float(np.mean(per_image)), 4),
            # CPU seconds per image in the worker process (all its threads); cpu_utilisation =
            # busy share of the workers' wall time (below 1 when other processes compete)
            "per_image_cpu_s_mean": round(float(np.mean(cpu)), 4) if cpu else None,
            "cpu_utilisation": round(float(np.sum(cpu)) / (st["wall"] * workers), 3) if cpu else None,
            "peak_rss_per_worker_mb": max(rss) if rss else None,
            "load_avg_1min_at_slice_start": st["load"],
            "rebuild_tables_s": round(rebuild, 3),
            "n_cells": int(len(cells)),
            "threshold_source": str(images["positive_threshold_source"].iloc[0]),
        }
        if is_dask:
            result["cluster_startup_s"] = round(startup, 3)
        logging.info("%s: %.1f s, %.3f img/s, peak RSS/worker %s MB", label, st["wall"], result["images_per_s"],
                     result["peak_rss_per_worker_mb"])
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192, help="images on the plate (default 192)")
    parser.add_argument("--fields", type=int, default=2, help="fields per well (default 2)")
    parser.add_argument("--shape", type=int, nargs=2, default=(1024, 1360), metavar=("ROWS", "COLS"))
    parser.add_argument("--unique", type=int, default=24, help="distinct rendered fields (default 24)")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster run")
    parser.add_argument("--slices", type=int, default=8,
                        help="interleave the configurations over this many slices of the plate (default 8)")
    parser.add_argument("--work", default=str(HERE / "_work" / "batch"), help="scratch folder")
    parser.add_argument("--output", default=str(HERE / "results" / "batch.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sabgal").setLevel(logging.WARNING)
    from sabgal import __version__

    work = Path(args.work)
    t = time.perf_counter()
    plate, platemap = make_plate(work, n_images=args.images, fields=args.fields, shape=tuple(args.shape),
                                 n_unique=args.unique, seed=args.seed)
    render_s = time.perf_counter() - t
    runs = run_interleaved(plate, platemap, work, blocks=max(1, args.slices), dask=not args.no_dask)
    by = {r["label"]: r for r in runs}
    p1, p2 = by["pool-1"], by["pool-2"]
    eff_slices = [a / (2 * b) for a, b in zip(p2["images_per_s_by_slice"], p1["images_per_s_by_slice"])]
    summary = {
        "scaling_efficiency_2_workers": round(p2["images_per_s"] / (2 * p1["images_per_s"]), 3),
        "scaling_efficiency_by_slice_median": round(float(np.median(eff_slices)), 3),
        "scaling_efficiency_by_slice_range": [round(min(eff_slices), 3), round(max(eff_slices), 3)],
        "peak_rss_per_worker_mb": max(r["peak_rss_per_worker_mb"] or 0 for r in runs),
    }
    if "dask-2" in by:
        d = by["dask-2"]
        ovh = [b / a - 1 for a, b in zip(d["images_per_s_by_slice"], p2["images_per_s_by_slice"])]
        summary["dask_overhead_vs_pool"] = round(d["wall_s"] / p2["wall_s"] - 1, 3)
        summary["dask_overhead_by_slice_median"] = round(float(np.median(ovh)), 3)
        summary["dask_overhead_vs_pool_incl_startup"] = round(
            (d["wall_s"] + d["cluster_startup_s"]) / p2["wall_s"] - 1, 3)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    report = {
        "benchmark": "batch throughput",
        "sabgal_version": __version__,
        "git_commit": commit,
        "command": "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "processor": platform.processor()},
        "plate": {"images": args.images, "fields_per_well": args.fields, "shape": list(args.shape),
                  "distinct_fields": args.unique, "setup": "counterstain", "format": "uncompressed RGB TIFF, 8- or 12-bit as drawn",
                  "render_s": round(render_s, 1)},
        "method": {"slices": max(1, args.slices), "order": "rotated per slice",
                   "load_avg_at_end": _load()},
        "bars": {"scaling_efficiency_2_workers": ">= 0.8", "dask_overhead_vs_pool": "<= 0.15"},
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logging.info("%s\nwritten to %s", json.dumps(summary, indent=2), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
