"""QC flags: the right reason for blurred, saturated and empty images; none for good ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from sabgal.config import ConfigError, QCConfig, config_from_dict
from sabgal.qc import QC_CHECKS, QC_COLUMNS, add_qc_columns, image_metrics, qc_flags, sharpness

XGAL = np.array([0.722, 0.557, 0.411]) / np.linalg.norm([0.722, 0.557, 0.411])
RED = np.array([0.186, 0.759, 0.624]) / np.linalg.norm([0.186, 0.759, 0.624])
GREY = np.ones(3) / np.sqrt(3)


def make_field(seed: int, *, shape=(256, 320), n_cells: int = 22, blur: float = 0.7,
               exposure: float = 1.0) -> np.ndarray:
    """A brightfield field: cells with red nuclei, some with blue X-gal granules.

    Optics (blur, exposure) act on the transmitted light; camera noise is added
    after them, as in a microscope, then the image is quantised to 8 bits.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    od = np.zeros((h, w, 3), np.float32)
    placed: list[tuple[float, float, float]] = []
    for _ in range(2000):
        if len(placed) >= n_cells:
            break
        cy, cx = rng.uniform(14, h - 14), rng.uniform(14, w - 14)
        r = rng.uniform(10, 16) * (1.5 if rng.random() < 0.25 else 1.0)
        if any(np.hypot(cy - py, cx - px) < (r + pr) * 0.85 for py, px, pr in placed):
            continue
        placed.append((cy, cx, r))
        a = rng.uniform(0.8, 1.25)
        d = np.hypot((yy - cy) * a, (xx - cx) / a)
        cell = d < r
        od[cell] += 0.06 * GREY
        od += (np.clip(1 - np.abs(d - r), 0, 1) * 0.05)[..., None] * GREY
        if rng.random() < 0.4:
            gran = ndi.gaussian_filter(rng.random((h, w)).astype(np.float32), 1.2)
            gran = np.clip((gran - 0.5) * 8, 0, 1)
            od += ((cell & (d > 4)) * gran * rng.uniform(0.4, 0.9))[..., None] * XGAL
        od[np.hypot(yy - cy, xx - cx) < 5] += 0.45 * RED
    vignette = 1 - 0.08 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2)
    t = np.array([0.92, 0.90, 0.86], np.float32) * vignette[..., None] * 10 ** (-od)
    if blur > 0:
        t = ndi.gaussian_filter(t, (blur, blur, 0))
    img = t * exposure + rng.normal(0, 0.012, t.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def qc_run(tmp_path_factory):
    """A small run: six good images, one blurred, one saturated, one empty."""
    import imageio.v3 as iio

    from sabgal.cli import main

    root = tmp_path_factory.mktemp("qc_run")
    src = root / "in"
    src.mkdir()
    for i in range(6):
        iio.imwrite(src / f"good{i}.png", make_field(i))
    iio.imwrite(src / "blurred.png", make_field(10, blur=4.0))
    iio.imwrite(src / "saturated.png", make_field(11, exposure=1.15))
    iio.imwrite(src / "empty.png", make_field(12, n_cells=0))
    out = root / "out"
    rc = main(["run", str(src), "--out", str(out), "--workers", "1", "--quiet", "--no-report"])
    assert rc == 0
    images = pd.read_csv(out / "images.csv", keep_default_na=False, na_values=[""])
    images["qc_reasons"] = images["qc_reasons"].fillna("")
    return images.set_index("image")


def test_good_images_pass_qc(qc_run):
    good = qc_run.loc[[f"good{i}.png" for i in range(6)]]
    assert good["qc_pass"].all(), good["qc_reasons"].tolist()
    assert (good["qc_reasons"] == "").all()


def test_blurred_image_is_flagged_out_of_focus(qc_run):
    row = qc_run.loc["blurred.png"]
    assert not row["qc_pass"]
    assert "out of focus" in row["qc_reasons"]
    assert "saturated" not in row["qc_reasons"]
    assert row["qc_focus_ratio"] < 0.35


def test_saturated_image_is_flagged_saturated(qc_run):
    row = qc_run.loc["saturated.png"]
    assert not row["qc_pass"]
    assert "saturated" in row["qc_reasons"]
    assert "out of focus" not in row["qc_reasons"]


def test_empty_image_is_flagged_for_too_few_cells_only(qc_run):
    row = qc_run.loc["empty.png"]
    assert not row["qc_pass"]
    assert row["qc_reasons"].startswith("too few cells: 0")
    # focus is not judged on an empty field, and the low count is one reason, not two
    assert "out of focus" not in row["qc_reasons"]
    assert "low cell count" not in row["qc_reasons"]


def test_qc_columns_follow_error_in_images_csv(qc_run):
    cols = list(qc_run.reset_index().columns)
    assert cols[cols.index("error") + 1: cols.index("error") + 3] == ["qc_pass", "qc_reasons"]
    assert {"qc_focus_ratio", "qc_cell_count_ratio", "qc_sharpness"} <= set(cols)


# --- sharpness ---------------------------------------------------------------------------
def test_sharpness_falls_with_defocus_not_with_noise():
    sharp = make_field(3, blur=0.7)
    blurred = make_field(3, blur=3.0)  # same cells, defocused, same camera noise level
    s0, s1 = sharpness(sharp), sharpness(blurred)
    assert s1 < 0.35 * s0
    # more camera noise on the defocused image must not make it look sharp
    rng = np.random.default_rng(0)
    noisy = np.clip(blurred / 255 + rng.normal(0, 0.02, blurred.shape), 0, 1)
    assert sharpness(noisy) < 0.5 * s0


def test_sharpness_accepts_grey_and_rejects_bad_shapes():
    grey = make_field(1).mean(axis=-1)
    assert np.isfinite(sharpness(grey))
    assert np.isnan(sharpness(np.full((64, 64), 0.5)))
    with pytest.raises(ValueError, match="rows, cols"):
        sharpness(np.zeros((4, 4, 4, 4)))


def test_sharpness_of_large_images_is_measured_subsampled():
    rng = np.random.default_rng(0)
    big = ndi.gaussian_filter(rng.random((2100, 2100)).astype(np.float32), 2)
    assert np.isfinite(sharpness(big))
    assert image_metrics(np.stack([big] * 3, axis=-1))["sharpness"] > 0


# --- qc_flags on tables --------------------------------------------------------------------
def _table(**overrides) -> pd.DataFrame:
    n = 8
    base = {
        "image": [f"im{i}" for i in range(n)],
        "status": ["ok"] * n,
        "n_cells": [100] * n,
        "qc_sharpness": [0.2] * n,
        "qc_saturated_fraction": [0.0] * n,
        "qc_background_od_nonuniformity": [0.01] * n,
        "qc_debris_area_fraction": [0.0] * n,
        "xgal_angle_from_reference_deg": [3.0] * n,
    }
    t = pd.DataFrame(base)
    for col, (i, v) in overrides.items():
        t.loc[i, col] = v
    return t


@pytest.mark.parametrize("column, value, reason", [
    ("qc_sharpness", 0.05, "out of focus: sharpness 0.25x run median (< 0.35)"),
    ("qc_saturated_fraction", 0.2, "saturated: 20.0% of pixels clipped (> 5%)"),
    ("qc_background_od_nonuniformity", 0.15, "uneven background: 0.150 OD across the field (> 0.08)"),
    ("n_cells", 3, "too few cells: 3 (< 5)"),
    ("n_cells", 20, "low cell count: 20 = 0.20x run median (< 1/4)"),
    ("n_cells", 500, "high cell count: 500 = 5.0x run median (> 4x)"),
    ("xgal_angle_from_reference_deg", 23.0, "stain colour off: X-gal vector 23.0° from reference (> 20°)"),
    ("qc_debris_area_fraction", 0.08, "debris: 8.0% of the field (> 5%)"),
])
def test_each_check_gives_its_reason(column, value, reason):
    flags = qc_flags(_table(**{column: (2, value)}), QCConfig())
    assert flags["qc_reasons"].tolist() == [""] * 2 + [reason] + [""] * 5
    assert flags["qc_pass"].tolist() == [True] * 2 + [False] + [True] * 5


def test_several_reasons_are_joined_with_semicolons():
    t = _table(qc_saturated_fraction=(1, 0.5))
    t.loc[1, "qc_debris_area_fraction"] = 0.5
    reasons = qc_flags(t, QCConfig())["qc_reasons"][1].split("; ")
    assert [r.split(":")[0] for r in reasons] == ["saturated", "debris"]


def test_missing_metrics_are_not_flagged():
    t = _table().drop(columns=["qc_saturated_fraction"])
    t.loc[0, "qc_background_od_nonuniformity"] = np.nan
    assert qc_flags(t, QCConfig())["qc_pass"].all()


def test_failed_images_fail_qc_with_one_reason():
    t = _table(status=(4, "error"))
    t.loc[4, "n_cells"] = 0
    flags = qc_flags(t, QCConfig())
    assert flags.loc[4, "qc_reasons"] == "analysis failed"
    assert flags["qc_pass"].sum() == 7


def test_focus_and_count_are_relative_to_the_plate():
    t = pd.concat([_table().assign(plate="P1"), _table().iloc[:3].assign(plate="P2")], ignore_index=True)
    t.loc[t["plate"] == "P2", "qc_sharpness"] = 0.05  # a small plate imaged at lower detail
    t.loc[t["plate"] == "P2", "n_cells"] = 20  # and sparser
    t.loc[3, "qc_sharpness"] = 0.05  # one image of P1 out of focus
    flags = qc_flags(t, QCConfig())
    assert flags["qc_pass"].tolist() == [True] * 3 + [False] + [True] * 7
    assert "plate median" in flags.loc[3, "qc_reasons"]
    np.testing.assert_allclose(flags.loc[8:, "qc_focus_ratio"], 1.0)
    # without a plate column the table is one group: P2 is out of focus and sparse
    alone = qc_flags(t.drop(columns="plate"), QCConfig())
    assert not alone["qc_pass"][8:].any()
    assert all("out of focus" in r and "low cell count" in r for r in alone["qc_reasons"][8:])


def test_sharpness_falls_back_to_focus_score():
    t = _table().rename(columns={"qc_sharpness": "qc_focus_score"})
    t.loc[5, "qc_focus_score"] = 0.01
    assert qc_flags(t, QCConfig())["qc_pass"].tolist() == [True] * 5 + [False] + [True] * 2


def test_cut_offs_come_from_the_config():
    t = _table(qc_saturated_fraction=(0, 0.2))
    assert not qc_flags(t, QCConfig())["qc_pass"][0]
    assert qc_flags(t, QCConfig(max_saturated_fraction=0.3))["qc_pass"][0]


def test_empty_table_keeps_the_schema():
    flags = qc_flags(_table().iloc[:0], QCConfig())
    assert list(flags.columns) == QC_COLUMNS and len(flags) == 0
    assert flags["qc_pass"].dtype == bool


def test_add_qc_columns_places_and_replaces_columns():
    t = _table()
    t.insert(2, "error", "")
    once = add_qc_columns(t, QCConfig())
    twice = add_qc_columns(once, QCConfig())
    assert list(once.columns) == list(twice.columns)
    cols = list(once.columns)
    assert cols[cols.index("error") + 1] == "qc_pass"
    assert cols[-2:] == ["qc_focus_ratio", "qc_cell_count_ratio"]


def test_every_check_is_registered():
    assert set(QC_CHECKS) == {"too_few_cells", "focus", "saturation", "background", "cell_count",
                              "stain_vector", "debris"}


def test_overlay_size_is_validated():
    with pytest.raises(ConfigError, match="qc.overlay_max_px"):
        config_from_dict({"qc": {"overlay_max_px": 10}})
    assert config_from_dict({"qc": {"overlay_max_px": 512}}).qc.overlay_max_px == 512


def test_pass_means_no_reasons_property():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.given(st.lists(st.tuples(st.integers(0, 400), st.floats(0, 1), st.floats(0, 0.3),
                                  st.floats(0, 0.5)), min_size=1, max_size=12),
               st.floats(0.01, 0.5))
    @hyp.settings(max_examples=60, deadline=None)
    def check(rows, limit):
        t = pd.DataFrame(rows, columns=["n_cells", "qc_sharpness", "qc_saturated_fraction",
                                        "qc_debris_area_fraction"]).assign(status="ok")
        strict = qc_flags(t, QCConfig(max_saturated_fraction=limit))
        assert (strict["qc_pass"] == (strict["qc_reasons"] == "")).all()
        loose = qc_flags(t, QCConfig(max_saturated_fraction=limit * 2))
        assert (loose["qc_pass"] | ~strict["qc_pass"]).all()  # a looser cut-off never adds a flag

    check()


def test_a_ratio_to_a_near_zero_median_does_not_overflow():
    # (found by the property test above: rounding a ratio of ~1e307 overflowed)
    t = pd.DataFrame({"n_cells": [400, 400, 400], "qc_sharpness": [2.2e-308, 2.2e-308, 1.0],
                      "qc_saturated_fraction": 0.0, "qc_debris_area_fraction": 0.0, "status": "ok"})
    out = qc_flags(t, QCConfig())
    assert out["qc_focus_ratio"].iloc[2] > 1e300
    assert (out["qc_pass"] == (out["qc_reasons"] == "")).all()
