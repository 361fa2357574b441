"""Per-well / per-condition summaries and the CellProfiler-shaped export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sabgal import summaries
from sabgal.measure import CELL_COLUMNS
from sabgal.summaries import CALLS, wilson_interval


# --- Wilson interval --------------------------------------------------------------------
def test_wilson_matches_published_values():
    # Brown, Cai & DasGupta (2001) / Newcombe (1998): k=0,n=10 -> (0, 0.2775); k=5,n=10 -> (0.2366, 0.7634)
    lo, hi = wilson_interval([0, 5, 10, 81], [10, 10, 10, 263])
    np.testing.assert_allclose(lo, [0.0, 0.2366, 0.7225, 0.2553], atol=1e-4)
    np.testing.assert_allclose(hi, [0.2775, 0.7634, 1.0, 0.3662], atol=1e-4)


def test_wilson_zero_trials_is_nan_and_bad_counts_raise():
    lo, hi = wilson_interval([0], [0])
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval([3], [2])


def test_wilson_contains_the_estimate_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
    def check(kn):
        k, n = kn
        lo, hi = wilson_interval(k, n)
        p = k / n
        assert 0.0 <= lo <= p + 1e-12
        assert p <= hi + 1e-12
        assert hi <= 1.0
        assert hi - lo > 0

    check()


def test_wilson_narrows_with_more_cells():
    widths = [float(np.subtract(*wilson_interval(n // 4, n)[::-1])) for n in (20, 200, 2000)]
    assert widths[0] > widths[1] > widths[2]


# --- wells ------------------------------------------------------------------------------
def _images(rows):
    """rows: (plate, well, role, condition, dose, status, n_cells, n_pos, n_enl, n_sen)."""
    out = []
    for i, (pl, well, role, cond, dose, status, n, pos, enl, sen) in enumerate(rows):
        out.append({"image": f"img{i}.tif", "plate": pl, "well": well, "row": well[0],
                    "column": int(well[1:]), "field": 1, "channel": "", "condition": cond, "dose": dose,
                    "replicate": "", "role": role,
                    "n_cells": n, "n_sabgal_positive": pos,
                    "fraction_sabgal_positive": pos / n if n else np.nan,
                    "n_enlarged": enl, "fraction_enlarged": enl / n if n else np.nan,
                    "n_senescent": sen, "fraction_senescent": sen / n if n else np.nan,
                    "status": status, "error": "" if status == "ok" else "bad",
                    "positive_threshold_od": 0.2, "positive_threshold_source": "controls"})
    t = pd.DataFrame(out)
    t["column"] = t["column"].astype("Int64")
    t["field"] = t["field"].astype("Int64")
    return t


PLATE = [
    ("P1", "A01", "negative_control", "DMSO", 0.0, "ok", 100, 5, 4, 2),
    ("P1", "A01", "negative_control", "DMSO", 0.0, "ok", 100, 5, 6, 2),
    ("P1", "A02", "negative_control", "DMSO", 0.0, "ok", 100, 15, 10, 6),
    ("P1", "B01", "sample", "dox", 1.0, "ok", 50, 20, 10, 8),
    ("P1", "B01", "sample", "dox", 1.0, "error", 0, 0, 0, 0),
    ("P1", "B02", "sample", "dox", 1.0, "ok", 80, 40, 16, 16),
]


def test_wells_pool_images_and_count_failures():
    wells = summaries.summarize_wells(_images(PLATE)).set_index("well")
    assert list(summaries.well_columns()) == ["plate", "well", *[c for c in summaries.well_columns()][2:]]
    assert wells.loc["A01", "n_images"] == 2 and wells.loc["A01", "n_cells"] == 200
    assert wells.loc["A01", "fraction_sabgal_positive"] == pytest.approx(10 / 200)
    assert wells.loc["B01", "n_images"] == 2 and wells.loc["B01", "n_images_failed"] == 1
    assert wells.loc["B01", "n_cells"] == 50
    lo, hi = wilson_interval(10, 200)
    assert wells.loc["A01", "fraction_sabgal_positive_ci_low"] == pytest.approx(float(lo))
    assert wells.loc["A01", "fraction_sabgal_positive_ci_high"] == pytest.approx(float(hi))


def test_fold_change_is_over_the_mean_of_the_plates_control_wells():
    wells = summaries.summarize_wells(_images(PLATE)).set_index("well")
    ctrl = np.mean([10 / 200, 15 / 100])  # well fractions of A01 and A02
    assert wells.loc["B01", "fold_change_sabgal_positive"] == pytest.approx((20 / 50) / ctrl)
    assert wells.loc[["A01", "A02"], "fold_change_sabgal_positive"].mean() == pytest.approx(1.0)


def test_no_controls_gives_nan_fold_change():
    rows = [r for r in PLATE if r[2] != "negative_control"]
    wells = summaries.summarize_wells(_images(rows))
    assert wells["fold_change_senescent"].isna().all()
    assert wells["fraction_senescent"].notna().all()


def test_images_without_wells_give_an_empty_table_with_schema():
    imgs = _images(PLATE)
    imgs["well"] = ""
    wells = summaries.summarize_wells(imgs)
    assert len(wells) == 0 and list(wells.columns) == list(summaries.well_columns())


def test_well_threshold_is_the_median_over_its_images():
    imgs = _images(PLATE)
    imgs.loc[0, ["positive_threshold_od", "positive_threshold_source"]] = [0.1, "learnt"]
    imgs.loc[1, ["positive_threshold_od", "positive_threshold_source"]] = [0.3, "image"]
    wells = summaries.summarize_wells(imgs).set_index("well")
    assert wells.loc["A01", "positive_threshold_od"] == pytest.approx(0.2)
    assert wells.loc["A01", "positive_threshold_source"] == "image;learnt"
    assert wells.loc["B01", "positive_threshold_source"] == "controls"  # the failed image does not count


def test_well_medians_from_cells():
    cells = pd.DataFrame({"plate": ["P1"] * 3, "well": ["A01"] * 3, "xgal_od_p90": [0.1, 0.2, 0.9],
                          "area_px": [10, 20, 30]})
    wells = summaries.summarize_wells(_images(PLATE), cells).set_index("well")
    assert wells.loc["A01", "median_xgal_od_p90"] == pytest.approx(0.2)
    assert np.isnan(wells.loc["B01", "median_area_px"])


# --- conditions -------------------------------------------------------------------------
def test_conditions_use_wells_as_replicates():
    wells = summaries.summarize_wells(_images(PLATE))
    cond = summaries.summarize_conditions(wells)
    assert cond["condition"].tolist() == ["DMSO", "dox"]  # negative controls first
    dox = cond.set_index("condition").loc["dox"]
    fr = [20 / 50, 40 / 80]
    assert dox["n_wells"] == 2 and dox["n_cells"] == 130
    assert dox["mean_fraction_sabgal_positive"] == pytest.approx(np.mean(fr))
    assert dox["sd_fraction_sabgal_positive"] == pytest.approx(np.std(fr, ddof=1))
    ctrl = np.mean([10 / 200, 15 / 100])
    assert dox["fold_change_sabgal_positive"] == pytest.approx(np.mean(fr) / ctrl)
    assert dox["difference_sabgal_positive"] == pytest.approx(np.mean(fr) - ctrl)
    assert cond.set_index("condition").loc["DMSO", "fold_change_senescent"] == pytest.approx(1.0)


def test_each_plate_is_normalised_to_its_own_controls():
    # plate 2 stains twice as strongly: same biology, doubled fractions
    p1 = [("P1", "A01", "negative_control", "DMSO", 0.0, "ok", 100, 10, 10, 10),
          ("P1", "B01", "sample", "dox", 1.0, "ok", 100, 30, 30, 30)]
    p2 = [("P2", "A01", "negative_control", "DMSO", 0.0, "ok", 100, 20, 20, 20),
          ("P2", "B01", "sample", "dox", 1.0, "ok", 100, 60, 60, 60)]
    cond = summaries.summarize_conditions(summaries.summarize_wells(_images(p1 + p2))).set_index("condition")
    assert cond.loc["dox", "fold_change_senescent"] == pytest.approx(3.0)
    assert cond.loc["dox", "n_plates"] == 2


def test_conditions_without_platemap_are_empty_with_schema():
    imgs = _images(PLATE)
    imgs["condition"] = ""
    imgs["role"] = ""
    cond = summaries.summarize_conditions(summaries.summarize_wells(imgs))
    assert len(cond) == 0 and list(cond.columns) == list(summaries.condition_columns())


# --- CellProfiler export ----------------------------------------------------------------
def _cells(images):
    rows = []
    for img in images["image"][:2]:
        for cid in (1, 2):
            row = {k: 0 for k in CELL_COLUMNS}
            row.update({"image": img, "cell_id": cid, "centroid_x": 10.0 * cid, "centroid_y": 5.0,
                        "area_px": 100 * cid, "has_nucleus": True, "xgal_od_p90": 0.3,
                        "touches_border": cid == 2, "sabgal_positive": cid == 1, "enlarged": False,
                        "senescent": False, "corrected": False})
            rows.append(row)
    return pd.DataFrame(rows).astype({k: v for k, v in CELL_COLUMNS.items()})


def test_cellprofiler_tables_have_cellprofiler_names_and_numbers():
    images = _images(PLATE)
    img, cells = summaries.cellprofiler_tables(images, _cells(images))
    assert list(img.columns) == list(summaries.CP_IMAGE_COLUMNS)
    assert list(cells.columns) == list(summaries.CP_CELL_COLUMNS)
    assert img["ImageNumber"].tolist() == list(range(1, len(images) + 1))
    assert img["Metadata_Well"].tolist()[:3] == ["A01", "A01", "A02"]
    assert img.loc[4, "Metadata_Status"] == "error" and img.loc[4, "Count_Cells"] == 0
    assert cells["ImageNumber"].tolist() == [1, 1, 2, 2]
    assert cells["ObjectNumber"].tolist() == [1, 2, 1, 2]
    assert cells["AreaShape_Area"].tolist() == [100, 200, 100, 200]
    assert cells["Classify_SABGalPositive"].tolist() == [1, 0, 1, 0]
    assert cells["Location_TouchesBorder"].tolist() == [0, 1, 0, 1]
    assert cells["Metadata_Plate"].tolist() == ["P1"] * 4
    assert cells["Intensity_Percentile90Intensity_XGal"].tolist() == [0.3] * 4


def test_cellprofiler_tables_with_no_cells_keep_schema():
    images = _images(PLATE[:1])
    img, cells = summaries.cellprofiler_tables(images, _cells(images).iloc[:0])
    assert len(img) == 1 and len(cells) == 0
    assert list(cells.columns) == list(summaries.CP_CELL_COLUMNS)
    assert set(CALLS) == {"sabgal_positive", "enlarged", "senescent"}
