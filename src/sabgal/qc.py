"""Quality control: per-image flags from the QC metrics of a run.

The pipeline records image-quality numbers for every image (``qc_*`` columns
of ``images.csv``); this module turns them into a verdict with reasons:

* ``qc_pass`` -- True when no check failed.
* ``qc_reasons`` -- the failed checks, human readable, separated by ``"; "``
  (empty when the image passed).
* ``qc_focus_ratio`` -- the image's sharpness over the median sharpness of its
  plate (or of the run when there is no ``plate`` column).
* ``qc_cell_count_ratio`` -- the image's cell count over the median count of
  its plate (or run).

Checks and their cut-offs (``[qc]`` in the config):

========================  =========================================================
check                     fails when
========================  =========================================================
``focus``                 sharpness / plate median < ``min_focus_ratio`` (judged only
                          on images with at least ``min_cells`` cells)
``saturation``            share of clipped pixels > ``max_saturated_fraction``
``background``            background OD range after correction >
                          ``max_background_nonuniformity``
``too_few_cells``         n_cells < ``min_cells``
``cell_count``            n_cells outside [median / r, median x r],
                          r = ``max_cell_count_ratio``
``stain_vector``          X-gal vector angle from the reference > ``max_stain_angle_deg``
``debris``                debris / crystal area fraction > ``max_debris_fraction``
========================  =========================================================

Sharpness (:func:`sharpness`) is the variance of a Laplacian of Gaussian at
1.5 px over the variance of a difference of Gaussians at 4-8 px: fine detail
relative to cell-scale structure, so that it depends on defocus more than on
how many cells are in the field, and not on pixel noise (which a raw Laplacian
mostly measures). It is judged relative to the plate because the absolute
value depends on the cell type and the magnification.

Functions here are pure: tables and arrays in, tables and numbers out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi  # noqa: F401  (the doctest of sharpness uses it)

from sabgal import filters
from sabgal.config import QCConfig
from sabgal.illumination import block_reduce_mean

__all__ = [
    "QC_COLUMNS",
    "QC_CHECKS",
    "image_metrics",
    "sharpness",
    "qc_flags",
    "add_qc_columns",
]

QC_COLUMNS = ["qc_pass", "qc_reasons", "qc_focus_ratio", "qc_cell_count_ratio"]


def sharpness(rgb: np.ndarray) -> float:
    """Defocus-sensitive, noise-robust sharpness of a brightfield image.

    Parameters
    ----------
    rgb : (M, N, 3) or (M, N) ndarray
        Image, any numeric dtype (only relative values matter).

    Returns
    -------
    float
        ``var(LoG_1.5(lum)) / var(G_4(lum) - G_8(lum))`` (dimensionless; NaN
        for a perfectly flat image). Images larger than 4 megapixels are
        measured on every other pixel with the scales halved.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = ndi.gaussian_filter(rng.random((128, 128)), 2)
    >>> bool(sharpness(img) > sharpness(ndi.gaussian_filter(img, 3)))
    True
    """
    lum = np.asarray(rgb, dtype=np.float32)
    if lum.ndim == 3:
        # lum.mean(axis=-1), as whole-plane additions (same values, faster)
        total = lum[..., 0].copy()
        for c in range(1, lum.shape[-1]):
            total += lum[..., c]
        lum = total / np.float32(lum.shape[-1])
    if lum.ndim != 2:
        raise ValueError(f"rgb must have shape (rows, cols[, channels]); got {np.shape(rgb)}")
    scale = 1.0
    if lum.size > 4_000_000:
        lum, scale = lum[::2, ::2], 0.5
    fine = filters.gaussian_laplace(lum, 1.5 * scale)
    # the coarse band on a 2x2 block mean (same band, a quarter of the work)
    half = block_reduce_mean(lum, 2)
    g4 = filters.gaussian_filter(half, 2.0 * scale)
    g8 = filters.gaussian_filter(g4, np.sqrt(4.0**2 - 2.0**2) * scale)
    coarse = float(np.var(g4 - g8))
    if coarse <= 0:
        return float("nan")
    return float(np.var(fine)) / coarse


def image_metrics(rgb: np.ndarray) -> dict[str, float]:
    """Pixel-level QC numbers the pipeline records beside its own (see
    ``sabgal.pipeline``).

    Parameters
    ----------
    rgb : (M, N, 3) ndarray
        The image as read (see :func:`sabgal.io.read_rgb`).

    Returns
    -------
    dict
        ``{"sharpness": float}`` (see :func:`sharpness`).
    """
    return {"sharpness": round(sharpness(rgb), 6)}


@dataclass(frozen=True)
class _Context:
    """What a check sees: the table, plate medians and the cut-offs."""

    table: pd.DataFrame
    config: QCConfig
    focus_ratio: pd.Series
    count_ratio: pd.Series
    scope: str  # "plate" or "run", for messages


Check = Callable[[_Context], tuple[pd.Series, pd.Series]]


def _num(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table:
        return pd.Series(np.nan, index=table.index, dtype=float)
    return pd.to_numeric(table[column], errors="coerce").astype(float)


def _n_cells(table: pd.DataFrame) -> pd.Series:
    return _num(table, "n_cells").fillna(0)


def _focus_column(table: pd.DataFrame) -> str:
    return "qc_sharpness" if "qc_sharpness" in table and table["qc_sharpness"].notna().any() \
        else "qc_focus_score"


def _check_focus(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    r = ctx.focus_ratio
    judged = _n_cells(ctx.table) >= ctx.config.min_cells
    bad = judged & (r < ctx.config.min_focus_ratio)
    msg = r.map(lambda v: f"out of focus: sharpness {v:.2f}x {ctx.scope} median "
                          f"(< {ctx.config.min_focus_ratio:g})")
    return bad, msg


def _check_saturation(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    v = _num(ctx.table, "qc_saturated_fraction")
    lim = ctx.config.max_saturated_fraction
    return v > lim, v.map(lambda x: f"saturated: {100 * x:.1f}% of pixels clipped (> {100 * lim:g}%)")


def _check_background(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    v = _num(ctx.table, "qc_background_od_nonuniformity")
    lim = ctx.config.max_background_nonuniformity
    return v > lim, v.map(lambda x: f"uneven background: {x:.3f} OD across the field (> {lim:g})")


def _check_too_few(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    n = _n_cells(ctx.table)
    lim = ctx.config.min_cells
    return n < lim, n.map(lambda x: f"too few cells: {x:.0f} (< {lim})")


def _check_cell_count(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    r = ctx.count_ratio
    lim = ctx.config.max_cell_count_ratio
    n = _n_cells(ctx.table)
    if lim <= 0:
        return pd.Series(False, index=ctx.table.index), pd.Series("", index=ctx.table.index)
    low = (r < 1 / lim) & (n >= ctx.config.min_cells)  # fewer than min_cells is its own reason
    high = r > lim
    msg = pd.Series("", index=ctx.table.index, dtype=object)
    msg[low] = [f"low cell count: {k:.0f} = {v:.2f}x {ctx.scope} median (< 1/{lim:g})"
                for k, v in zip(n[low], r[low])]
    msg[high] = [f"high cell count: {k:.0f} = {v:.1f}x {ctx.scope} median (> {lim:g}x)"
                 for k, v in zip(n[high], r[high])]
    return low | high, msg


def _check_stain(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    v = _num(ctx.table, "xgal_angle_from_reference_deg")
    lim = ctx.config.max_stain_angle_deg
    return v > lim, v.map(lambda x: f"stain colour off: X-gal vector {x:.1f}° from reference (> {lim:g}°)")


def _check_debris(ctx: _Context) -> tuple[pd.Series, pd.Series]:
    v = _num(ctx.table, "qc_debris_area_fraction")
    lim = ctx.config.max_debris_fraction
    return v > lim, v.map(lambda x: f"debris: {100 * x:.1f}% of the field (> {100 * lim:g}%)")


#: name -> check; each returns (failed mask, message per row). Order = order in qc_reasons.
QC_CHECKS: dict[str, Check] = {
    "too_few_cells": _check_too_few,
    "focus": _check_focus,
    "saturation": _check_saturation,
    "background": _check_background,
    "cell_count": _check_cell_count,
    "stain_vector": _check_stain,
    "debris": _check_debris,
}


def _group_ratio(values: pd.Series, groups: pd.Series, usable: pd.Series) -> pd.Series:
    """values / median(values over usable rows of the same group); NaN where undefined."""
    ref = values.where(usable).groupby(groups, dropna=False).transform("median")
    ratio = values / ref.where(ref > 0)
    return ratio.astype(float)


def qc_flags(images: pd.DataFrame, config: QCConfig, *, group_column: str = "plate") -> pd.DataFrame:
    """QC verdict for every image of a run.

    Parameters
    ----------
    images : DataFrame
        One row per image, as in ``images.csv``: ``status``, ``n_cells``,
        ``xgal_angle_from_reference_deg`` and the ``qc_*`` metrics (missing
        columns skip their check).
    config : QCConfig
        Cut-offs.
    group_column : str
        Images are compared with the median of their group in this column
        (the plate); the whole table is one group when it is absent.

    Returns
    -------
    DataFrame
        Same index as ``images``; columns :data:`QC_COLUMNS`. Images whose
        analysis failed (``status != "ok"``) have ``qc_pass = False`` and the
        reason ``"analysis failed"``.

    Examples
    --------
    >>> t = pd.DataFrame({"status": ["ok"] * 3, "n_cells": [40, 50, 2],
    ...                   "qc_saturated_fraction": [0.0, 0.2, 0.0]})
    >>> qc_flags(t, QCConfig())["qc_reasons"].tolist()
    ['', 'saturated: 20.0% of pixels clipped (> 5%)', 'too few cells: 2 (< 5)']
    """
    idx = images.index
    out = pd.DataFrame(index=idx)
    if len(images) == 0:
        return pd.DataFrame({"qc_pass": pd.Series(dtype=bool), "qc_reasons": pd.Series(dtype=object),
                             "qc_focus_ratio": pd.Series(dtype=float),
                             "qc_cell_count_ratio": pd.Series(dtype=float)}, index=idx)
    ok = (images["status"] == "ok") if "status" in images else pd.Series(True, index=idx)
    if group_column in images and images[group_column].notna().any():
        groups = images[group_column].astype(str).where(images[group_column].notna(), "")
        scope = "plate"
    else:
        groups = pd.Series("", index=idx)
        scope = "run"
    n = _n_cells(images)
    populated = ok & (n >= config.min_cells)
    focus = _num(images, _focus_column(images))
    out["qc_focus_ratio"] = _group_ratio(focus, groups, populated & focus.notna())
    out["qc_cell_count_ratio"] = _group_ratio(n, groups, ok)
    ctx = _Context(images, config, out["qc_focus_ratio"], out["qc_cell_count_ratio"], scope)
    reasons: list[list[str]] = [[] for _ in range(len(images))]
    for check in QC_CHECKS.values():
        bad, msg = check(ctx)
        bad = bad.fillna(False).to_numpy(dtype=bool) & ok.to_numpy()
        for i in np.flatnonzero(bad):
            reasons[i].append(str(msg.iloc[i]))
    for i in np.flatnonzero(~ok.to_numpy()):
        reasons[i] = ["analysis failed"]
    out["qc_reasons"] = ["; ".join(r) for r in reasons]
    out["qc_pass"] = [not r for r in reasons]
    out["qc_focus_ratio"] = _round(out["qc_focus_ratio"], 4)
    out["qc_cell_count_ratio"] = _round(out["qc_cell_count_ratio"], 4)
    return out[QC_COLUMNS]


def _round(values: pd.Series, decimals: int) -> pd.Series:
    """``values.round(decimals)``, leaving alone the values so large that
    rounding would overflow (a ratio to a near-zero median)."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = values.round(decimals)
    return rounded.where(np.isfinite(rounded) | ~np.isfinite(values), values)


def add_qc_columns(images: pd.DataFrame, config: QCConfig, *, group_column: str = "plate") -> pd.DataFrame:
    """``images`` with the :data:`QC_COLUMNS` (re)computed.

    ``qc_pass`` and ``qc_reasons`` go right after ``error`` (or at the end),
    the two ratios next to the other ``qc_*`` metrics at the end.
    """
    flags = qc_flags(images, config, group_column=group_column)
    out = images.drop(columns=[c for c in QC_COLUMNS if c in images])
    pos = list(out.columns).index("error") + 1 if "error" in out else len(out.columns)
    out.insert(pos, "qc_pass", flags["qc_pass"].astype(bool))
    out.insert(pos + 1, "qc_reasons", flags["qc_reasons"].astype(object))
    out["qc_focus_ratio"] = flags["qc_focus_ratio"]
    out["qc_cell_count_ratio"] = flags["qc_cell_count_ratio"]
    return out
