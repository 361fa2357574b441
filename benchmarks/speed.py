"""Speed and memory benchmark: the whole per-image pipeline in one process.

For each image size, renders synthetic fields to disk (all three set-ups),
then times :func:`sabgal.batch.process_image` on each in a fresh
single-process run: read the file(s), illumination, deconvolution,
segmentation, measurement, write labels + per-image table + QC overlay.
Peak resident memory is measured in a child process per size (``ru_maxrss``).

Usage::

    python benchmarks/speed.py                 # 1024x1360 and 2048x2048, 6 images each
    python benchmarks/speed.py --n 3 --sizes 1024x1360

Writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _time_images(images_dir: str, out_dir: str, queue) -> None:
    import os

    # As `sabgal run` does (sabgal.cli): one BLAS thread, set before numpy loads
    # in this fresh process (an explicit value in the environment wins).
    from sabgal.cli import _BLAS_THREAD_VARS

    for var in _BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    from sabgal import batch
    from sabgal.config import Config, config_to_dict

    cfg = Config()
    sets = batch.discover_images([images_dir], cfg)
    times = []
    stages: dict[str, list[float]] = {}
    for s in sets:
        t0 = time.perf_counter()
        rec = batch.process_image(s, config_to_dict(cfg), out_dir)
        times.append(time.perf_counter() - t0)
        if rec.get("status") != "ok":
            raise RuntimeError(rec.get("error"))
        for k, v in (rec.get("info", {}).get("timings") or {}).items():
            stages.setdefault(k, []).append(v)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"times": times, "stages": {k: statistics.median(v) for k, v in stages.items()},
               "peak_rss_mb": peak_mb})


def main(argv: list[str] | None = None) -> int:
    from sabgal import __version__
    from sabgal.synth import generate_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="images per size")
    ap.add_argument("--sizes", nargs="+", default=["1024x1360", "2048x2048"])
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--work", default=str(HERE / "_work" / "speed"))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)

    results = {}
    ctx = mp.get_context("spawn")
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        work = Path(args.work) / size
        if work.exists():
            shutil.rmtree(work)
        generate_dataset(work / "images", n=args.n, seed=args.seed, shape=(h, w), truth_dir=str(work / "truth"))
        q = ctx.Queue()
        p = ctx.Process(target=_time_images, args=(str(work / "images"), str(work / "out"), q))
        p.start()
        res = q.get()
        p.join()
        mp_img = h * w / 1e6
        med = statistics.median(res["times"])
        results[size] = {
            "n_images": args.n,
            "megapixels": round(mp_img, 3),
            "median_s_per_image": round(med, 3),
            "megapixels_per_s": round(mp_img / med, 2),
            "peak_rss_mb": round(res["peak_rss_mb"], 1),
            "median_stage_s": {k: round(v, 3) for k, v in res["stages"].items()},
        }
        print(f"{size}: {med:.3f} s/image, {mp_img / med:.2f} MP/s, peak RSS {res['peak_rss_mb']:.0f} MB",
              flush=True)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"sabgal_version": __version__, "bars": {"megapixels_per_s": 3.0, "peak_rss_mb_2048": 1536},
              "results": results}
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
