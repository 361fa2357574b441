"""Regenerate the sample images in this folder (deterministic).

Run from the repository root::

    python sample_data/make_sample_data.py

Images and their ``_dapi`` companions go to ``sample_data/``; true labels, the
per-cell truth tables and ``manifest.csv`` (true fractions per image) go to
``tests/data/sample_truth/`` so that a pipeline run on ``sample_data/`` sees
only inputs (discovery is recursive). See ``sample_data/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from sabgal.synth import FieldParams, random_params, render_field, write_field

HERE = Path(__file__).resolve().parent
SHAPE = (384, 512)
SEED = 2024
# stem, set-up, counterstain, file format, bit depth, senescent fraction
SAMPLES = (
    ("sample01_counterstain", "counterstain", "nuclear_fast_red", "jpg", 8, 0.35),
    ("sample02_counterstain", "counterstain", "eosin", "tif", 16, 0.6),
    ("sample03_brightfield", "brightfield", None, "png", 8, 0.2),
    ("sample04_brightfield", "brightfield", None, "jpg", 8, 0.5),
    ("sample05_fluorescence", "fluorescence", None, "tif", 8, 0.3),
    ("sample06_fluorescence", "fluorescence", None, "png", 8, 0.7),
)
MIN_CELLS, MAX_CELLS = 35, 110


def sample_params(index: int) -> FieldParams:
    """Parameters of sample ``index``: the first draw with a useful number of cells."""
    stem, setup, counterstain, fmt, bits, senescent = SAMPLES[index]
    for attempt in range(1000):
        rng = np.random.default_rng([SEED, index, attempt])
        p = random_params(rng, setup=setup, shape=SHAPE, senescent_fraction=senescent,
                          jpeg=fmt == "jpg", counterstain=counterstain, formats=(fmt,))
        if setup == "fluorescence" and p.counterstain != "none":
            continue  # keep the two fluorescence samples counterstain-free
        if MIN_CELLS <= p.n_cells <= MAX_CELLS:
            return dataclasses.replace(p, bit_depth=bits)
    raise RuntimeError(f"no suitable parameters for {stem}")


def main() -> None:
    truth_dir = HERE.parent / "tests" / "data" / "sample_truth"
    rows = []
    for i, (stem, *_rest) in enumerate(SAMPLES):
        params = sample_params(i)
        field = render_field(params, np.random.default_rng(params.seed))
        paths = write_field(field, HERE, stem, truth_dir=truth_dir)
        t = field.truth
        rows.append({
            "stem": stem,
            **{k: os.path.relpath(v, HERE) for k, v in paths.items()},
            "setup": params.setup,
            "counterstain": params.counterstain,
            "file_format": params.file_format,
            "bit_depth": params.bit_depth,
            "n_cells": len(t),
            "n_cells_interior": int((~t["touches_border"]).sum()),
            "fraction_positive": float(t["sabgal_positive"].mean()),
            "fraction_enlarged": float(t["enlarged"].mean()),
            "fraction_senescent": float(t["senescent"].mean()),
            "params": json.dumps(params.to_dict()),
        })
    cols = ["stem", "image", "dapi", "cells_true", "nuclei_true", "truth"]
    manifest = pd.DataFrame(rows)
    manifest = manifest[cols + [c for c in manifest.columns if c not in cols]].fillna({"dapi": ""})
    manifest.to_csv(truth_dir / "manifest.csv", index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
