"""Speed and memory benchmark: the whole per-image pipeline in one process.

For each image size, renders synthetic fields to disk (all three set-ups),
then, each in a fresh process:

* **one thread**: :func:`sabgal.batch.process_image` on each image in turn
  (read the file(s), illumination, deconvolution, segmentation, measurement,
  write labels + per-image table + QC overlay): seconds per image;
* **threads**: the same images through :func:`sabgal.batch.run_batch` with
  ``batch.executor = "threads"`` and one worker thread per core (``sabgal run
  --threads``; a Dask worker runs its tasks the same way): images per second
  of wall time, so megapixels per second of the process. The batch runs
  ``--repeats`` times (3) in the same process and the median is reported
  (every run is in the JSON): on a shared machine one 12-image batch reads
  up to ~8 % faster or slower than the next.

Each process first analyses one image untimed (imports, first-call set-up).
Peak resident memory is the process's ``ru_maxrss``.

Usage::

    python benchmarks/speed.py                 # 1024x1360 and 2048x2048, 12 images each
    python benchmarks/speed.py --n 3 --sizes 1024x1360 --threads 2

Writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(images_dir: str, out_dir: str, threads: int, queue, repeats: int = 1) -> None:
    # As `sabgal run` does (sabgal.cli): one BLAS thread, set before numpy
    # loads in this fresh process (an explicit value in the environment wins).
    from sabgal.cli import _BLAS_THREAD_VARS

    for var in _BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    from sabgal import batch
    from sabgal.config import Config, config_to_dict

    cfg = Config().replace(batch={"executor": "threads"})
    cfg_dict = config_to_dict(cfg)
    sets = batch.discover_images([images_dir], cfg)
    batch.process_image(sets[0], cfg_dict, out_dir + "_warm")  # untimed
    res: dict = {}
    if threads <= 1:
        times, stages = [], {}
        for s in sets:
            t0 = time.perf_counter()
            rec = batch.process_image(s, cfg_dict, out_dir)
            times.append(time.perf_counter() - t0)
            if rec.get("status") != "ok":
                raise RuntimeError(rec.get("error"))
            for k, v in (rec.get("info", {}).get("timings") or {}).items():
                stages.setdefault(k, []).append(v)
        res["s_per_image"] = statistics.median(times)
        res["stages"] = {k: statistics.median(v) for k, v in stages.items()}
    else:
        runs = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            recs = list(batch.run_batch(sets, cfg, out_dir, workers=threads, force=True))
            wall = time.perf_counter() - t0
            bad = [r.get("error") for r in recs if r.get("status") != "ok"]
            if bad:
                raise RuntimeError(bad[0])
            runs.append(wall / len(sets))
        res["s_per_image"] = statistics.median(runs)
        res["runs_s_per_image"] = [round(r, 3) for r in runs]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(res)


def _run_child(images: Path, out: Path, threads: int, repeats: int = 1) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(str(images), str(out), threads, q, repeats))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv: list[str] | None = None) -> int:
    from sabgal import __version__
    from sabgal.synth import generate_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12, help="images per size")
    ap.add_argument("--sizes", nargs="+", default=["1024x1360", "2048x2048"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="worker threads of the one process (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="threaded batches per size (the median is reported)")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--work", default=str(HERE / "_work" / "speed"))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    results = {}
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        work = Path(args.work) / size
        if work.exists():
            shutil.rmtree(work)
        generate_dataset(work / "images", n=args.n, seed=args.seed, shape=(h, w), truth_dir=str(work / "truth"))
        mp_img = h * w / 1e6
        one = _run_child(work / "images", work / "out1", 1)
        many = (_run_child(work / "images", work / "outN", args.threads, args.repeats)
                if args.threads > 1 else one)
        results[size] = {
            "n_images": args.n,
            "megapixels": round(mp_img, 3),
            "one_thread": {"s_per_image": round(one["s_per_image"], 3),
                           "megapixels_per_s": round(mp_img / one["s_per_image"], 2),
                           "peak_rss_mb": round(one["peak_rss_mb"], 1),
                           "median_stage_s": {k: round(v, 3) for k, v in one["stages"].items()}},
            "threads": {"n_threads": args.threads,
                        "s_per_image": round(many["s_per_image"], 3),
                        "megapixels_per_s": round(mp_img / many["s_per_image"], 2),
                        "runs_s_per_image": many.get("runs_s_per_image", [round(many["s_per_image"], 3)]),
                        "peak_rss_mb": round(many["peak_rss_mb"], 1)},
        }
        r = results[size]
        print(f"{size}: one thread {r['one_thread']['megapixels_per_s']:.2f} MP/s "
              f"(peak {r['one_thread']['peak_rss_mb']:.0f} MB); {args.threads} threads, one process: "
              f"{r['threads']['megapixels_per_s']:.2f} MP/s (peak {r['threads']['peak_rss_mb']:.0f} MB)",
              flush=True)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"sabgal_version": __version__, "cpu_count": os.cpu_count(),
              "bars": {"megapixels_per_s": 3.0, "peak_rss_mb_2048": 1536}, "results": results}
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
