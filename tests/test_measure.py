import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from sabgal import measure


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(yy - cy, xx - cx) < r


def test_measures_of_a_disk_and_a_rectangle():
    shape = (100, 160)
    cells = np.zeros(shape, np.int32)
    cells[_disk(shape, 50, 40, 20)] = 1
    cells[30:70, 90:150] = 2
    nuclei = np.zeros(shape, np.int32)
    nuclei[_disk(shape, 50, 40, 5)] = 1
    xgal = np.zeros(shape, np.float32)
    xgal[cells == 2] = 0.3
    t = measure.measure_cells(cells, nuclei, xgal=xgal, body=np.full(shape, 0.05, np.float32),
                              pixel_size_um=0.5)
    d, r = t.iloc[0], t.iloc[1]
    assert d.area_px == (cells == 1).sum()
    assert d.area_um2 == pytest.approx(d.area_px * 0.25)
    assert d.perimeter_px == pytest.approx(2 * np.pi * 20, rel=0.08)
    assert d.form_factor > 0.85 and d.solidity > 0.95 and d.eccentricity < 0.2
    assert d.centroid_y == pytest.approx(50, abs=0.1) and d.centroid_x == pytest.approx(40, abs=0.1)
    assert d.has_nucleus and not r.has_nucleus
    assert r.aspect_ratio == pytest.approx(1.5, rel=0.03)
    assert r.xgal_od_mean == pytest.approx(0.3, abs=1e-6)
    assert r.xgal_od_p90 == pytest.approx(0.3, abs=0.005)
    assert r.xgal_od_integrated == pytest.approx(0.3 * r.area_px, rel=1e-5)
    assert r.xgal_stained_fraction == 1.0 and d.xgal_stained_fraction == 0.0
    assert not d.touches_border


def test_zero_cells_give_full_schema():
    z = np.zeros((20, 20), np.int32)
    t = measure.measure_cells(z, z, xgal=z.astype(np.float32), body=z.astype(np.float32))
    assert len(t) == 0 and list(t.columns) == list(measure.CELL_COLUMNS)


def test_border_flag_and_unknown_pixel_size():
    cells = np.zeros((30, 30), np.int32)
    cells[0:10, 5:15] = 1
    t = measure.measure_cells(cells, cells * 0, xgal=np.zeros((30, 30), np.float32),
                              body=np.zeros((30, 30), np.float32))
    assert bool(t.touches_border.iloc[0]) and np.isnan(t.area_um2.iloc[0])


def test_label_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    lab = rng.integers(1, 6, 5000)
    val = rng.uniform(0, 2, 5000)
    q = measure.label_quantile(lab, val, 0.9, 5)
    for k in range(1, 6):
        assert q[k] == pytest.approx(np.quantile(val[lab == k], 0.9), abs=0.01)


def test_quantile_bins_clip_the_ends_and_nan_to_the_first_bin():
    # values beyond the histogram's range fall in its end bins; NaN in the
    # first, as an integer cast then clip would put it
    vals = np.array([-5.0, -0.2, 0.0, 0.02, 3.0, 50.0, np.nan], np.float32)
    got = measure.quantile_bins(vals, bins=1024)
    assert got.dtype == np.int32
    assert got[0] == 0 and got[-1] == 0 and got[-2] == 1023 and got[-3] == 1023
    assert 0 < got[2] < got[3] < 1023
    lab = np.ones(vals.size - 1, np.int64)
    np.testing.assert_array_equal(measure.label_quantile(lab, vals[:-1], 0.5, 1),
                                  measure.label_quantile(lab, vals[:-1], 0.5, 1, binned=got[:-1]))


def test_a_given_nucleus_distance_changes_nothing():
    shape = (80, 80)
    cells = np.zeros(shape, np.int32)
    cells[_disk(shape, 40, 40, 30)] = 1
    nuclei = np.where(_disk(shape, 40, 40, 8), 1, 0).astype(np.int32)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    xg = (0.2 * np.exp(-np.hypot(yy - 40, xx - 40) / 10)).astype(np.float32)
    body = np.zeros(shape, np.float32)
    kw = dict(xgal=xg, body=body, perinuclear_px=20.0, band_px=5.0)
    a = measure.measure_cells(cells, nuclei, **kw)
    dist = ndi.distance_transform_edt(nuclei == 0).astype(np.float32)
    pd.testing.assert_frame_equal(a, measure.measure_cells(cells, nuclei, nucleus_dist=dist, **kw))


def test_shuffled_label_ids_do_not_change_measures():
    cells = np.zeros((60, 60), np.int32)
    cells[5:25, 5:25] = 1
    cells[30:55, 30:50] = 2
    xg = np.linspace(0, 1, 3600, dtype=np.float32).reshape(60, 60)
    body = np.zeros((60, 60), np.float32)
    a = measure.measure_cells(cells, cells * 0, xgal=xg, body=body)
    swapped = np.where(cells == 1, 7, np.where(cells == 2, 3, 0))
    b = measure.measure_cells(swapped, swapped * 0, xgal=xg, body=body)
    b = b.sort_values("cell_id", ascending=False).reset_index(drop=True)
    cols = [c for c in a.columns if c != "cell_id"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_label_quantile_resolves_faint_stain():
    # near zero OD, where unstained and faintly stained cells part, the
    # histogram quantile is accurate to a fraction of a milli-OD
    rng = np.random.default_rng(0)
    vals = rng.normal(0.012, 0.004, 5000)
    lab = np.ones(vals.size, dtype=np.int64)
    got = measure.label_quantile(lab, vals, (0.6, 0.9), 1)[:, 1]
    want = np.quantile(vals, [0.6, 0.9])
    np.testing.assert_allclose(got, want, atol=4e-4)


def test_perinuclear_band_sees_a_thin_ring_the_core_dilutes():
    # a large cell whose faint stain falls off within a few pixels of its
    # nucleus: the core 60th percentile misses it, the band around the
    # nucleus does; a cell without a nucleus gets its core value
    shape = (120, 220)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    cells = np.zeros(shape, np.int32)
    cells[_disk(shape, 60, 60, 50)] = 1
    cells[_disk(shape, 60, 170, 40)] = 2
    nuclei = np.zeros(shape, np.int32)
    nuclei[_disk(shape, 60, 60, 8)] = 1
    r = np.hypot(yy - 60, xx - 60)
    xgal = np.where(cells == 1, 0.1 * np.exp(-np.clip(r - 8, 0, None) / 5), 0.0).astype(np.float32)
    xgal[nuclei > 0] = 0.0
    xgal[cells == 2] = 0.02
    kw = dict(xgal=xgal, body=np.full(shape, 0.05, np.float32), edge_px=4)
    core = measure.measure_cells(cells, nuclei, **kw).set_index("cell_id")
    band = measure.measure_cells(cells, nuclei, band_px=7, **kw).set_index("cell_id")
    # without a band the column is the core value
    assert (core.xgal_od_perinuclear_p60 == core.xgal_od_core_p60).all()
    assert core.loc[1, "xgal_od_core_p60"] < 0.005
    # band: 2-9 px out (radius 10-16.6); 40 % of its area lies within radius
    # 13, 5 px out -> 0.1 * exp(-5/5)
    assert band.loc[1, "xgal_od_perinuclear_p60"] == pytest.approx(0.1 * np.exp(-1), rel=0.1)
    assert band.loc[1, "xgal_od_core_p60"] == core.loc[1, "xgal_od_core_p60"]
    assert band.loc[2, "xgal_od_perinuclear_p60"] == pytest.approx(0.02, abs=1e-3)
