"""Per-well and per-condition summaries, and a CellProfiler-shaped export.

* :func:`summarize_wells`: a row per (plate, well): images, cells, and for each
  call (SA-β-gal positive, enlarged, senescent) the count, the fraction with a
  Wilson score 95 % confidence interval (Wilson 1927; Brown, Cai & DasGupta
  2001) and the fold change over the same plate's negative-control wells.
* :func:`summarize_conditions`: a row per (condition, dose) across wells, with
  the well as the unit of replication (mean, SD, number of wells; Lazic 2010).
* :func:`cellprofiler_tables`: ``Image`` and ``Cells`` tables named the way
  CellProfiler's ExportToSpreadsheet names them, for pycytominer, CytoTable and
  spreadsheets built for CellProfiler output.

Functions take and return tables; nothing here reads or writes files.

References
----------
Wilson EB (1927). Probable inference, the law of succession, and statistical
inference. J Am Stat Assoc 22(158):209-212.
Brown LD, Cai TT, DasGupta A (2001). Interval estimation for a binomial
proportion. Stat Sci 16(2):101-133.
Lazic SE (2010). The problem of pseudoreplication in neuroscientific studies.
BMC Neurosci 11:5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sabgal.plate import METADATA_COLUMNS, PLATEMAP_COLUMNS

__all__ = [
    "CALLS",
    "Z95",
    "wilson_interval",
    "well_columns",
    "condition_columns",
    "summarize_wells",
    "summarize_conditions",
    "cellprofiler_tables",
    "CP_IMAGE_COLUMNS",
    "CP_CELL_COLUMNS",
]

CALLS = ("sabgal_positive", "enlarged", "senescent")
Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95 % interval

_META = ["plate", "well", "row", "column"]


def wilson_interval(k: Any, n: Any, *, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion k / n.

    Parameters
    ----------
    k, n : array_like of int
        Successes and trials (``0 <= k <= n``).
    z : float
        Normal quantile (1.96 for 95 %).

    Returns
    -------
    low, high : ndarray of float
        Bounds in [0, 1]; NaN where ``n == 0``.

    Raises
    ------
    ValueError
        When some ``k`` is negative or larger than its ``n``.

    >>> lo, hi = wilson_interval([0, 5], [10, 10])
    >>> [round(float(v), 4) for v in lo], [round(float(v), 4) for v in hi]
    ([0.0, 0.2366], [0.2775, 0.7634])
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("wilson_interval needs 0 <= k <= n for every pair")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = (z / denom) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low = np.clip(centre - half, 0.0, 1.0)
        high = np.clip(centre + half, 0.0, 1.0)
    low = np.where(n > 0, low, np.nan)
    high = np.where(n > 0, high, np.nan)
    return low, high


def well_columns(extra: list[str] | None = None) -> dict[str, str]:
    """Schema (column -> dtype) of ``wells.csv``; ``extra`` plate-map columns follow ``role``."""
    cols: dict[str, str] = {"plate": "str", "well": "str", "row": "str", "column": "Int64"}
    cols.update(PLATEMAP_COLUMNS)
    cols.update({c: "str" for c in extra or []})
    cols.update({"n_images": "int64", "n_images_failed": "int64", "n_cells": "int64"})
    for c in CALLS:
        cols.update({f"n_{c}": "int64", f"fraction_{c}": "float64", f"fraction_{c}_ci_low": "float64",
                     f"fraction_{c}_ci_high": "float64", f"fold_change_{c}": "float64"})
    cols.update({"median_xgal_od_p90": "float64", "median_area_px": "float64",
                 "positive_threshold_od": "float64", "positive_threshold_source": "str"})
    return cols


def condition_columns() -> dict[str, str]:
    """Schema (column -> dtype) of ``conditions.csv``."""
    cols: dict[str, str] = {"condition": "str", "dose": "float64", "role": "str", "n_wells": "int64",
                            "n_plates": "int64", "n_cells": "int64"}
    for c in CALLS:
        cols.update({f"mean_fraction_{c}": "float64", f"sd_fraction_{c}": "float64",
                     f"fold_change_{c}": "float64", f"difference_{c}": "float64"})
    return cols


def _empty(schema: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in schema.items()})


def _extra_columns(images: pd.DataFrame) -> list[str]:
    """Plate-map columns beyond the standard ones, as they sit after ``role`` in images."""
    if "role" not in images:
        return []
    cols = list(images.columns)
    start = cols.index("role") + 1
    end = cols.index("n_cells") if "n_cells" in cols and cols.index("n_cells") > start else start
    return [c for c in cols[start:end] if c not in METADATA_COLUMNS]


def _control_means(wells: pd.DataFrame) -> pd.DataFrame:
    """Per plate, the mean fraction over its negative-control wells that have cells."""
    ctrl = wells[(wells["role"] == "negative_control") & (wells["n_cells"] > 0)]
    cols = [f"fraction_{c}" for c in CALLS]
    means = ctrl.groupby("plate", sort=False)[cols].mean()
    return means.rename(columns={f"fraction_{c}": c for c in CALLS})


def summarize_wells(images: pd.DataFrame, cells: pd.DataFrame | None = None, *,
                    z: float = Z95) -> pd.DataFrame:
    """One row per (plate, well), pooling the well's images.

    Parameters
    ----------
    images : DataFrame
        ``images.csv`` rows: metadata (``plate``, ``well``, ``row``,
        ``column``, plate-map columns), ``status``, ``n_cells`` and
        ``n_<call>`` for each call, ``positive_threshold_od`` / ``_source``.
        Images without a well are left out.
    cells : DataFrame, optional
        Classified cells with ``plate``, ``well``, ``xgal_od_p90`` and
        ``area_px``, for the per-well medians (NaN without it).
    z : float
        Normal quantile of the confidence intervals.

    Returns
    -------
    DataFrame
        Columns :func:`well_columns`. ``fraction_<call>`` = pooled count /
        pooled cells (NaN for 0 cells) with its Wilson interval;
        ``fold_change_<call>`` = the fraction over the mean fraction of the
        plate's negative-control wells (NaN without controls or when that
        mean is 0). ``positive_threshold_od`` is the median over the well's
        images (thresholds can be per image), ``positive_threshold_source``
        their distinct sources joined by ``;``.
    """
    extra = _extra_columns(images)
    schema = well_columns(extra)
    if len(images) == 0 or "well" not in images:
        return _empty(schema)
    imgs = images[images["well"].fillna("") != ""]
    if len(imgs) == 0:
        return _empty(schema)
    ok = imgs["status"] == "ok"
    keys = ["plate", "well"]
    firsts = [c for c in ["row", "column", *PLATEMAP_COLUMNS, *extra] if c in imgs]
    g = imgs.groupby(keys, sort=False)
    out = g[firsts].first().reset_index()
    out["n_images"] = g.size().to_numpy()
    out["n_images_failed"] = (~ok).groupby([imgs["plate"], imgs["well"]], sort=False).sum().to_numpy()
    counts = imgs.loc[:, ["n_cells", *[f"n_{c}" for c in CALLS]]].where(ok, 0).fillna(0).astype(np.int64)
    summed = counts.groupby([imgs["plate"], imgs["well"]], sort=False).sum()
    out["n_cells"] = summed["n_cells"].to_numpy()
    n = out["n_cells"].to_numpy()
    for c in CALLS:
        k = summed[f"n_{c}"].to_numpy()
        out[f"n_{c}"] = k
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"fraction_{c}"] = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        lo, hi = wilson_interval(k, n, z=z)
        out[f"fraction_{c}_ci_low"] = lo
        out[f"fraction_{c}_ci_high"] = hi
    ctrl = _control_means(out)
    for c in CALLS:
        ref = out["plate"].map(ctrl[c]) if len(ctrl) else pd.Series(np.nan, index=out.index)
        ref = ref.astype(np.float64).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"fold_change_{c}"] = np.where(ref > 0, out[f"fraction_{c}"].to_numpy() / ref, np.nan)
    if cells is not None and len(cells) and {"plate", "well"} <= set(cells.columns):
        med = cells.groupby(["plate", "well"], sort=False)[["xgal_od_p90", "area_px"]].median()
        idx = pd.MultiIndex.from_frame(out[keys])
        out["median_xgal_od_p90"] = med["xgal_od_p90"].reindex(idx).to_numpy(dtype=np.float64)
        out["median_area_px"] = med["area_px"].reindex(idx).to_numpy(dtype=np.float64)
    else:
        out["median_xgal_od_p90"] = np.nan
        out["median_area_px"] = np.nan
    # thresholds may be per image (learnt within each image): the well's median, and its sources
    g_ok = imgs[ok].groupby(keys, sort=False)
    idx = pd.MultiIndex.from_frame(out[keys])
    med_t = g_ok["positive_threshold_od"].median() if ok.any() else pd.Series(dtype=np.float64)
    srcs = (g_ok["positive_threshold_source"].agg(lambda v: ";".join(sorted(set(map(str, v)))))
            if ok.any() else pd.Series(dtype="str"))
    out["positive_threshold_od"] = med_t.reindex(idx).to_numpy(dtype=np.float64)
    out["positive_threshold_source"] = srcs.reindex(idx).fillna("").to_numpy()
    for col in schema:
        if col not in out:
            out[col] = pd.Series([None] * len(out), index=out.index)
    out = out[list(schema)]
    return out.astype({k: v for k, v in schema.items() if v != "Int64"}).reset_index(drop=True)


_ROLE_ORDER = {"negative_control": 0, "positive_control": 1, "sample": 2, "blank": 3, "": 4}


def summarize_conditions(wells: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, dose) across wells and plates; the well is the unit.

    Parameters
    ----------
    wells : DataFrame
        From :func:`summarize_wells`. Wells without a condition and without a
        role (no plate map) and wells without cells are left out.

    Returns
    -------
    DataFrame
        Columns :func:`condition_columns`: ``n_wells`` (wells with cells),
        ``n_plates``, ``n_cells`` (all wells' cells); per call
        ``mean_fraction_<call>`` and ``sd_fraction_<call>`` (sample SD over
        wells, NaN for one well), ``fold_change_<call>`` (mean over wells of
        the well's fraction / its plate's negative-control mean, so plates
        are normalised to their own controls; NaN without controls) and
        ``difference_<call>`` (mean over wells of fraction minus that
        control mean). Negative controls come first.
    """
    schema = condition_columns()
    if len(wells) == 0:
        return _empty(schema)
    use = wells[((wells["condition"] != "") | (wells["role"] != "")) & (wells["n_cells"] > 0)].copy()
    if len(use) == 0:
        return _empty(schema)
    ctrl = _control_means(wells)
    for c in CALLS:
        ref = use["plate"].map(ctrl[c]) if len(ctrl) else pd.Series(np.nan, index=use.index)
        ref = ref.astype(np.float64)
        frac = use[f"fraction_{c}"].astype(np.float64)
        use[f"_fc_{c}"] = np.where(ref > 0, frac / ref.where(ref > 0, 1.0), np.nan)
        use[f"_diff_{c}"] = frac - ref
    rows = []
    for (cond, dose), grp in use.groupby(["condition", "dose"], sort=False, dropna=False):
        roles = sorted(set(grp["role"]), key=lambda r: _ROLE_ORDER.get(r, 9))
        row: dict[str, Any] = {"condition": cond, "dose": dose, "role": ";".join(roles),
                               "n_wells": len(grp), "n_plates": grp["plate"].nunique(),
                               "n_cells": int(grp["n_cells"].sum())}
        for c in CALLS:
            f = grp[f"fraction_{c}"].astype(np.float64)
            row[f"mean_fraction_{c}"] = float(f.mean())
            row[f"sd_fraction_{c}"] = float(f.std(ddof=1)) if len(f) > 1 else float("nan")
            fc = grp[f"_fc_{c}"].dropna()
            d = grp[f"_diff_{c}"].dropna()
            row[f"fold_change_{c}"] = float(fc.mean()) if len(fc) else float("nan")
            row[f"difference_{c}"] = float(d.mean()) if len(d) else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(schema))
    order = out["role"].map(lambda r: _ROLE_ORDER.get(r.split(";")[0], 9))
    out = out.assign(_o=order).sort_values(["_o", "condition", "dose"], kind="stable").drop(columns="_o")
    return out.astype(schema).reset_index(drop=True)


# --- CellProfiler-shaped export ----------------------------------------------------------
CP_IMAGE_COLUMNS: dict[str, str] = {
    "ImageNumber": "int64",
    "Metadata_Plate": "str",
    "Metadata_Well": "str",
    "Metadata_Site": "Int64",
    "Metadata_Row": "str",
    "Metadata_Column": "Int64",
    "Metadata_Condition": "str",
    "Metadata_Dose": "float64",
    "Metadata_Replicate": "str",
    "Metadata_Role": "str",
    "Metadata_Status": "str",
    "FileName_RGB": "str",
    "PathName_RGB": "str",
    "Count_Cells": "int64",
    "Count_SABGalPositive": "int64",
    "Count_Enlarged": "int64",
    "Count_Senescent": "int64",
    "Math_Fraction_SABGalPositive": "float64",
    "Math_Fraction_Enlarged": "float64",
    "Math_Fraction_Senescent": "float64",
    "Threshold_SABGalPositive_OD": "float64",
}

# (sabgal cells.csv column, CellProfiler-style name)
_CP_CELL_MAP = [
    ("cell_id", "ObjectNumber"),
    ("centroid_x", "Location_Center_X"),
    ("centroid_y", "Location_Center_Y"),
    ("area_px", "AreaShape_Area"),
    ("perimeter_px", "AreaShape_Perimeter"),
    ("form_factor", "AreaShape_FormFactor"),
    ("solidity", "AreaShape_Solidity"),
    ("eccentricity", "AreaShape_Eccentricity"),
    ("major_axis_px", "AreaShape_MajorAxisLength"),
    ("minor_axis_px", "AreaShape_MinorAxisLength"),
    ("aspect_ratio", "AreaShape_AspectRatio"),
    ("nucleus_area_px", "AreaShape_NucleusArea"),
    ("nucleus_cell_area_ratio", "AreaShape_NucleusCellAreaRatio"),
    ("has_nucleus", "Children_Nuclei_Count"),
    ("xgal_od_mean", "Intensity_MeanIntensity_XGal"),
    ("xgal_od_p90", "Intensity_Percentile90Intensity_XGal"),
    ("xgal_od_core_p60", "Intensity_CorePercentile60Intensity_XGal"),
    ("xgal_od_perinuclear_p60", "Intensity_PerinuclearPercentile60Intensity_XGal"),
    ("xgal_od_integrated", "Intensity_IntegratedIntensity_XGal"),
    ("xgal_stained_fraction", "Intensity_StainedAreaFraction_XGal"),
    ("body_od_mean", "Intensity_MeanIntensity_Body"),
    ("counterstain_od_mean", "Intensity_MeanIntensity_Counterstain"),
    ("touches_border", "Location_TouchesBorder"),
    ("sabgal_positive", "Classify_SABGalPositive"),
    ("enlarged", "Classify_Enlarged"),
    ("senescent", "Classify_Senescent"),
    ("corrected", "Classify_Corrected"),
]
_CP_BOOL = {"has_nucleus", "touches_border", "sabgal_positive", "enlarged", "senescent", "corrected"}
CP_CELL_COLUMNS: dict[str, str] = {
    "ImageNumber": "int64",
    "Metadata_Plate": "str",
    "Metadata_Well": "str",
    "Metadata_Site": "Int64",
    **{cp: ("int64" if src in _CP_BOOL or src in ("cell_id", "area_px", "nucleus_area_px") else "float64")
       for src, cp in _CP_CELL_MAP},
}


def _col(table: pd.DataFrame, name: str, default: Any) -> pd.Series:
    if name in table:
        return table[name]
    return pd.Series([default] * len(table), index=table.index)


def cellprofiler_tables(images: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``Image`` and ``Cells`` tables in CellProfiler's naming.

    ``ImageNumber`` counts images in ``images`` order from 1; ``ObjectNumber``
    is sabgal's ``cell_id`` (the label value). ``Intensity_*`` columns hold
    optical density (OD), not raw intensity; ``AreaShape_*`` are in pixels;
    ``Classify_*`` are 0/1. Failed images are kept with ``Count_Cells = 0`` and
    ``Metadata_Status = "error"``.

    Returns
    -------
    image_table, cells_table : DataFrame
        Columns :data:`CP_IMAGE_COLUMNS` and :data:`CP_CELL_COLUMNS`.
    """
    number = pd.Series(np.arange(1, len(images) + 1, dtype=np.int64), index=images["image"].to_numpy())
    rel = images["image"].astype(str)
    img = pd.DataFrame({
        "ImageNumber": number.to_numpy(),
        "Metadata_Plate": _col(images, "plate", "").to_numpy(),
        "Metadata_Well": _col(images, "well", "").to_numpy(),
        "Metadata_Site": _col(images, "field", None).to_numpy(),
        "Metadata_Row": _col(images, "row", "").to_numpy(),
        "Metadata_Column": _col(images, "column", None).to_numpy(),
        "Metadata_Condition": _col(images, "condition", "").to_numpy(),
        "Metadata_Dose": _col(images, "dose", np.nan).to_numpy(),
        "Metadata_Replicate": _col(images, "replicate", "").to_numpy(),
        "Metadata_Role": _col(images, "role", "").to_numpy(),
        "Metadata_Status": images["status"].to_numpy(),
        "FileName_RGB": rel.map(lambda s: s.rsplit("/", 1)[-1]).to_numpy(),
        "PathName_RGB": rel.map(lambda s: s.rsplit("/", 1)[0] if "/" in s else "").to_numpy(),
        "Count_Cells": images["n_cells"].fillna(0).to_numpy(),
        "Count_SABGalPositive": images["n_sabgal_positive"].fillna(0).to_numpy(),
        "Count_Enlarged": images["n_enlarged"].fillna(0).to_numpy(),
        "Count_Senescent": images["n_senescent"].fillna(0).to_numpy(),
        "Math_Fraction_SABGalPositive": images["fraction_sabgal_positive"].to_numpy(),
        "Math_Fraction_Enlarged": images["fraction_enlarged"].to_numpy(),
        "Math_Fraction_Senescent": images["fraction_senescent"].to_numpy(),
        "Threshold_SABGalPositive_OD": _col(images, "positive_threshold_od", np.nan).to_numpy(),
    })
    img = _astype(img, CP_IMAGE_COLUMNS)
    meta = img.set_index("ImageNumber")
    inum = cells["image"].map(number).to_numpy(dtype=np.int64) if len(cells) else np.zeros(0, np.int64)
    cp: dict[str, Any] = {
        "ImageNumber": inum,
        "Metadata_Plate": meta["Metadata_Plate"].reindex(inum).to_numpy(),
        "Metadata_Well": meta["Metadata_Well"].reindex(inum).to_numpy(),
        "Metadata_Site": meta["Metadata_Site"].reindex(inum).to_numpy(),
    }
    for src, name in _CP_CELL_MAP:
        col = _col(cells, src, np.nan)
        cp[name] = col.astype(np.int64).to_numpy() if src in _CP_BOOL else col.to_numpy()
    out = pd.DataFrame(cp)
    return img, _astype(out, CP_CELL_COLUMNS)


def _astype(table: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    out = table.copy()
    for col, dtype in schema.items():
        if dtype == "Int64":
            out[col] = pd.array([None if v is None or pd.isna(v) else int(v) for v in out[col]], dtype="Int64")
        elif dtype == "str":
            out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                    else str(v)).astype("str")
        else:
            out[col] = out[col].astype(dtype)
    return out[list(schema)]
