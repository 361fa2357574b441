"""Shared fixtures: tiny hand-made fields of known optical density."""

from __future__ import annotations

import faulthandler
import os
import sys

import numpy as np
import pytest

from sabgal import stains


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """On a hard crash, print only the crashing thread's stack.

    pytest's faulthandler dumps every thread; Dask's event loop and idle pool
    threads then fill a CI log's tail, and the frame that crashed (say, in Qt
    or OpenGL under the napari tests) is the part cut off.  Runs after
    pytest's own set-up, on a duplicate of the same stderr.
    """
    faulthandler.enable(file=os.dup(sys.stderr.fileno()), all_threads=False)


def saved_field_params(name: str):
    """The synthetic field parameters saved in ``tests/data/<name>`` (a
    manifest's ``params``: a development field that once failed), as
    :class:`sabgal.synth.FieldParams` (keys it does not know are left out)."""
    import dataclasses
    import json
    from pathlib import Path

    from sabgal import synth

    raw = json.loads((Path(__file__).parent / "data" / name).read_text())
    names = {f.name for f in dataclasses.fields(synth.FieldParams)}
    return synth.FieldParams.from_dict({k: v for k, v in raw.items() if k in names})


def paint_field(shape=(200, 260), cells=(), *, lamp=(0.92, 0.86, 0.95), noise=0.004, seed=0,
                counterstain=stains.NUCLEAR_FAST_RED, body_od=0.04):
    """Render disks: each cell is (cy, cx, radius, nucleus_radius, xgal_od).

    Returns (rgb uint8, true cell labels, true nucleus labels).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    od = np.zeros(shape + (3,), np.float64)
    lab = np.zeros(shape, np.int32)
    nlab = np.zeros(shape, np.int32)
    dist_best = np.full(shape, np.inf)
    for i, (cy, cx, r, rn, xg) in enumerate(cells, start=1):
        d = np.hypot(yy - cy, xx - cx)
        cell = (d < r) & (d / r < dist_best)
        dist_best[cell] = (d / r)[cell]
        lab[cell] = i
    for i, (cy, cx, r, rn, xg) in enumerate(cells, start=1):
        d = np.hypot(yy - cy, xx - cx)
        cell = lab == i
        nuc = d < rn
        nlab[nuc] = i
        od += (cell * body_od)[..., None] * stains.GREY
        if counterstain is not None:
            od += (nuc * 0.5)[..., None] * counterstain
        else:
            od += (nuc * 0.05)[..., None] * stains.GREY
        od += (cell & ~nuc)[..., None] * xg * stains.XGAL
    intensity = np.asarray(lamp) * 10 ** (-od)
    intensity = intensity + rng.normal(0, noise, intensity.shape)
    rgb = np.clip(intensity * 255, 0, 255).round().astype(np.uint8)
    return rgb, lab, nlab


@pytest.fixture
def field_counterstain():
    cells = [(50, 60, 30, 8, 0.5), (60, 180, 28, 8, 0.0), (145, 70, 26, 7, 0.0),
             (140, 190, 34, 9, 0.35), (150, 128, 18, 6, 0.0)]
    return paint_field(cells=cells)


@pytest.fixture
def touching_pair():
    # two cells whose bodies overlap: they must come out as two labels
    cells = [(100, 95, 40, 9, 0.0), (100, 165, 40, 9, 0.4)]
    return paint_field(cells=cells)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """One run of the CLI on sample_data/ shared by the end-to-end tests."""
    from pin_regression import run_sample

    out = tmp_path_factory.mktemp("sample_run") / "out"
    assert run_sample(out) == 0
    return out


@pytest.fixture
def magnify_dataset():
    """``benchmarks/accuracy.py``'s :func:`magnify_dataset` (the benchmarks
    are scripts, not a package)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from accuracy import magnify_dataset
    finally:
        sys.path.pop(0)
    return magnify_dataset
