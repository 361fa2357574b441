"""CI regression: a run on sample_data/ must stay close to the pinned results.

Tolerances (a change beyond them must be re-pinned on purpose with
``python tests/pin_regression.py``, with benchmarks/accuracy.py showing it is better):

* per image: cell count within max(2, 5 %); each fraction within 3 percentage points;
  the set-up and counterstain decisions identical;
* per cell: >= 95 % of pinned cells have a cell within 3 px in the new run; of those,
  >= 95 % keep their area within 10 % and >= 97 % keep their positive call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from pin_regression import PIN

pytestmark = pytest.mark.slow


def test_sample_run_matches_pinned_images(sample_run):
    pinned = pd.read_csv(PIN / "images.csv").set_index("image")
    now = pd.read_csv(sample_run / "images.csv").set_index("image")
    assert sorted(now.index) == sorted(pinned.index)
    for image, p in pinned.iterrows():
        n = now.loc[image]
        assert abs(n.n_cells - p.n_cells) <= max(2, 0.05 * p.n_cells), image
        for col in ("fraction_sabgal_positive", "fraction_enlarged", "fraction_senescent"):
            assert abs(n[col] - p[col]) <= 0.03, (image, col, n[col], p[col])
        assert (n.setup, n.counterstain) == (p.setup, p.counterstain), image


def test_sample_run_matches_pinned_cells(sample_run):
    pinned = pd.read_csv(PIN / "cells.csv")
    now = pd.read_csv(sample_run / "cells.csv")
    found = area_ok = call_ok = 0
    for image, p in pinned.groupby("image"):
        n = now[now["image"] == image]
        if n.empty:
            continue
        d, j = cKDTree(n[["centroid_y", "centroid_x"]].to_numpy()).query(p[["centroid_y", "centroid_x"]].to_numpy())
        hit = d <= 3
        found += int(hit.sum())
        m = n.iloc[j[hit]]
        pp = p[hit]
        area_ok += int((np.abs(m.area_px.to_numpy() - pp.area_px.to_numpy()) <= 0.1 * pp.area_px.to_numpy()).sum())
        call_ok += int((m.sabgal_positive.to_numpy() == pp.sabgal_positive.to_numpy()).sum())
    assert found >= 0.95 * len(pinned)
    assert area_ok >= 0.95 * found
    assert call_ok >= 0.97 * found
