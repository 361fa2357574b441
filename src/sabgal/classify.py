"""Per-cell calls and per-image fractions.

* **SA-β-gal positive**: the cell's X-gal score (by default ``xgal_od_p90``,
  the 90th percentile of X-gal OD inside the cell, robust to the granular,
  perinuclear pattern of the stain and to stray crystals) is above a
  threshold. The threshold is fixed in the config, learnt from negative
  control wells (batch), or learnt from the cells themselves
  (:func:`learn_positive_threshold`): a two-population split in log-OD, never
  below a floor.
* **Enlarged**: cell area above ``enlarged_factor`` x the median area of the
  SA-β-gal-negative cells of the same image (magnification differs between
  images), or a fixed area.
* **Senescent**: a documented rule combining both (default: positive *and*
  enlarged).

Functions take and return tables; nothing here reads files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from sabgal.config import ClassifyConfig

__all__ = [
    "Thresholds",
    "learn_positive_threshold",
    "learn_thresholds",
    "classify_cells",
    "summarize",
    "SUMMARY_COLUMNS",
    "SENESCENT_RULES",
]

SENESCENT_RULES = {
    "positive_and_enlarged": lambda pos, enl: pos & enl,
    "positive": lambda pos, enl: pos,
    "positive_or_enlarged": lambda pos, enl: pos | enl,
}

SUMMARY_COLUMNS = [
    "n_cells",
    "n_sabgal_positive",
    "fraction_sabgal_positive",
    "n_enlarged",
    "fraction_enlarged",
    "n_senescent",
    "fraction_senescent",
]


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a set of calls was made with (recorded in the outputs).

    positive: X-gal score threshold (OD) on column ``measure``.
    positive_source: "config", "learnt", "default" (no two populations),
      or "controls".
    enlarged_factor / enlarged_area_px / enlarged_area_um2: the area rule.
    """

    positive: float
    positive_source: str
    measure: str
    enlarged_factor: float
    enlarged_area_px: float | None = None
    enlarged_area_um2: float | None = None
    enlarged_source: str = "per-image negative median"

    def to_dict(self) -> dict:
        return asdict(self)


def _gmm2(x: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic two-component 1-D Gaussian mixture by EM."""
    lo, hi = np.percentile(x, [10, 90])
    mu = np.array([lo, hi], dtype=np.float64)
    sd = np.full(2, max(np.std(x) / 2, 1e-3))
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        d = np.stack([w[k] * np.exp(-0.5 * ((x - mu[k]) / sd[k]) ** 2) / sd[k] for k in range(2)])
        tot = d.sum(axis=0) + 1e-300
        r = d / tot
        nk = r.sum(axis=1) + 1e-12
        new_mu = (r * x).sum(axis=1) / nk
        new_sd = np.sqrt((r * (x - new_mu[:, None]) ** 2).sum(axis=1) / nk)
        new_sd = np.maximum(new_sd, 0.02)
        w = nk / nk.sum()
        if np.allclose(new_mu, mu, atol=1e-7) and np.allclose(new_sd, sd, atol=1e-7):
            mu, sd = new_mu, new_sd
            break
        mu, sd = new_mu, new_sd
    order = np.argsort(mu)
    return mu[order], sd[order], w[order]


def learn_positive_threshold(scores, *, floor: float, default: float,
                             min_cells: int = 12) -> tuple[float, str]:
    """Learn the SA-β-gal positivity threshold from per-cell X-gal scores.

    Scores are taken in log10 (OD is multiplicative across staining
    strengths). A two-component Gaussian mixture is fitted; if the components
    are well separated (Ashman's D >= 2, each holding >= 2 % of cells) the
    threshold is where their weighted densities cross. Otherwise there is one
    population, and ``default`` is used. The result is never below ``floor``.

    Returns
    -------
    threshold : float
    source : {"learnt", "default"}

    >>> rng = np.random.default_rng(0)
    >>> s = np.r_[rng.lognormal(np.log(0.03), 0.3, 300), rng.lognormal(np.log(0.5), 0.4, 100)]
    >>> t, src = learn_positive_threshold(s, floor=0.05, default=0.15)
    >>> src, 0.06 < t < 0.3
    ('learnt', True)
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < min_cells:
        return max(default, floor), "default"
    x = np.log10(np.clip(s, 0.005, None))
    mu, sd, w = _gmm2(x)
    ashman = np.sqrt(2) * abs(mu[1] - mu[0]) / np.sqrt(sd[0] ** 2 + sd[1] ** 2)
    if ashman < 2.0 or w.min() < 0.02:
        # One population: is it the stained or the unstained one? The default
        # threshold decides; either way the default is the honest split.
        return max(default, floor), "default"
    grid = np.linspace(mu[0], mu[1], 2001)
    d0 = w[0] * np.exp(-0.5 * ((grid - mu[0]) / sd[0]) ** 2) / sd[0]
    d1 = w[1] * np.exp(-0.5 * ((grid - mu[1]) / sd[1]) ** 2) / sd[1]
    cross = grid[np.argmax(d1 >= d0)] if np.any(d1 >= d0) else (mu[0] + mu[1]) / 2
    return max(float(10 ** cross), floor), "learnt"


def learn_thresholds(cells: pd.DataFrame, config: ClassifyConfig) -> Thresholds:
    """Thresholds for a set of cells (one image or a whole run), from the config
    or learnt from the cells themselves."""
    measure = config.positive_measure
    if config.positive_threshold == "auto":
        usable = cells
        if config.exclude_border_cells and "touches_border" in cells:
            usable = cells[~cells["touches_border"]]
        t, src = learn_positive_threshold(usable[measure].to_numpy() if len(usable) else [],
                                          floor=config.min_positive_threshold,
                                          default=config.default_positive_threshold)
    else:
        t, src = float(config.positive_threshold), "config"
    if config.enlarged_threshold_um2 is not None:
        enl_src = "config (µm²)"
    elif config.enlarged_threshold_px is not None:
        enl_src = "config (px)"
    else:
        enl_src = "per-image negative median"
    return Thresholds(positive=t, positive_source=src, measure=measure,
                      enlarged_factor=config.enlarged_factor,
                      enlarged_area_px=config.enlarged_threshold_px,
                      enlarged_area_um2=config.enlarged_threshold_um2,
                      enlarged_source=enl_src)


def _reference_area(cells: pd.DataFrame, positive: np.ndarray) -> float:
    """Median area (px) of the image's SA-β-gal negative cells, falling back
    to the smallest half of all cells when fewer than 8 are negative."""
    area = cells["area_px"].to_numpy(dtype=np.float64)
    inner = ~cells["touches_border"].to_numpy(dtype=bool)
    neg = area[~positive & inner]
    if neg.size >= 8:
        return float(np.median(neg))
    neg = area[~positive]
    if neg.size >= 8:
        return float(np.median(neg))
    if area.size:
        return float(np.median(np.sort(area)[: max(1, area.size // 2)]))
    return float("nan")


def classify_cells(cells: pd.DataFrame, thresholds: Thresholds, *, rule: str = "positive_and_enlarged",
                   image_column: str | None = "image") -> pd.DataFrame:
    """Add ``sabgal_positive``, ``enlarged`` and ``senescent`` boolean columns.

    The enlarged reference is computed per image (column ``image_column``)
    unless the thresholds fix an area.
    """
    if rule not in SENESCENT_RULES:
        raise ValueError(f"senescent rule must be one of {sorted(SENESCENT_RULES)}, got {rule!r}")
    out = cells.copy()
    score = out[thresholds.measure].to_numpy(dtype=np.float64) if len(out) else np.zeros(0)
    pos = np.nan_to_num(score, nan=0.0) > thresholds.positive
    enl = np.zeros(len(out), dtype=bool)
    if len(out):
        if thresholds.enlarged_area_um2 is not None and out["area_um2"].notna().all():
            enl = out["area_um2"].to_numpy() > thresholds.enlarged_area_um2
        elif thresholds.enlarged_area_px is not None:
            enl = out["area_px"].to_numpy() > thresholds.enlarged_area_px
        else:
            groups = (out.groupby(image_column, sort=False).indices
                      if image_column and image_column in out else {None: np.arange(len(out))})
            for idx in groups.values():
                ref = _reference_area(out.iloc[idx], pos[idx])
                enl[idx] = out["area_px"].to_numpy()[idx] > thresholds.enlarged_factor * ref
    out["sabgal_positive"] = pos
    out["enlarged"] = enl
    out["senescent"] = SENESCENT_RULES[rule](pos, enl)
    return out


def summarize(cells: pd.DataFrame, *, exclude_border: bool = False) -> dict[str, float]:
    """Counts and fractions for a classified table (one image or a group).

    Fractions over zero cells are NaN (with ``n_cells = 0``).

    >>> t = pd.DataFrame({"sabgal_positive": [True, False], "enlarged": [True, True],
    ...                   "senescent": [True, False], "touches_border": [False, False]})
    >>> summarize(t)["fraction_sabgal_positive"]
    0.5
    """
    if exclude_border and len(cells):
        cells = cells[~cells["touches_border"].astype(bool)]
    n = int(len(cells))
    out: dict[str, float] = {"n_cells": n}
    for col, name in (("sabgal_positive", "sabgal_positive"), ("enlarged", "enlarged"),
                      ("senescent", "senescent")):
        k = int(cells[col].sum()) if n else 0
        out[f"n_{name}"] = k
        out[f"fraction_{name}"] = k / n if n else float("nan")
    return out
