"""The run report: one self-contained HTML file, ``DIR/report.html``.

``sabgal report DIR`` (also run at the end of ``sabgal run``) reads a results
folder -- ``images``, ``cells`` and ``wells`` tables (CSV or Parquet),
``run.json`` and the QC overlays in ``qc/`` -- and writes one HTML file with
every figure embedded as a base64 PNG, so that it opens offline and can be
mailed to a colleague. Sections:

``summary``        headline numbers of the run.
``plates``         plate heat-maps (6 to 1536 wells) of the fraction SA-β-gal
                   positive, fraction senescent, cell count and QC failures;
                   without plate metadata, a per-image bar chart or strip.
``conditions``     fraction positive / senescent per condition with 95 % Wilson
                   intervals and the wells as points; dose-response curves
                   when the plate map gives doses.
``distributions``  per-cell X-gal score and cell area, controls vs samples,
                   with the thresholds drawn in.
``qc``             QC verdicts: reasons, flagged images with thumbnails of their
                   overlays, example overlays, failed images, the metrics table.
``provenance``     version, command, timings, thresholds, config, inputs.
``methods``        a methods paragraph with references, ready to paste.

Figures use matplotlib's object-oriented API with the Agg canvas (pyplot and
the global backend are never touched).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import importlib.util
import io as _bytesio
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "REPORT_SECTIONS",
    "RunTables",
    "read_run",
    "build_report",
    "write_report",
    "plate_shape",
    "well_position",
    "methods_text",
    "report_after_run",
    "REFERENCES",
]

REPORT_SECTIONS = ("summary", "plates", "conditions", "distributions", "qc", "provenance", "methods")

#: wells -> (rows, columns) of the standard plate formats
PLATE_FORMATS = {6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8), 96: (8, 12), 384: (16, 24), 1536: (32, 48)}
#: formats chosen automatically (a few wells of a 96-well plate look like a 6-well plate)
AUTO_FORMATS = (96, 384, 1536)

_CELL_COLUMNS = ("image", "xgal_od_perinuclear_p60", "xgal_od_core_p60", "xgal_od_p90", "xgal_od_mean", "area_px", "area_um2", "sabgal_positive",
                 "enlarged", "senescent", "touches_border")
_ROLE_GROUPS = (("negative_control", "negative controls", "#1f77b4"),
                ("positive_control", "positive controls", "#d62728"),
                ("sample", "samples", "#333333"))

#: key -> full reference (text of the methods' reference list)
REFERENCES: dict[str, str] = {
    "dimri1995": "Dimri GP, Lee X, Basile G, Acosta M, Scott G, Roskelley C, Medrano EE, Linskens M, "
                 "Rubelj I, Pereira-Smith O, Peacocke M, Campisi J. A biomarker that identifies senescent "
                 "human cells in culture and in aging skin in vivo. Proc Natl Acad Sci USA "
                 "1995;92(20):9363-9367. doi:10.1073/pnas.92.20.9363",
    "debacq2009": "Debacq-Chainiaux F, Erusalimsky JD, Campisi J, Toussaint O. Protocols to detect "
                  "senescence-associated beta-galactosidase (SA-βgal) activity, a biomarker of senescent "
                  "cells in culture and in vivo. Nat Protoc 2009;4(12):1798-1806. doi:10.1038/nprot.2009.191",
    "ruifrok2001": "Ruifrok AC, Johnston DA. Quantification of histochemical staining by color "
                   "deconvolution. Anal Quant Cytol Histol 2001;23(4):291-299.",
    "singh2014": "Singh S, Bray MA, Jones TR, Carpenter AE. Pipeline for illumination correction of "
                 "images for high-throughput microscopy. J Microsc 2014;256(3):231-236. doi:10.1111/jmi.12178",
    "otsu1979": "Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man "
                "Cybern 1979;9(1):62-66. doi:10.1109/TSMC.1979.4310076",
    "vincent1991": "Vincent L, Soille P. Watersheds in digital spaces: an efficient algorithm based on "
                   "immersion simulations. IEEE Trans Pattern Anal Mach Intell 1991;13(6):583-598. "
                   "doi:10.1109/34.87344",
    "jones2005": "Jones TR, Carpenter AE, Golland P. Voronoi-based segmentation of cells on image "
                 "manifolds. In: Computer Vision for Biomedical Image Applications (CVBIA 2005). Lecture "
                 "Notes in Computer Science, vol. 3765. Springer; 2005:535-543.",
    "dempster1977": "Dempster AP, Laird NM, Rubin DB. Maximum likelihood from incomplete data via the EM "
                    "algorithm. J R Stat Soc Series B 1977;39(1):1-38.",
    "ashman1994": "Ashman KM, Bird CM, Zepf SE. Detecting bimodality in astronomical datasets. Astron J "
                  "1994;108(6):2348-2361.",
    "wilson1927": "Wilson EB. Probable inference, the law of succession, and statistical inference. "
                  "J Am Stat Assoc 1927;22(158):209-212. doi:10.1080/01621459.1927.10502953",
    "brown2001": "Brown LD, Cai TT, DasGupta A. Interval estimation for a binomial proportion. Stat Sci "
                 "2001;16(2):101-133. doi:10.1214/ss/1009213286",
    "vanderwalt2014": "van der Walt S, Schönberger JL, Nunez-Iglesias J, Boulogne F, Warner JD, Yager N, "
                      "Gouillart E, Yu T, and the scikit-image contributors. scikit-image: image "
                      "processing in Python. PeerJ 2014;2:e453. doi:10.7717/peerj.453",
    "neri2024": "Neri F, Takajjart SN, Lerner CA, Desprez PY, Schilling B, Campisi J, Gerencser AA. A "
                "Fully-Automated Senescence Test (FAST) for the high-throughput quantification of "
                "senescence-associated markers. GeroScience 2024;46(5):4185-4202. "
                "doi:10.1007/s11357-024-01167-3",
}

#: key -> in-text citation
CITATIONS: dict[str, str] = {
    "dimri1995": "Dimri et al. 1995",
    "debacq2009": "Debacq-Chainiaux et al. 2009",
    "ruifrok2001": "Ruifrok & Johnston 2001",
    "singh2014": "Singh et al. 2014",
    "otsu1979": "Otsu 1979",
    "vincent1991": "Vincent & Soille 1991",
    "jones2005": "Jones et al. 2005",
    "dempster1977": "Dempster et al. 1977",
    "ashman1994": "Ashman et al. 1994",
    "wilson1927": "Wilson 1927",
    "brown2001": "Brown et al. 2001",
    "vanderwalt2014": "van der Walt et al. 2014",
    "neri2024": "Neri et al. 2024",
}


# --------------------------------------------------------------------------- data
@dataclass
class RunTables:
    """What a report is built from (see :func:`read_run`)."""

    images: pd.DataFrame
    cells: pd.DataFrame | None = None
    wells: pd.DataFrame | None = None
    run: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def _read_table(out: Path, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    pq, csv = out / f"{name}.parquet", out / f"{name}.csv"
    if pq.exists():
        try:
            import pyarrow.parquet as papq

            have = set(papq.read_schema(pq).names)
            cols = [c for c in columns if c in have] if columns else None
            return pd.read_parquet(pq, columns=cols)
        except ImportError:
            pass
    if not csv.exists():
        return None
    try:
        if not columns:
            return pd.read_csv(csv)
        # big per-cell tables: only the columns needed, with pyarrow's parser when it is there
        header = pd.read_csv(csv, nrows=0).columns
        engine = "pyarrow" if importlib.util.find_spec("pyarrow") else "c"
        return pd.read_csv(csv, usecols=[c for c in header if c in set(columns)], engine=engine)
    except pd.errors.EmptyDataError:
        return None


def read_run(out_dir: str | os.PathLike[str]) -> RunTables:
    """Read a results folder written by ``sabgal run``.

    Raises
    ------
    FileNotFoundError
        When the folder has no ``images`` table (not a sabgal results folder).
    ValueError
        When ``run.json`` is not valid JSON.
    """
    out = Path(out_dir)
    images = _read_table(out, "images")
    if images is None:
        raise FileNotFoundError(f"{out}: no images.csv or images.parquet (is this a sabgal results folder?)")
    cells = _read_table(out, "cells", _CELL_COLUMNS)
    wells = _read_table(out, "wells")
    run: dict[str, Any] = {}
    if (out / "run.json").exists():
        try:
            run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{out / 'run.json'}: not valid JSON: {exc}") from None
    return RunTables(images=images, cells=cells, wells=wells, run=run, out_dir=out)


# --------------------------------------------------------------------------- plate geometry
_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})0*(\d{1,2})\s*$")


def well_position(well: Any) -> tuple[int, int] | None:
    """0-based (row, column) of a well name; None when it is not one.

    >>> well_position("B07"), well_position("AF48"), well_position("x")
    ((1, 6), (31, 47), None)
    """
    m = _WELL_RE.match(str(well)) if isinstance(well, str) else None
    if not m:
        return None
    letters = m.group(1).upper()
    row = ord(letters[-1]) - 65 + (26 if len(letters) == 2 else 0)
    return row, int(m.group(2)) - 1


def plate_shape(positions: Sequence[tuple[int, int]], *, wells: int | None = None) -> tuple[int, int]:
    """(rows, columns) of the plate holding every 0-based (row, col) position.

    ``wells`` fixes the format (a key of :data:`PLATE_FORMATS`) unless a
    position does not fit; otherwise the smallest of 96, 384 and 1536 is used.

    >>> plate_shape([(0, 0), (7, 11)]), plate_shape([(8, 0)]), plate_shape([(1, 2)], wells=6)
    ((8, 12), (16, 24), (2, 3))
    """
    r = max((p[0] for p in positions), default=0) + 1
    c = max((p[1] for p in positions), default=0) + 1
    if wells is not None:
        if wells not in PLATE_FORMATS:
            raise ValueError(f"plate format must be one of {sorted(PLATE_FORMATS)} wells, got {wells}")
        rows, cols = PLATE_FORMATS[wells]
        if r <= rows and c <= cols:
            return rows, cols
    for n in AUTO_FORMATS:
        rows, cols = PLATE_FORMATS[n]
        if r <= rows and c <= cols:
            return rows, cols
    return r, c


def _row_name(i: int) -> str:
    return chr(65 + i) if i < 26 else "A" + chr(65 + i - 26)


# --------------------------------------------------------------------------- aggregation
_TEXT_COLUMNS = ("image", "plate", "well", "row", "condition", "role", "status", "error", "qc_reasons", "setup",
                 "counterstain", "positive_threshold_source", "enlarged_threshold_source", "warnings")


def _normalise(images: pd.DataFrame) -> pd.DataFrame:
    """Text columns as str with "" for missing (CSV reads an empty column as float NaN)."""
    out = images.copy()
    for c in _TEXT_COLUMNS:
        if c in out:
            col = out[c].astype(object)
            out[c] = col.where(col.notna(), "").astype(str)
    return out


def _has(table: pd.DataFrame | None, column: str) -> bool:
    return table is not None and column in table and table[column].notna().any() and \
        (table[column].astype(str).str.strip() != "").any()


def _qc_pass(images: pd.DataFrame) -> pd.Series:
    if "qc_pass" in images:
        v = images["qc_pass"]
        if v.dtype != bool:
            v = v.astype(str).str.lower().isin(["true", "1"])
        return v & (images.get("status", "ok") == "ok")
    return images.get("status", pd.Series("ok", index=images.index)) == "ok"


def _per_well(tables: RunTables) -> pd.DataFrame:
    """Per (plate, well): pooled counts and Wilson intervals, QC failures, plate-map columns."""
    from sabgal.summaries import wilson_interval

    images = tables.images
    imgs = images[images["well"].notna() & (images["well"].astype(str).str.strip() != "")].copy()
    if "plate" not in imgs:
        imgs["plate"] = ""
    ok = imgs["status"] == "ok"
    imgs["_fail"] = ~_qc_pass(imgs)
    counts = imgs[["n_cells", "n_sabgal_positive", "n_senescent"]].where(ok, 0).fillna(0).astype(np.int64)
    counts["_fail"] = imgs["_fail"].astype(np.int64)
    counts["_n"] = 1
    keys = [imgs["plate"], imgs["well"].astype(str)]
    agg = counts.groupby(keys, sort=False).sum()
    agg.index.names = ["plate", "well"]
    agg = agg.reset_index()
    meta_cols = [c for c in ("condition", "dose", "role") if c in imgs]
    if meta_cols:
        first = imgs.groupby(keys, sort=False)[meta_cols].first().reset_index(drop=True)
        agg = pd.concat([agg, first], axis=1)
    n = agg["n_cells"].to_numpy()
    for call in ("sabgal_positive", "senescent"):
        k = agg[f"n_{call}"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            agg[f"fraction_{call}"] = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        lo, hi = wilson_interval(k, n)
        agg[f"ci_low_{call}"], agg[f"ci_high_{call}"] = lo, hi
    agg = agg.rename(columns={"_fail": "n_qc_failed", "_n": "n_images"})
    pos = [well_position(w) for w in agg["well"]]
    agg["_row"] = [p[0] if p else -1 for p in pos]
    agg["_col"] = [p[1] if p else -1 for p in pos]
    return agg[agg["_row"] >= 0].reset_index(drop=True)


# --------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig


def _png(fig: Any, *, dpi: int = 100) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _heat_panel(ax: Any, grid: np.ndarray, *, title: str, cmap: str, vmin: float, vmax: float,
                fmt: Any, roles: np.ndarray | None, annotate: bool, cbar_label: str, fig: Any) -> None:
    import matplotlib as mpl

    rows, cols = grid.shape
    cm = mpl.colormaps[cmap].with_extremes(bad="#e8e8e8")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=vmin, vmax=vmax, aspect="equal",
                   interpolation="nearest")
    ax.set_title(title, fontsize=10, loc="left")
    step_c = 1 if cols <= 12 else 2 if cols <= 24 else 4
    step_r = 1 if rows <= 16 else 2
    ax.set_xticks(np.arange(0, cols, step_c), [str(c + 1) for c in range(0, cols, step_c)],
                  fontsize=7 if cols <= 12 else 6)
    ax.set_yticks(np.arange(0, rows, step_r), [_row_name(r) for r in range(0, rows, step_r)],
                  fontsize=7 if rows <= 8 else 6)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if roles is not None:
        from matplotlib.patches import Rectangle

        for (r, c), role in np.ndenumerate(roles):
            if role in ("negative_control", "positive_control"):
                ax.add_patch(Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, linewidth=1.3,
                                       edgecolor="white" if role == "negative_control" else "black",
                                       linestyle="-" if role == "negative_control" else "--"))
    if annotate:
        norm = mpl.colors.Normalize(vmin, vmax)
        for (r, c), v in np.ndenumerate(grid):
            text = fmt(v) if np.isfinite(v) else ""
            if text:
                rgba = cm(norm(v))
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                ax.text(c, r, text, ha="center", va="center", fontsize=6.5 if cols <= 12 else 5,
                        color="black" if lum > 0.55 else "white")
    cb = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.015, shrink=0.9)
    if cbar_label:
        cb.set_label(cbar_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)


def _nice_max(v: float, floor: float) -> float:
    if not np.isfinite(v) or v <= floor:
        return floor
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * mag >= v:
            return m * mag
    return v


def fig_plate(wells: pd.DataFrame, plate: str, *, plate_wells: int | None = None) -> str:
    """Four heat-maps of one plate (fractions, cell count, QC failures) as base64 PNG."""
    w = wells[wells["plate"] == plate]
    rows, cols = plate_shape(list(zip(w["_row"], w["_col"])), wells=plate_wells)
    big = rows * cols > 96

    def grid(col: str) -> np.ndarray:
        g = np.full((rows, cols), np.nan)
        g[w["_row"].to_numpy(), w["_col"].to_numpy()] = w[col].to_numpy(dtype=float)
        return g

    roles = None
    if "role" in w:
        roles = np.full((rows, cols), "", dtype=object)
        roles[w["_row"].to_numpy(), w["_col"].to_numpy()] = w["role"].astype(str).to_numpy()
    fp, fs, nc = 100 * grid("fraction_sabgal_positive"), 100 * grid("fraction_senescent"), grid("n_cells")
    nq = grid("n_qc_failed")
    panel_w = 6.2 if big else 5.4
    height = 2 * 0.78 * panel_w * rows / cols + 1.1
    fig = _figure(2 * panel_w, height)
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.025, right=0.975, top=1 - 0.45 / height, bottom=0.1 / height, wspace=0.16,
                        hspace=0.55 / (height / 2))
    fmax = _nice_max(float(np.nanmax(fp)) if np.isfinite(fp).any() else 0, 10)
    smax = _nice_max(float(np.nanmax(fs)) if np.isfinite(fs).any() else 0, 10)
    pct = (lambda v: f"{v:.0f}")
    _heat_panel(axes[0, 0], fp, title="SA-β-gal positive (% of cells)", cmap="viridis", vmin=0,
                vmax=fmax, fmt=pct, roles=roles, annotate=not big, cbar_label="", fig=fig)
    _heat_panel(axes[0, 1], fs, title="senescent (% of cells)", cmap="magma", vmin=0, vmax=smax,
                fmt=pct, roles=roles, annotate=not big, cbar_label="", fig=fig)
    cmax = _nice_max(float(np.nanmax(nc)) if np.isfinite(nc).any() else 0, 10)
    _heat_panel(axes[1, 0], nc, title="cells per well", cmap="cividis", vmin=0, vmax=cmax,
                fmt=lambda v: f"{v:.0f}", roles=roles, annotate=not big, cbar_label="", fig=fig)
    qmax = max(1.0, float(np.nanmax(grid("n_images"))) if len(w) else 1.0)
    _heat_panel(axes[1, 1], nq, title="images failing QC (per well)", cmap="Reds", vmin=0, vmax=qmax,
                fmt=lambda v: f"{v:.0f}" if v else "", roles=roles, annotate=True,
                cbar_label="", fig=fig)
    return _png(fig)


def fig_images(images: pd.DataFrame) -> str:
    """Per-image fractions when there is no plate layout: bars (<= 48 images) or a strip grid."""
    n = len(images)
    fp = images["fraction_sabgal_positive"].to_numpy(dtype=float)
    fs = images["fraction_senescent"].to_numpy(dtype=float)
    nc = images["n_cells"].fillna(0).to_numpy(dtype=float)
    fail = ~_qc_pass(images).to_numpy()
    names = images["image"].astype(str).tolist()
    if n <= 48:
        height = 1.2 + 0.28 * n
        fig = _figure(11, height)
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
        longest = max((len(s) for s in names), default=10)
        fig.subplots_adjust(left=min(0.45, (0.3 + 0.065 * longest) / 11), right=0.98, top=1 - 0.35 / height,
                            bottom=0.75 / height, wspace=0.05)
        y = np.arange(n)
        ax1.barh(y - 0.2, np.nan_to_num(fp), height=0.4, color="#2a788e", label="SA-β-gal positive")
        ax1.barh(y + 0.2, np.nan_to_num(fs), height=0.4, color="#b73779", label="senescent")
        ax1.set_yticks(y, [("⚠ " if f else "") + s for s, f in zip(names, fail)], fontsize=7)
        for lab, f in zip(ax1.get_yticklabels(), fail):
            if f:
                lab.set_color("#c00000")
        ax1.invert_yaxis()
        ax1.set_xlim(0, 1)
        ax1.set_xlabel("fraction of cells")
        ax1.legend(fontsize=8, loc="lower right")
        ax1.grid(axis="x", alpha=0.3)
        ax2.barh(y, nc, color=np.where(fail, "#d62728", "#888888"))
        ax2.set_xlabel("cells")
        ax2.grid(axis="x", alpha=0.3)
        return _png(fig)
    cols = 24
    rows = int(math.ceil(n / cols))
    def grid(v: np.ndarray) -> np.ndarray:
        g = np.full(rows * cols, np.nan)
        g[:n] = v
        return g.reshape(rows, cols)
    fig = _figure(13, 1.4 + 2 * (6.2 * rows / cols + 0.2))
    axes = fig.subplots(2, 2)
    fig.subplots_adjust(left=0.04, right=0.97, top=0.9, bottom=0.03, wspace=0.12, hspace=0.35)
    for ax, v, t, cm, vmax in ((axes[0, 0], fp, "SA-β-gal positive", "viridis", 1),
                               (axes[0, 1], fs, "senescent", "magma", 1),
                               (axes[1, 0], nc, "cells per image", "cividis",
                                _nice_max(float(np.nanmax(nc)) if n else 0, 10)),
                               (axes[1, 1], fail.astype(float), "failing QC", "Reds", 1)):
        _heat_panel(ax, grid(v), title=f"{t} (images in name order, {cols} per row)", cmap=cm, vmin=0,
                    vmax=vmax, fmt=str, roles=None, annotate=False, cbar_label="", fig=fig)
        ax.set_yticks(np.arange(rows), [str(r * cols + 1) for r in range(rows)], fontsize=6)
    return _png(fig)


def _group_label(cond: Any, dose: Any, with_dose: bool) -> str:
    c = "" if cond is None or (isinstance(cond, float) and np.isnan(cond)) else str(cond)
    if with_dose and dose is not None and np.isfinite(float(dose)):
        return f"{c} {float(dose):g}".strip()
    return c or "(none)"


def _role_rank(role: Any) -> int:
    return {"negative_control": 0, "sample": 1, "positive_control": 2, "blank": 3}.get(str(role), 1)


def fig_conditions(wells: pd.DataFrame) -> str:
    """Fraction positive / senescent per condition (x dose): pooled Wilson CI + wells as points."""
    from sabgal.summaries import wilson_interval

    w = wells[wells["n_cells"] > 0].copy()
    with_dose = _has(w, "dose")
    w["dose_num"] = pd.to_numeric(w["dose"], errors="coerce") if "dose" in w else np.nan
    w["_label"] = [_group_label(c, d, with_dose) for c, d in zip(w["condition"], w["dose_num"])]
    w["_rank"] = [_role_rank(r) for r in (w["role"] if "role" in w else [""] * len(w))]
    order = (w.groupby("_label")
             .agg(rank=("_rank", "min"), cond=("condition", "first"), dose=("dose_num", "first"))
             .reset_index().sort_values(["rank", "cond", "dose"], na_position="first"))
    labels = order["_label"].tolist()
    n = len(labels)
    width = min(18.0, 5 + 1.1 * n)
    fig = _figure(width, 4.6)
    axes = fig.subplots(1, 2, sharey=False)
    longest = max((len(x) for x in labels), default=4)
    fig.subplots_adjust(left=0.75 / width, right=0.99, top=0.92,
                        bottom=min(0.5, (0.5 + (0.055 * longest if n > 6 else 0.2)) / 4.6), wspace=0.9 / width * 2)
    rng = np.random.default_rng(0)
    pos = w["_label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    xw = pos + rng.uniform(-0.18, 0.18, len(w))
    role = w["role"].astype(str) if "role" in w else pd.Series("", index=w.index)
    palette = {"negative_control": "#1f77b4", "positive_control": "#d62728"}
    colour_w = [palette.get(r, "#222222") for r in role]
    first_role = dict(zip(w["_label"], role))
    colour_c = [palette.get(first_role.get(lab, ""), "#222222") for lab in labels]
    for ax, call, title in ((axes[0], "sabgal_positive", "SA-β-gal positive"),
                            (axes[1], "senescent", "senescent")):
        # wells: points with their own Wilson interval (one vectorised call each, not one per well)
        ax.vlines(xw, w[f"ci_low_{call}"], w[f"ci_high_{call}"], colors=colour_w, alpha=0.35, linewidth=0.6,
                  zorder=2)
        ax.scatter(xw, w[f"fraction_{call}"], s=12, c=colour_w, alpha=0.55, linewidths=0, zorder=2)
        # conditions: cells pooled over the wells, Wilson interval
        pooled = w.groupby("_label")[[f"n_{call}", "n_cells"]].sum().reindex(labels)
        k, nn = pooled[f"n_{call}"].to_numpy(), pooled["n_cells"].to_numpy()
        lo, hi = wilson_interval(k, nn)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(nn > 0, k / np.maximum(nn, 1), np.nan)
        xc = np.arange(n) + 0.32
        ax.vlines(xc, lo, hi, colors=colour_c, linewidth=2, zorder=3)
        ax.hlines(np.r_[lo, hi], np.r_[xc, xc] - 0.1, np.r_[xc, xc] + 0.1, colors=colour_c * 2, linewidth=1.5,
                  zorder=3)
        ax.scatter(xc, p, s=38, marker="D", facecolors="white", edgecolors=colour_c, linewidths=1.6, zorder=4)
        ax.set_xticks(np.arange(n), labels, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center",
                      fontsize=8)
        ax.set_xlim(-0.6, n - 0.3)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"fraction {title}")
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def fig_dose_response(wells: pd.DataFrame) -> str | None:
    """Fraction positive vs dose per condition (conditions with >= 2 doses); None when none has."""
    from sabgal.summaries import wilson_interval

    w = wells[wells["n_cells"] > 0].copy()
    w["dose_num"] = pd.to_numeric(w["dose"], errors="coerce")
    role = w["role"].astype(str) if "role" in w else pd.Series("sample", index=w.index)
    treated = w[w["dose_num"].notna() & ~role.isin(["negative_control", "blank"])]
    conds = [c for c, g in treated.groupby("condition") if g["dose_num"].nunique() >= 2]
    if not conds:
        return None
    conds = conds[:12]
    ctrl = w[role == "negative_control"]
    positive = treated["dose_num"][treated["dose_num"] > 0]
    logx = len(positive) > 0 and positive.max() / positive.min() >= 10
    zero_at = positive.min() / 3 if logx else 0.0
    ncol = min(3, len(conds))
    nrow = int(math.ceil(len(conds) / ncol))
    fig = _figure(4.4 * ncol + 0.3, 3.4 * nrow + 0.2)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    fig.subplots_adjust(left=0.75 / (4.4 * ncol), right=0.98, top=1 - 0.35 / (3.4 * nrow),
                        bottom=0.6 / (3.4 * nrow), wspace=0.3, hspace=0.45)
    for ax, cond in zip(axes, conds):
        g = treated[treated["condition"] == cond]
        for call, colour, name in (("sabgal_positive", "#2a788e", "SA-β-gal+"),
                                   ("senescent", "#b73779", "senescent")):
            pooled = g.groupby("dose_num")[[f"n_{call}", "n_cells"]].sum().sort_index()
            lo, hi = wilson_interval(pooled[f"n_{call}"], pooled["n_cells"])
            p = pooled[f"n_{call}"] / pooled["n_cells"]
            x = np.where(pooled.index > 0, pooled.index, zero_at) if logx else pooled.index.to_numpy()
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
            ax.plot(x, p, "-o", color=colour, ms=4, label=name)
            xw = np.where(g["dose_num"] > 0, g["dose_num"], zero_at) if logx else g["dose_num"]
            ax.plot(xw, g[f"fraction_{call}"], ".", color=colour, alpha=0.5, ms=5)
        if len(ctrl) and int(ctrl["n_cells"].sum()):
            k, nn = int(ctrl["n_sabgal_positive"].sum()), int(ctrl["n_cells"].sum())
            clo, chi = wilson_interval([k], [nn])
            ax.axhspan(clo[0], chi[0], color="#888888", alpha=0.15, linewidth=0)
            ax.axhline(k / nn, color="#555555", lw=1, ls="--", label="negative control (SA-β-gal+)")
        if logx:
            ax.set_xscale("log")
        ax.set_title(str(cond), fontsize=10, loc="left")
        ax.set_xlabel("dose")
        ax.set_ylabel("fraction of cells")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(conds):]:
        ax.set_visible(False)
    return _png(fig)


def _cell_groups(tables: RunTables) -> list[tuple[str, str, pd.DataFrame]]:
    cells = tables.cells
    if cells is None or len(cells) == 0:
        return []
    images = tables.images
    if _has(images, "role"):
        role = cells["image"].map(images.drop_duplicates("image").set_index("image")["role"])
        role = role.astype(object).where(role.notna(), "sample").astype(str).replace({"": "sample"})
        groups = []
        for key, name, colour in _ROLE_GROUPS:
            sel = cells[role == key] if key != "sample" else cells[~role.isin(
                ["negative_control", "positive_control", "blank"])]
            if len(sel) >= 10:
                groups.append((f"{name} (n = {len(sel):,} cells)", colour, sel))
        if groups:
            return groups
    return [(f"all cells (n = {len(cells):,})", "#333333", cells)]


def _reference_area(cells: pd.DataFrame, images: pd.DataFrame | None = None) -> pd.Series:
    """Per cell: the area its image's enlarged rule multiplies -- the
    ``enlarged_reference_area_px`` the run recorded in images.csv, where it
    did; else (results of an older version) what the run would have
    recorded: :func:`sabgal.classify.reference_area` of the image's cells."""
    from sabgal.classify import reference_area

    recorded = pd.Series(dtype=float)
    if images is not None and "enlarged_reference_area_px" in images:
        recorded = pd.to_numeric(images.set_index("image")["enlarged_reference_area_px"], errors="coerce")
    table = cells if "touches_border" in cells else cells.assign(touches_border=False)
    ref = {image: reference_area(g, g["sabgal_positive"].to_numpy(dtype=bool))
           for image, g in table.groupby("image", sort=False)}
    return cells["image"].map(recorded).fillna(cells["image"].map(ref))


def _NullLocator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _log_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fig_distributions(tables: RunTables) -> str | None:
    """Per-cell X-gal score and cell area histograms by group, thresholds drawn in."""
    groups = _cell_groups(tables)
    if not groups:
        return None
    cells = tables.cells
    th = tables.run.get("thresholds") or {}
    measure = th.get("measure") or ((tables.run.get("config") or {}).get("classify") or {}).get(
        "positive_measure") or "xgal_od_perinuclear_p60"
    if measure not in cells:
        measure = next((m for m in ("xgal_od_perinuclear_p60", "xgal_od_core_p60", "xgal_od_p90") if m in cells),
                       "xgal_od_mean")
    images = tables.images
    thresholds = sorted({round(float(v), 4) for v in pd.to_numeric(
        images.get("positive_threshold_od", pd.Series(dtype=float)), errors="coerce").dropna()})
    if not thresholds and th.get("positive") is not None:
        thresholds = [float(th["positive"])]
    fig = _figure(12, 4.0)
    ax1, ax2 = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.92, bottom=0.14, wspace=0.2)
    # asinh axis: linear near 0 (where the score is quantised and may be slightly negative), log above
    lw = 0.05
    allx = cells[measure].to_numpy(dtype=float)
    allx = allx[np.isfinite(allx)]
    lo = min(0.0, float(np.percentile(allx, 0.1))) if allx.size else 0.0
    hi = max(1.0, float(np.percentile(allx, 99.9))) if allx.size else 1.0
    bins = lw * np.sinh(np.linspace(np.arcsinh(lo / lw), np.arcsinh(hi * 1.05 / lw), 60))
    for name, colour, g in groups:
        x = np.clip(g[measure].to_numpy(dtype=float), bins[0], bins[-1])
        x = x[np.isfinite(x)]
        ax1.hist(x, bins=bins, weights=np.full(x.size, 100.0 / max(x.size, 1)), histtype="step", lw=1.6,
                 color=colour, label=name)
    ax1.set_xscale("asinh", linear_width=lw)
    ax1.set_xlim(bins[0], bins[-1])
    ticks = [t for t in (-0.1, -0.05, 0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5) if bins[0] <= t <= bins[-1]]
    ax1.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax1.xaxis.set_minor_locator(_NullLocator())
    for i, t in enumerate(thresholds[:6]):
        ax1.axvline(t, color="#e6550d", ls="--", lw=1.2, label="positive threshold" if i == 0 else None)
    if len(thresholds) > 1:
        ax1.text(0.99, 0.97, f"{len(thresholds)} thresholds (per plate/image): "
                 f"{min(thresholds):.3f}-{max(thresholds):.3f} OD", transform=ax1.transAxes, ha="right",
                 va="top", fontsize=7, color="#e6550d")
    ax1.set_xlabel(f"{measure} (X-gal OD; linear below {lw:g}, logarithmic above)")
    ax1.set_ylabel("% of the group's cells")
    ax1.set_title("per-cell X-gal score", fontsize=10, loc="left")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)

    fixed = pd.to_numeric(images.get("enlarged_threshold_px", pd.Series(dtype=float)), errors="coerce").dropna()
    ccfg = (tables.run.get("config") or {}).get("classify") or {}
    factor = float(ccfg.get("enlarged_factor", 1.8))
    um2 = ccfg.get("enlarged_threshold_um2")
    if um2 and "area_um2" in cells and cells["area_um2"].notna().all():
        values = [g["area_um2"].to_numpy(dtype=float) for _, _, g in groups]
        lines = [float(um2)]
        xlabel, title = "cell area (µm²)", "per-cell area"
    elif len(fixed):
        values = [g["area_px"].to_numpy(dtype=float) for _, _, g in groups]
        lines = sorted({round(float(v), 1) for v in fixed})
        xlabel, title = "cell area (px)", "per-cell area"
    else:
        ref = _reference_area(cells, images)
        rel = cells["area_px"] / ref
        values = [rel.loc[g.index].to_numpy(dtype=float) for _, _, g in groups]
        lines = [factor]
        xlabel = "cell area / median area of the image's SA-β-gal-negative cells"
        title = "per-cell area, relative to the image's negative cells"
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values]) if values else np.zeros(0)
    if finite.size:
        abins = np.geomspace(max(finite.min(), 1e-3), finite.max() * 1.05, 70)
        for (name, colour, _), v in zip(groups, values):
            v = v[np.isfinite(v) & (v > 0)]
            ax2.hist(v, bins=abins, weights=np.full(v.size, 100.0 / max(v.size, 1)), histtype="step", lw=1.6,
                     color=colour, label=name)
        _log_axis(ax2)
    for i, t in enumerate(lines[:6]):
        ax2.axvline(t, color="#7b3294", ls="--", lw=1.2, label="enlarged threshold" if i == 0 else None)
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("% of the group's cells")
    ax2.set_title(title, fontsize=10, loc="left")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- thumbnails
def _thumbnail(png: Path, width: int = 360) -> str | None:
    from PIL import Image

    try:
        with Image.open(png) as im:
            im = im.convert("RGB")
            f = max(1, im.width // width)
            if f > 1:
                im = im.reduce(f)
            if im.width > width:
                im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.BILINEAR)
            buf = _bytesio.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except (OSError, ValueError):
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _overlay_key(image: str) -> str:
    """The overlay file stem of an image: :func:`sabgal.batch.image_key`'s rule, without importing
    the batch machinery (scipy and friends), which would double ``sabgal report``'s start-up."""
    stem = image.rsplit(".", 1)[0] if "." in image.rsplit("/", 1)[-1] else image
    return stem.replace("/", "__").replace("\\", "__")


def _thumbnails(out_dir: Path | None, images: Sequence[str], *, workers: int = 4) -> dict[str, str]:
    if out_dir is None or not images:
        return {}
    paths = {im: out_dir / "qc" / f"{_overlay_key(im)}.png" for im in images}
    paths = {im: p for im, p in paths.items() if p.exists()}
    if not paths:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        done = dict(zip(paths, ex.map(_thumbnail, paths.values())))
    return {k: v for k, v in done.items() if v}


# --------------------------------------------------------------------------- HTML pieces
_CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --accent:#2a788e; --bad:#c00000; --good:#00703c; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--fg); margin: 0; background: #fafafa; line-height: 1.45; font-size: 14px; }
header { background: #16324f; color: white; padding: 18px 32px 14px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: #c9d6e3; font-size: 13px; }
nav { position: sticky; top: 0; background: white; border-bottom: 1px solid var(--line); padding: 8px 32px;
      z-index: 5; font-size: 13px; }
nav a { margin-right: 18px; color: var(--accent); text-decoration: none; font-weight: 600; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: white; border: 1px solid var(--line); border-radius: 6px; padding: 14px 22px 18px;
          margin: 18px 0; }
h2 { font-size: 18px; margin: 4px 0 10px; border-bottom: 2px solid var(--accent); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
figure { margin: 8px 0 14px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 150px; background: #fcfcfc; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; position: sticky; top: 38px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfbfb; }
.bad { color: var(--bad); font-weight: 600; } .good { color: var(--good); font-weight: 600; }
.thumbs { display: flex; flex-wrap: wrap; gap: 14px; }
.thumb { width: 372px; border: 1px solid var(--line); border-radius: 4px; padding: 5px; background: #fff; }
.thumb img { width: 360px; height: auto; display: block; }
.thumb .cap { font-size: 11.5px; margin-top: 4px; word-wrap: break-word; }
pre { background: #f6f8fa; border: 1px solid #eee; padding: 10px; overflow-x: auto; font-size: 12px; }
.methods { background: #fffef5; border: 1px solid #eadf9c; padding: 12px 16px; border-radius: 4px; }
.methods p { margin: 0 0 10px; }
.note { color: var(--muted); font-size: 12.5px; }
details summary { cursor: pointer; color: var(--accent); font-weight: 600; margin: 6px 0; }
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return ""
        if float(v).is_integer() and abs(v) < 1e9:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    return str(v)


def _table(df: pd.DataFrame, *, max_rows: int | None = None, raw: Sequence[str] = ()) -> str:
    if max_rows is not None and len(df) > max_rows:
        df = df.iloc[:max_rows]
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row):
            if c in raw:
                cells.append(f"<td>{v}</td>")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                cells.append(f'<td class="num">{_esc(_fmt(v))}</td>')
            else:
                cells.append(f"<td>{_esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(b64: str | None, caption: str, alt: str) -> str:
    if not b64:
        return ""
    return (f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %" if v is not None and np.isfinite(v) else "–"


# --------------------------------------------------------------------------- methods
def _toml_value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _config_toml(config: dict[str, Any]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for k, v in (values or {}).items():
            lines.append(f"# {k} (unset)" if v is None else f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def methods_text(run: dict[str, Any], images: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Paste-ready methods paragraphs and the references they cite.

    Built from the config and thresholds recorded in ``run.json`` and the
    set-ups decided per image in ``images.csv``.

    Returns
    -------
    paragraphs : list of str
        Plain text (no HTML).
    references : list of str
        Full references, in order of first citation.
    """
    cfg = run.get("config") or {}
    ill, st, seg = cfg.get("illumination") or {}, cfg.get("stains") or {}, cfg.get("segment") or {}
    cl, qc = cfg.get("classify") or {}, cfg.get("qc") or {}
    cited: list[str] = []

    def cite(*keys: str) -> str:
        for k in keys:
            if k not in cited:
                cited.append(k)
        return "(" + "; ".join(CITATIONS[k] for k in keys) + ")"

    version = run.get("sabgal_version", "unknown")
    ok = images[images["status"] == "ok"] if "status" in images else images
    setups = ok["setup"].value_counts().to_dict() if "setup" in ok else {}
    how = {"counterstain": "with a nuclear counterstain", "brightfield": "in plain brightfield",
           "fluorescence": "with a paired nuclear fluorescence image"}
    setup_txt = ", ".join(f"{v} {how.get(str(k), str(k))}" for k, v in setups.items() if str(k))
    counter = sorted({str(c) for c in ok.get("counterstain", pd.Series(dtype=str)).dropna()
                      if str(c) not in ("", "none", "nan")})
    p = []
    p.append(
        f"SA-β-gal staining {cite('dimri1995', 'debacq2009')} was quantified with sabgal {version}. "
        f"Of {len(images)} image{'s' if len(images) != 1 else ''}, {len(ok)} "
        f"{'were' if len(ok) != 1 else 'was'} analysed" + (f" ({setup_txt})." if setup_txt else "."))
    method = ill.get("method", "auto")
    if method == "auto":
        ill_txt = (f"the incident light was estimated from each image's own background: robust white "
                   f"levels of background tiles ({ill.get('block_px', 48)} px) were fitted per colour channel "
                   f"with a smooth polynomial surface of degree {ill.get('polynomial_degree', 2)} "
                   f"{cite('singh2014')}")
    elif method == "flat_field":
        ill_txt = f"each image was divided by a blank flat-field image of the same set-up {cite('singh2014')}"
    else:
        ill_txt = "a single white level per colour channel was taken from the brightest plausible pixels"
    vec = st.get("xgal_vector", [0.722, 0.557, 0.411])
    p.append(
        f"For illumination correction, {ill_txt}. Intensities were converted to optical density "
        f"(OD = −log10 I/I0) and separated into X-gal"
        f"{', counterstain (' + ', '.join(c.replace('_', ' ') for c in counter) + ')' if counter else ''} "
        f"and residual components by colour deconvolution {cite('ruifrok2001')}, with the X-gal reference "
        f"vector (R, G, B OD) = ({', '.join(f'{float(v):.3f}' for v in vec)})"
        + (f", refined per image from its stained pixels within {st.get('max_xgal_angle_deg', 25):g}° of the "
           f"reference" if st.get("estimate_xgal", True) else "") + ".")
    diam = seg.get("nucleus_diameter_px", 0) or 0
    p.append(
        "Nuclei were segmented from the nuclear fluorescence image when one was paired with the field, from "
        "the counterstain channel otherwise, or from the cells' own density in unstained brightfield "
        f"images, by Otsu thresholding {cite('otsu1979')} of the smoothed nuclear map and distance-transform "
        f"watershed splitting of touching nuclei {cite('vincent1991')}; the typical nucleus diameter was "
        + (f"fixed at {float(diam):g} px" if diam else "estimated from each image")
        + ". Cell territories were grown from the nuclei by a seeded watershed restricted to the cell "
        f"foreground {cite('jones2005')}, reaching at most {seg.get('max_cell_radius_nuclei', 8):g} nucleus "
        f"diameters. Image processing used scikit-image {cite('vanderwalt2014')}.")
    measure = cl.get("positive_measure", "xgal_od_perinuclear_p60")
    mtxt = {"xgal_od_perinuclear_p60": "the 60th percentile of X-gal OD over a band half a nucleus diameter "
                                       "wide around the cell's nucleus (with a nuclear stain; over the core "
                                       "cytoplasm in plain brightfield or for a cell without a nucleus)",
            "xgal_od_core_p60": "the 60th percentile of X-gal OD over the cell's core cytoplasm (the cell "
                                "less its nucleus and a rim along its edge)",
            "xgal_od_p90": "the 90th percentile of X-gal OD over the cell's core cytoplasm",
            }.get(measure, "the mean X-gal OD inside the cell")
    th = run.get("thresholds") or {}
    values = pd.to_numeric(images.get("positive_threshold_od", pd.Series(dtype=float)), errors="coerce").dropna()
    sources = sorted({str(s) for s in images.get("positive_threshold_source", pd.Series(dtype=str)).dropna()})
    if len(values) and values.nunique() > 1:
        th_txt = f"between {values.min():.3f} and {values.max():.3f} OD (per plate or image)"
    elif len(values):
        th_txt = f"{values.iloc[0]:.3f} OD"
    elif th.get("positive") is not None:
        th_txt = f"{float(th['positive']):.3f} OD"
    else:
        th_txt = "(not recorded)"
    src_txt = []
    per_image = "learnt per image" in sources
    # (where images anchored their own thresholds, a set threshold served the rest)
    for_rest = " (for images without an unstained population of their own)" if per_image else ""
    if "config" in sources:
        src_txt.append("set in the configuration")
    if per_image:
        src_txt.append(
            "learnt per image, anchored just above the image's own unstained cells (the lowest tight "
            "population of scores: its mode plus 4 robust standard deviations, moved up into a clear gap or "
            "density dip above it where there was one)")
    if "learnt" in sources:
        src_txt.append(
            "learnt from all cells as the crossing point of a two-component Gaussian mixture fitted by "
            f"expectation-maximisation to log10 scores {cite('dempster1977')}, the components being "
            f"well separated (Ashman's D ≥ 2; {CITATIONS['ashman1994']})"
            + for_rest)
        if "ashman1994" not in cited:
            cited.append("ashman1994")
    if "learnt (median of images)" in sources:
        src_txt.append("the median of the images' anchored thresholds" + for_rest)
    if "default" in sources:
        src_txt.append(f"the default of {float(cl.get('default_positive_threshold', 0.15)):g} OD where the "
                       "cells showed no two populations")
    if "controls" in sources:
        pct = ((cfg.get("batch") or {}).get("control_percentile", 95))
        src_txt.append(f"the {float(pct):g}th percentile of the negative-control cells of the plate "
                       f"{cite('neri2024')}")
    floor = cl.get("min_positive_threshold")
    if floor and per_image:
        # an anchored threshold may go down to a fraction of the floor (classify.negative_anchored_threshold)
        from sabgal.classify import GAP_FLOOR_FRACTION

        floor_txt = (f", and never below {float(floor) * GAP_FLOOR_FRACTION:g} OD (below {float(floor):g} OD only where an image "
                     "showed its faint positives as a population apart from its unstained cells)")
    else:
        floor_txt = f", and never below {float(floor):g} OD" if floor else ""
    rule = cl.get("senescent_rule", "positive_and_enlarged")
    rule_txt = {"positive_and_enlarged": "both SA-β-gal positive and enlarged",
                "positive": "SA-β-gal positive (regardless of size)",
                "positive_or_enlarged": "SA-β-gal positive or enlarged"}.get(rule, rule)
    factor = float(cl.get("enlarged_factor", 1.8))
    enl_src = {str(x) for x in images.get("enlarged_threshold_source", pd.Series(dtype=str)) if str(x)}
    enl_px = pd.to_numeric(images.get("enlarged_threshold_px", pd.Series(dtype=float)), errors="coerce").dropna()
    if cl.get("enlarged_threshold_um2"):
        enl = f"larger than {float(cl['enlarged_threshold_um2']):g} µm²"
    elif cl.get("enlarged_threshold_px"):
        enl = f"larger than {float(cl['enlarged_threshold_px']):g} px"
    elif any("control" in x for x in enl_src) and len(enl_px):
        rng_txt = (f"{enl_px.min():.0f}-{enl_px.max():.0f} px" if enl_px.nunique() > 1 else f"{enl_px.iloc[0]:.0f} px")
        enl = (f"larger than {factor:g} times the median area of the negative-control cells of its plate "
               f"({rng_txt})")
    else:
        enl = f"larger than {factor:g} times the median area of the SA-β-gal-negative cells of the same image"
    p.append(
        f"A cell was called SA-β-gal positive when {mtxt} exceeded {th_txt}"
        + (f"; the threshold was {'; '.join(src_txt)}" if src_txt else "")
        + floor_txt + ". "
        f"A cell was called enlarged when it was {enl}, and senescent when it was {rule_txt}. "
        "These calls describe SA-β-gal activity and morphology; they are not by themselves proof of "
        "senescence.")
    p.append(
        "Per well, cell counts were pooled over the well's fields, and fractions are reported with 95 % "
        f"Wilson score confidence intervals {cite('wilson1927', 'brown2001')}; these describe counting "
        "uncertainty within a well only, and comparisons between conditions use wells as the unit of "
        "replication.")
    n_flag = int((~_qc_pass(images)).sum()) if len(images) else 0
    p.append(
        "Image quality was checked automatically: an image was flagged when its sharpness (variance of a "
        "Laplacian of Gaussian relative to cell-scale detail) was below "
        f"{float(qc.get('min_focus_ratio', 0.35)):g} times the plate median, when more than "
        f"{100 * float(qc.get('max_saturated_fraction', 0.05)):g} % of its pixels were clipped, when the "
        f"corrected background varied by more than {float(qc.get('max_background_nonuniformity', 0.08)):g} "
        f"OD, when it held fewer than {int(qc.get('min_cells', 5))} cells or a cell count more than "
        f"{float(qc.get('max_cell_count_ratio', 4)):g}-fold from the plate median, when its X-gal colour "
        f"estimate was more than {float(qc.get('max_stain_angle_deg', 20)):g}° from the reference, or when "
        f"debris covered more than {100 * float(qc.get('max_debris_fraction', 0.05)):g} % of the field. "
        f"{n_flag} of {len(images)} image{'s' if len(images) != 1 else ''} "
        f"{'were' if n_flag != 1 else 'was'} flagged; flagged images were reported, not excluded.")
    refs = [REFERENCES[k] for k in cited]
    return p, refs


# --------------------------------------------------------------------------- assembly
def _summary_section(tables: RunTables) -> str:
    images, run = tables.images, tables.run
    ok = images["status"] == "ok" if "status" in images else pd.Series(True, index=images.index)
    n_cells = int(images.loc[ok, "n_cells"].fillna(0).sum()) if "n_cells" in images else 0

    def pooled(col: str) -> float:
        k = images.loc[ok, col].fillna(0).sum() if col in images else 0
        return float(k) / n_cells if n_cells else float("nan")

    qc_ok = _qc_pass(images)
    cards = [
        ("images", f"{len(images):,}"),
        ("analysed", f"{int(ok.sum()):,}"),
        ("failed", f"{int((~ok).sum()):,}"),
        ("passed QC", f"{int(qc_ok.sum()):,}"),
        ("cells", f"{n_cells:,}"),
        ("SA-β-gal positive", _pct(pooled("n_sabgal_positive"))),
        ("enlarged", _pct(pooled("n_enlarged"))),
        ("senescent", _pct(pooled("n_senescent"))),
    ]
    if _has(images, "plate") or _has(images, "well"):
        cards.insert(1, ("wells", f"{images.drop_duplicates(['plate', 'well']).shape[0]:,}"
                         if "plate" in images else f"{images['well'].nunique():,}"))
    html_cards = "".join(f'<div class="card"><div class="v">{_esc(v)}</div><div class="k">{_esc(k)}</div></div>'
                         for k, v in cards)
    t = run.get("timings") or {}
    when = f"analysis wall time {t['wall_s']:.1f} s" if t.get("wall_s") is not None else ""
    return (f'<div class="cards">{html_cards}</div>'
            f'<p class="note">Fractions pool every analysed cell of the run. {_esc(when)}</p>')


def _plates_section(tables: RunTables, wells: pd.DataFrame | None, plate_wells: int | None) -> str:
    images = tables.images
    parts = []
    if wells is not None and len(wells):
        plates = list(dict.fromkeys(wells["plate"].tolist()))
        for plate in plates:
            name = plate or "(unnamed plate)"
            w = wells[wells["plate"] == plate]
            rows, cols = plate_shape(list(zip(w["_row"], w["_col"])), wells=plate_wells)
            parts.append(f"<h3>Plate {_esc(name)} — {rows * cols}-well layout, {len(w)} wells imaged</h3>")
            parts.append(_figure_html(
                fig_plate(wells, plate, plate_wells=plate_wells),
                "Per well, cells pooled over fields. Grey: no image. "
                + ("White frame: negative control; black dashed frame: positive control. "
                   if _has(w, "role") else "")
                + "Numbers: % of cells (fractions), cells, or images failing QC.",
                f"plate {name} heat-maps"))
        n_no_well = int((images["well"].isna() | (images["well"].astype(str).str.strip() == "")).sum())
        if n_no_well:
            parts.append(f'<p class="note">{n_no_well} image(s) have no well and are not on the maps.</p>')
    else:
        parts.append('<p class="note">No plate / well metadata (file names did not match a plate pattern); '
                     "per-image results instead.</p>")
        parts.append(_figure_html(fig_images(images), "Per image: fractions of cells and cell count; "
                                  "images failing QC in red.", "per-image results"))
    return "\n".join(parts)


def _conditions_section(wells: pd.DataFrame | None) -> str:
    if wells is None or not len(wells) or not _has(wells, "condition"):
        return ('<p class="note">No plate map with conditions (give one with <code>sabgal run --platemap '
                "map.csv</code>); nothing to compare.</p>")
    parts = [_figure_html(
        fig_conditions(wells),
        "Points: wells (with their own 95 % Wilson interval, thin). Diamonds: the condition, cells pooled "
        "over its wells, with the 95 % Wilson interval. Blue: negative controls; red: positive controls. "
        "Wilson intervals describe counting uncertainty only; the spread of the wells shows the "
        "replicate-to-replicate variation, which is what comparisons between conditions must use.",
        "per-condition fractions")]
    if _has(wells, "dose"):
        dr = fig_dose_response(wells)
        if dr:
            parts.append("<h3>Dose-response</h3>")
            parts.append(_figure_html(
                dr, "Lines: cells pooled per dose, shaded 95 % Wilson band; dots: wells. Dashed grey line "
                "and grey band: negative controls (SA-β-gal positive). A dose of 0 is drawn left of the lowest "
                "dose on a log axis.", "dose-response"))
    return "\n".join(parts)


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def _qc_section(tables: RunTables, max_thumbnails: int) -> str:
    images = tables.images
    passed = _qc_pass(images)
    ok = images["status"] == "ok" if "status" in images else pd.Series(True, index=images.index)
    reasons = images.get("qc_reasons", pd.Series("", index=images.index)).astype(str)
    parts = []
    if "qc_pass" not in images:
        parts.append('<p class="note">This run has no QC columns (made by an older sabgal); '
                     "rerun <code>sabgal run</code> to add them.</p>")
    kinds: dict[str, int] = {}
    for r in reasons[~passed & ok]:
        for k in {_reason_kind(x) for x in r.split("; ") if x}:
            kinds[k] = kinds.get(k, 0) + 1
    flagged = images[~passed & ok]
    parts.append(f"<p><b>{int(passed.sum())}</b> of {len(images)} image(s) passed QC; "
                 f"<b>{len(flagged)}</b> analysed image(s) were flagged"
                 f"{' and ' + str(int((~ok).sum())) + ' failed to analyse' if (~ok).any() else ''}. "
                 "Flagged images are reported, not removed: their cells are in every table and figure.</p>")
    if kinds:
        parts.append(_table(pd.DataFrame({"reason": list(kinds), "images": list(kinds.values())})
                            .sort_values("images", ascending=False)))
    meta = [c for c in ("plate", "well", "field") if _has(images, c)]
    show = flagged.head(max_thumbnails)
    examples = pd.DataFrame()
    if passed.any() and "fraction_sabgal_positive" in images:
        good = images[passed & (images["n_cells"] > 0)].sort_values("fraction_sabgal_positive")
        if len(good):
            examples = good.iloc[sorted({0, len(good) // 2, len(good) - 1})]
    thumbs = _thumbnails(tables.out_dir, list(show["image"]) + list(examples.get("image", [])))
    if len(flagged):
        parts.append("<h3>Flagged images</h3>")
        if len(flagged) > max_thumbnails:
            parts.append(f'<p class="note">Thumbnails of the first {max_thumbnails}; all are in the table '
                         "below.</p>")
        parts.append(_thumb_grid(show, thumbs, meta, flagged=True))
    if len(examples):
        parts.append("<h3>Examples that passed QC</h3><p class=\"note\">Lowest, median and highest fraction "
                     "SA-β-gal positive among images that passed. Outlines: green negative, orange SA-β-gal "
                     "positive, cyan enlarged (negative), magenta (double) senescent; white: nuclei. Full-size "
                     "overlays are in <code>qc/</code>.</p>")
        parts.append(_thumb_grid(examples, thumbs, meta, flagged=False))
    if (~ok).any():
        parts.append("<h3>Images that could not be analysed</h3>")
        parts.append(_table(images.loc[~ok, ["image", "error"]], max_rows=500))
    cols = ["image", *meta, "n_cells", "qc_pass", "qc_reasons", "qc_focus_ratio", "qc_cell_count_ratio",
            "qc_saturated_fraction", "qc_background_od_nonuniformity", "qc_debris_area_fraction",
            "xgal_angle_from_reference_deg"]
    cols = [c for c in cols if c in images]
    parts.append(f"<details><summary>QC metrics of every image ({len(images)})</summary>"
                 f"{_table(images[cols], max_rows=5000)}</details>")
    return "\n".join(parts)


def _thumb_grid(rows: pd.DataFrame, thumbs: dict[str, str], meta: list[str], *, flagged: bool) -> str:
    out = []
    for r in rows.to_dict("records"):
        where = " · ".join(_esc(r[m]) for m in meta if r.get(m) is not None and str(r.get(m)) not in ("", "nan"))
        img = thumbs.get(r["image"])
        pic = (f'<img alt="overlay of {_esc(r["image"])}" src="data:image/jpeg;base64,{img}">' if img
               else '<div class="note">(no overlay)</div>')
        why = (f'<div class="bad">{_esc(r.get("qc_reasons") or "")}</div>' if flagged else
               f'<div>SA-β-gal+ {_pct(r.get("fraction_sabgal_positive"))} · senescent '
               f'{_pct(r.get("fraction_senescent"))} · {_fmt(r.get("n_cells"))} cells</div>')
        out.append(f'<div class="thumb">{pic}<div class="cap"><b>{_esc(r["image"])}</b>'
                   f'{" — " + where if where else ""}{why}</div></div>')
    return f'<div class="thumbs">{"".join(out)}</div>'


def _provenance_section(tables: RunTables) -> str:
    run = tables.run
    parts = []
    info = [("sabgal version", run.get("sabgal_version", "")),
            ("command", " ".join(run.get("command") or [])),
            ("results folder", str(tables.out_dir.resolve()) if tables.out_dir else ""),
            ("images", run.get("n_images", len(tables.images))),
            ("failed", run.get("n_failed", "")),
            ("file-name pattern", run.get("filename_pattern") or ""),
            ("output formats", ", ".join(run.get("output_formats") or [])),
            ("report written", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    for k, v in (run.get("timings") or {}).items():
        if v is not None:
            info.append((f"timings: {k}", v))
    parts.append(_table(pd.DataFrame(info, columns=["item", "value"]).astype({"value": str})))
    by_plate = run.get("thresholds_by_plate") or {}
    if by_plate:
        rows = []
        for plate, d in by_plate.items():
            rows.append({"plate": plate or "(all)", "positive threshold (OD)": d.get("positive"),
                         "source": d.get("positive_source"), "measure": d.get("measure"),
                         "enlarged": d.get("enlarged_source"),
                         **{k: v for k, v in d.items() if k.startswith("n_control")}})
        parts.append("<h3>Thresholds</h3>" + _table(pd.DataFrame(rows)))
    elif run.get("thresholds"):
        parts.append("<h3>Thresholds</h3>" + _table(pd.DataFrame([run["thresholds"]])))
    if run.get("config"):
        parts.append("<h3>Configuration</h3><pre>" + _esc(_config_toml(run["config"])) + "</pre>")
    inputs = run.get("inputs") or []
    if inputs:
        lines = "\n".join(f"{i['image']}\t{i.get('path', '')}" + (f"\t{i['nuclear_image']}"
                          if i.get("nuclear_image") else "") for i in inputs[:20000])
        parts.append(f"<details><summary>Inputs ({len(inputs)} image set(s))</summary><pre>{_esc(lines)}</pre>"
                     "</details>")
    return "\n".join(parts)


def _methods_section(tables: RunTables) -> str:
    paragraphs, refs = methods_text(tables.run, tables.images)
    body = "".join(f"<p>{_esc(p)}</p>" for p in paragraphs)
    reflist = "".join(f"<li>{_esc(r)}</li>" for r in refs)
    return ('<p class="note">Generated from this run\'s configuration and results; check it against your '
            "protocol before use.</p>"
            f'<div class="methods">{body}<p><b>References</b></p><ol>{reflist}</ol></div>')


def build_report(tables: RunTables, *, max_thumbnails: int = 48, title: str | None = None,
                 plate_wells: int | None = None) -> str:
    """The report as one HTML string (figures and thumbnails embedded).

    Parameters
    ----------
    tables : RunTables
        From :func:`read_run` (or built in memory: ``images`` is required,
        the rest optional).
    max_thumbnails : int
        Most flagged images shown with a thumbnail.
    title : str, optional
        Page title (default: the results folder's name).
    plate_wells : int, optional
        Plate format of the heat-maps (6 ... 1536 wells); default: the
        smallest of 96, 384 and 1536 that holds every well.

    Returns
    -------
    str
        A complete HTML document with the sections :data:`REPORT_SECTIONS`;
        it references nothing outside itself.
    """
    if "image" not in tables.images:
        raise ValueError("images table has no 'image' column (not a sabgal images table)")
    tables = RunTables(images=_normalise(tables.images), cells=tables.cells, wells=tables.wells,
                       run=tables.run, out_dir=tables.out_dir)
    images = tables.images
    wells = _per_well(tables) if _has(images, "well") and "n_cells" in images else None
    if wells is not None and not len(wells):
        wells = None
    name = title or (tables.out_dir.resolve().name if tables.out_dir else "sabgal run")
    run = tables.run
    sections = [
        ("summary", "Summary", _summary_section(tables)),
        ("plates", "Plate overview" if wells is not None else "Images",
         _plates_section(tables, wells, plate_wells)),
        ("conditions", "Conditions", _conditions_section(wells)),
        ("distributions", "Per-cell distributions", (_figure_html(
            fig_distributions(tables),
            "Left: the per-cell X-gal score used for the SA-β-gal call, with the positivity threshold(s). "
            "Right: cell area with the enlargement threshold. Each group is normalised to 100 %, so "
            "groups of different sizes compare.", "per-cell distributions")
            or '<p class="note">No per-cell table (cells.csv) in this folder.</p>')),
        ("qc", "Quality control", _qc_section(tables, max_thumbnails)),
        ("provenance", "Provenance", _provenance_section(tables)),
        ("methods", "Methods (ready to paste)", _methods_section(tables)),
    ]
    nav = "".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in sections)
    body = "\n".join(_section(sid, t, b) for sid, t, b in sections)
    sub = f"sabgal {_esc(run.get('sabgal_version', ''))} · {len(images)} image(s)"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>sabgal report — {_esc(name)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>SA-β-gal report — {_esc(name)}</h1><div class=\"sub\">{sub}</div></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")


def write_report(out_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
                 max_thumbnails: int = 48, plate_wells: int | None = None) -> Path:
    """Read a results folder and write its report (default ``DIR/report.html``), atomically.

    Returns
    -------
    Path
        The report's path.

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` holds no images table.
    ValueError
        When ``run.json`` is unreadable or ``plate_wells`` is not a plate format.
    ImportError
        When matplotlib is not installed (``pip install 'sabgal[report]'``).
    """
    from sabgal import io as sio

    tables = read_run(out_dir)
    text = build_report(tables, max_thumbnails=max_thumbnails, plate_wells=plate_wells)
    dest = Path(output) if output is not None else Path(out_dir) / "report.html"
    with sio.atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest


def report_after_run(out_dir: str | os.PathLike[str]) -> Path | None:
    """Write ``DIR/report.html`` at the end of ``sabgal run``.

    The run's results are already written, so a report that cannot be made is
    a warning (naming the reason), never a failed run. Returns the path, or
    None when no report was written.
    """
    import time
    import traceback

    t0 = time.perf_counter()
    try:
        path = write_report(out_dir)
    except ImportError as exc:
        log.warning("no report: matplotlib is missing (pip install 'sabgal[report]'): %s", exc)
        return None
    except (OSError, ValueError) as exc:
        log.warning("no report: %s", exc)
        return None
    except Exception as exc:  # the tables are safe; say what broke and carry on
        log.debug("report failed\n%s", traceback.format_exc())
        log.warning("no report: internal error %s: %s (retry with: sabgal report %s)",
                    type(exc).__name__, exc, out_dir)
        return None
    log.info("report: %s (%.1f s)", path, time.perf_counter() - t0)
    return path
