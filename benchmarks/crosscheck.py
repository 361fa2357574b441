"""Cross-check on images from a second, independent renderer.

sabgal will be judged on images it has never seen: other renderers and real
microscopes. ``sabgal.synth`` and the pipeline were written side by side, so
they can share blind spots. This script renders fields with a deliberately
different and much simpler model that shares no code with ``sabgal.synth``:

* cells are ellipses placed without overlap (sparse to moderately dense),
  nuclei are ellipses at their centres; positive cells are 1.6x larger;
* the cytoplasm is a faint, slightly bluish neutral absorber (0.015-0.05 OD);
* X-gal (navy to teal, or a grey-navy close to the cytoplasm's colour) fills
  positive cells as a smooth perinuclear gradient, exp(-distance / 8-25 px),
  peak 0.08-0.7 OD, rather than as granules;
* counterstain: nuclear fast red in the nuclei; DAPI: a separate 16-bit
  image of blurred nuclei; plain brightfield: nuclei slightly denser only;
* lamp: yellow, lilac, grey, pink or white, radial vignetting up to 25 %,
  Gaussian blur 0.8-2 px, additive Gaussian noise, PNG or JPEG (75-95).

Truth: cell labels and a positive flag per cell (every cell given X-gal is
positive, however faint). ``--negative`` renders the same fields with no
cell stained (negative controls: the geometry is drawn as before, no X-gal
is put in). The figures are scored as in ``accuracy.py``; they are a sanity
check of generality, not a second set of bars.

Usage::

    python benchmarks/crosscheck.py --n 24 --seed 1000
    python benchmarks/crosscheck.py --n 90 --seed 9000 --negative

Writes ``benchmarks/results/crosscheck.json`` and ``crosscheck_per_image.csv``
(with ``--negative``: ``crosscheck_negative.json`` and
``crosscheck_negative_per_image.csv``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import argument_parser, print_summary, score_run  # noqa: E402

BACKGROUNDS = {"yellow": (0.93, 0.90, 0.72), "lilac": (0.86, 0.80, 0.92), "grey": (0.75, 0.75, 0.75),
               "pink": (0.93, 0.80, 0.85), "white": (0.95, 0.95, 0.93)}
XGAL_COLOURS = [(0.80, 0.55, 0.25), (0.70, 0.60, 0.40), (0.62, 0.62, 0.48), (0.85, 0.45, 0.30)]
CYTOPLASM = (0.50, 0.55, 0.65)
FAST_RED = (0.214, 0.851, 0.478)
SETUPS = ("counterstain", "fluorescence", "brightfield")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _place_cells(rng: np.random.Generator, shape: tuple[int, int]):
    """Non-overlapping ellipse cells with central ellipse nuclei: (cells, nuclei, positive flags)."""
    h, w = shape
    n_target = int(rng.integers(40, 260))
    a_cell, r_nuc = rng.uniform(22, 45), rng.uniform(6, 11)
    frac_pos = rng.uniform(0.05, 0.85)
    cells = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, np.int32)
    placed: list[tuple[float, float, float]] = []
    positive: list[bool] = []
    for _ in range(5000):
        if len(positive) >= n_target:
            break
        pos = bool(rng.random() < frac_pos)
        a = a_cell * (1.6 if pos else 1.0) * rng.uniform(0.8, 1.25)
        b, th = a * rng.uniform(0.55, 1.0), rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (0.9 * (a + r)) ** 2 for y, x, r in placed):
            continue
        y0, y1 = int(max(0, cy - a - 2)), int(min(h, cy + a + 3))
        x0, x1 = int(max(0, cx - a - 2)), int(min(w, cx + a + 3))
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(th) + dx * np.sin(th), -dy * np.sin(th) + dx * np.cos(th)
        body = ((u / a) ** 2 + (v / b) ** 2 <= 1) & (cells[y0:y1, x0:x1] == 0)
        if body.sum() < 50:
            continue
        k = len(positive) + 1
        cells[y0:y1, x0:x1][body] = k
        rn = r_nuc * (1.2 if pos else 1.0) * rng.uniform(0.85, 1.15)
        nuc = (dy ** 2 / rn ** 2 + dx ** 2 / (rn * rng.uniform(0.7, 1.0)) ** 2 <= 1) & body
        nuclei[y0:y1, x0:x1][nuc] = k
        placed.append((cy, cx, a))
        positive.append(pos)
    return cells, nuclei, np.array(positive, dtype=bool)


def render_field(seed: int, setup: str, out: Path, shape: tuple[int, int], *, negative: bool = False) -> dict:
    """Render one field and its truth into ``out/images`` and ``out/truth``
    (``negative``: no cell stained)."""
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h, w = shape
    cells, nuclei, positive = _place_cells(rng, shape)
    if negative:
        positive = np.zeros_like(positive)
    bg_name = str(rng.choice(list(BACKGROUNDS)))
    bg = np.array(BACKGROUNDS[bg_name]) * rng.uniform(0.85, 1.05)
    xgal = _unit(XGAL_COLOURS[int(rng.integers(len(XGAL_COLOURS)))])
    od = np.zeros((h, w, 3), np.float32)
    od += (cells > 0)[..., None] * (rng.uniform(0.015, 0.05) * _unit(CYTOPLASM)).astype(np.float32)
    nuc_vec = _unit(FAST_RED) * rng.uniform(0.25, 0.6) if setup == "counterstain" else \
        _unit(CYTOPLASM) * rng.uniform(0.01, 0.04)
    od += (nuclei > 0)[..., None] * nuc_vec.astype(np.float32)
    peak = np.zeros(positive.size + 1)
    peak[1:][positive] = rng.uniform(0.08, 0.7, int(positive.sum()))
    dist = ndi.distance_transform_edt(nuclei == 0)
    cyto = (cells > 0) & (nuclei == 0)
    od += (peak[cells] * np.exp(-dist / rng.uniform(8, 25)) * cyto)[..., None].astype(np.float32) * \
        xgal.astype(np.float32)
    od = ndi.gaussian_filter(od, (rng.uniform(0.8, 2.0),) * 2 + (0,))
    img = bg * 10.0 ** (-od)
    yy, xx = np.mgrid[:h, :w]
    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / ((h / 2) ** 2 + (w / 2) ** 2)
    img *= (1 - rng.uniform(0, 0.25) * r2)[..., None]
    img += rng.normal(0, rng.uniform(0.004, 0.012), img.shape)
    rgb = np.clip(img * 255, 0, 255).astype(np.uint8)

    stem = f"cross_{seed:05d}_{setup}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    fmt = str(rng.choice(["png", "jpg"]))
    path = out / "images" / f"{stem}.{fmt}"
    if fmt == "jpg":
        Image.fromarray(rgb).save(path, quality=int(rng.integers(75, 95)))
    else:
        Image.fromarray(rgb).save(path)
    if setup == "fluorescence":
        dapi = ndi.gaussian_filter((nuclei > 0).astype(float), 1.2) * rng.uniform(800, 3000)
        dapi += rng.normal(200, 20, shape)
        tifffile.imwrite(out / "images" / f"{stem}_dapi.tif", np.clip(dapi, 0, 65535).astype(np.uint16))
    tifffile.imwrite(out / "truth" / f"{stem}_cells_true.tif", cells.astype(np.uint32))
    pd.DataFrame({"cell_id": np.arange(1, positive.size + 1), "sabgal_positive": positive}).to_csv(
        out / "truth" / f"{stem}_truth.csv", index=False)
    return {"stem": stem, "image": path.name, "setup": setup,
            "counterstain": "nuclear_fast_red" if setup == "counterstain" else "none",
            "background": bg_name, "xgal_vector": [round(float(v), 3) for v in xgal]}


def main(argv: list[str] | None = None) -> int:
    from sabgal import __version__
    from sabgal.cli import main as sabgal_main

    ap = argument_parser(__doc__, n=24, seed=1000, work="crosscheck")
    ap.add_argument("--negative", action="store_true", help="no cell stained (negative controls)")
    args = ap.parse_args(argv)
    name = "crosscheck_negative" if args.negative else "crosscheck"

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    manifest = pd.DataFrame([render_field(args.seed + i, SETUPS[i % 3], work, tuple(args.shape),
                                          negative=args.negative) for i in range(args.n)])
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = sabgal_main(["run", str(work / "images"), "--out", str(work / "results"),
                      "--workers", str(args.workers), "-q"])
    t_run = time.perf_counter() - t0
    per, summary, _ = score_run(manifest, work / "truth", work / "results")
    per = per.merge(manifest[["stem", "background", "xgal_vector"]], on="stem", how="left")
    result = {"sabgal_version": __version__, "seed": args.seed, "n_images": args.n, "negative": args.negative,
              "shape": list(args.shape), "run_exit_code": rc, "render_s": round(t_render, 1),
              "run_s": round(t_run, 1), "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    per.to_csv(out / f"{name}_per_image.csv", index=False)
    print_summary(summary)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
