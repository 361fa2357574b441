"""Review state behind the napari plugin, with no napari or Qt in it.

:class:`ImageReview` holds what a person looks at for one image: its labels,
its per-cell measurements, the thresholds the calls are made with and the
corrections made so far. Every number comes from the same functions as
``sabgal run``: :func:`sabgal.classify.classify_cells` for the calls,
:func:`sabgal.corrections.apply_corrections` for the corrections,
:func:`sabgal.classify.summarize` for the counts and
:func:`sabgal.pipeline.measure_image` when labels are edited.

:class:`ResultsFolder` reads and writes a ``sabgal run`` output folder: it
loads an image with its saved labels, saves corrections to
``corrections.csv`` (and edited labels beside the others) and rebuilds
``images.csv`` / ``cells.csv`` through :func:`sabgal.batch.rebuild_tables`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sabgal import batch, classify
from sabgal import io as sio
from sabgal.classify import Thresholds
from sabgal.config import Config, config_from_dict
from sabgal.corrections import (CORRECTION_COLUMNS, CORRECTION_FIELDS, apply_corrections,
                                load_corrections, save_corrections)
from sabgal.measure import CELL_COLUMNS, empty_cells_table

log = logging.getLogger(__name__)

__all__ = [
    "CALL_FIELDS",
    "CALL_CATEGORIES",
    "ImageReview",
    "ResultsFolder",
    "ResultsError",
    "call_category",
    "parse_well",
    "plate_grid",
]

CALL_FIELDS = ("sabgal_positive", "enlarged", "senescent")
# What an outline colour means, in drawing order; see call_category().
CALL_CATEGORIES = ("negative", "enlarged", "positive", "senescent", "deleted")


class ResultsError(ValueError):
    """A results folder cannot be opened; the message names the file."""


def call_category(calls: pd.DataFrame) -> np.ndarray:
    """One category per cell of a classified table (see :data:`CALL_CATEGORIES`).

    ``senescent`` wins over ``positive`` and ``enlarged``; a cell that is
    positive but not senescent is ``positive``; enlarged but negative is
    ``enlarged``; deleted cells (column ``deleted``) are ``deleted``.

    >>> t = pd.DataFrame({"sabgal_positive": [True, True, False, False],
    ...                   "enlarged": [True, False, True, False],
    ...                   "senescent": [True, False, False, False]})
    >>> call_category(t).tolist()
    ['senescent', 'positive', 'enlarged', 'negative']
    """
    n = len(calls)
    out = np.full(n, "negative", dtype=object)
    if n == 0:
        return out
    pos = calls["sabgal_positive"].to_numpy(dtype=bool)
    enl = calls["enlarged"].to_numpy(dtype=bool)
    sen = calls["senescent"].to_numpy(dtype=bool)
    out[enl] = "enlarged"
    out[pos] = "positive"
    out[sen] = "senescent"
    if "deleted" in calls:
        out[calls["deleted"].to_numpy(dtype=bool)] = "deleted"
    return out


@dataclass
class ImageReview:
    """One image under review.

    Parameters
    ----------
    image : str
        The image's name: its path relative to the input root in a results
        folder (column ``image`` of ``cells.csv``), else a layer name.
    cell_labels, nucleus_labels : (M, N) uint32 ndarray
        A nucleus carries its cell's label.
    measurements : DataFrame
        Per-cell measurements, columns :data:`sabgal.measure.CELL_COLUMNS`
        (no calls).
    thresholds : Thresholds
        The thresholds the calls are made with (changed live by the widget).
    config : Config
        The configuration the image was analysed with.
    rule : str
        Senescent rule, a key of :data:`sabgal.classify.SENESCENT_RULES`.
    corrections : dict
        ``(cell_id, field) -> (old, new)``: the person's changes.
    prepared, foreground : optional
        :class:`sabgal.pipeline.StainedImage` and the cell foreground, needed
        to re-measure edited labels (see :meth:`set_labels`).
    """

    image: str
    cell_labels: np.ndarray
    nucleus_labels: np.ndarray
    measurements: pd.DataFrame
    thresholds: Thresholds
    config: Config = field(default_factory=Config)
    rule: str = "positive_and_enlarged"
    corrections: dict[tuple[int, str], tuple[bool, bool]] = field(default_factory=dict)
    prepared: Any = None
    foreground: np.ndarray | None = None
    xgal: np.ndarray | None = None
    pixel_size_um: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    labels_edited: bool = False
    learnt_thresholds: Thresholds | None = None

    def __post_init__(self) -> None:
        self.cell_labels = np.asarray(self.cell_labels, dtype=np.uint32)
        self.nucleus_labels = np.asarray(self.nucleus_labels, dtype=np.uint32)
        if self.cell_labels.shape != self.nucleus_labels.shape:
            raise ValueError(f"cell labels {self.cell_labels.shape} and nucleus labels "
                             f"{self.nucleus_labels.shape} differ in shape")
        if self.rule not in classify.SENESCENT_RULES:
            raise ValueError(f"rule must be one of {sorted(classify.SENESCENT_RULES)}, got {self.rule!r}")
        self.measurements = self.measurements.reset_index(drop=True)
        if self.learnt_thresholds is None:
            self.learnt_thresholds = self.thresholds
        self._cache: pd.DataFrame | None = None

    # ------------------------------------------------------------------ calls
    def _invalidate(self) -> None:
        self._cache = None

    def set_thresholds(self, *, positive: float | None = None, enlarged_factor: float | None = None,
                       rule: str | None = None) -> None:
        """Change the thresholds (or the senescent rule); the calls follow."""
        changes: dict[str, Any] = {}
        if positive is not None and positive != self.thresholds.positive:
            if not positive > 0:
                raise ValueError(f"positive threshold must be > 0 (OD), got {positive}")
            changes.update(positive=float(positive), positive_source="manual")
        if enlarged_factor is not None and enlarged_factor != self.thresholds.enlarged_factor:
            if not enlarged_factor > 1:
                raise ValueError(f"enlarged factor must be > 1, got {enlarged_factor}")
            changes.update(enlarged_factor=float(enlarged_factor))
        if changes:
            self.thresholds = replace(self.thresholds, **changes)
        if rule is not None:
            if rule not in classify.SENESCENT_RULES:
                raise ValueError(f"rule must be one of {sorted(classify.SENESCENT_RULES)}, got {rule!r}")
            self.rule = rule
        self._invalidate()

    def reset_thresholds(self) -> None:
        """Go back to the thresholds the image was analysed with."""
        self.thresholds = self.learnt_thresholds
        self.rule = self.config.classify.senescent_rule
        self._invalidate()

    def automatic_calls(self) -> pd.DataFrame:
        """Measurements + ``sabgal_positive``, ``enlarged``, ``senescent`` before corrections."""
        table = self.measurements.copy()
        table.insert(0, "image", self.image)
        return classify.classify_cells(table, self.thresholds, rule=self.rule, image_column="image")

    def calls(self) -> pd.DataFrame:
        """Every cell with its calls after corrections.

        Adds ``corrected`` (a correction touches the cell) and ``deleted``
        (the person removed it; its calls are the automatic ones and it is
        left out of :meth:`summary`).
        """
        if self._cache is not None:
            return self._cache
        auto = self.automatic_calls()
        fixed = apply_corrections(auto, self.corrections_table(), rule=self.rule)
        out = auto.set_index("cell_id")
        out["corrected"] = False
        kept = fixed.set_index("cell_id")
        cols = list(CALL_FIELDS) + ["corrected"]
        out.loc[kept.index, cols] = kept[cols]
        out["deleted"] = ~out.index.isin(kept.index)
        touched = {cid for cid, _ in self.corrections}
        out.loc[out.index.isin(list(touched)), "corrected"] = True
        out = out.reset_index()
        out = out[["image", "cell_id"] + [c for c in out.columns if c not in ("image", "cell_id")]]
        for c in cols + ["deleted"]:
            out[c] = out[c].astype(bool)
        self._cache = out
        return out

    def kept_calls(self) -> pd.DataFrame:
        """:meth:`calls` without the deleted cells (what the counts are made of)."""
        t = self.calls()
        return t[~t["deleted"]].drop(columns="deleted").reset_index(drop=True)

    def summary(self) -> dict[str, float]:
        """Counts and fractions (:data:`sabgal.classify.SUMMARY_COLUMNS`) after corrections."""
        return classify.summarize(self.kept_calls(), exclude_border=self.config.classify.exclude_border_cells)

    # ------------------------------------------------------------ corrections
    def flip(self, cell_id: int, field: str) -> bool:
        """Flip one call of one cell (or delete / restore it, ``field="deleted"``).

        A flip back to the automatic value removes the correction instead of
        stacking a second one. Returns the cell's new value.

        Raises
        ------
        KeyError
            When there is no such cell.
        ValueError
            When ``field`` is not one of :data:`sabgal.corrections.CORRECTION_FIELDS`.
        """
        if field not in CORRECTION_FIELDS:
            raise ValueError(f"field must be one of {list(CORRECTION_FIELDS)}, got {field!r}")
        cell_id = int(cell_id)
        calls = self.calls().set_index("cell_id")
        if cell_id not in calls.index:
            raise KeyError(f"{self.image}: no cell {cell_id}")
        current = bool(calls.at[cell_id, field])
        new = not current
        if field == "deleted":
            auto = False
        else:
            auto = bool(self.automatic_calls().set_index("cell_id").at[cell_id, field])
        if new == auto and (cell_id, field) in self.corrections:
            del self.corrections[(cell_id, field)]
        else:
            self.corrections[(cell_id, field)] = (current, new)
        self._invalidate()
        return new

    def corrections_table(self) -> pd.DataFrame:
        """This image's corrections as ``corrections.csv`` rows."""
        rows = [(self.image, cid, fld, old, new) for (cid, fld), (old, new) in self.corrections.items()]
        table = pd.DataFrame(rows, columns=CORRECTION_COLUMNS)
        return table.astype({"image": object, "cell_id": np.int64, "field": object, "old": bool, "new": bool})

    def load_corrections(self, table: pd.DataFrame) -> None:
        """Take this image's rows of a ``corrections.csv`` table (later rows win)."""
        self.corrections.clear()
        ids = set(self.measurements["cell_id"].tolist())
        mine = table[table["image"] == self.image]
        for cid, fld, old, new in zip(mine["cell_id"], mine["field"], mine["old"], mine["new"]):
            if int(cid) in ids:
                self.corrections[(int(cid), str(fld))] = (bool(old), bool(new))
        self._invalidate()

    # ------------------------------------------------------------- label edits
    def set_labels(self, cell_labels: np.ndarray, nucleus_labels: np.ndarray | None = None) -> np.ndarray:
        """Take edited labels and re-measure the cells that changed.

        Cells whose pixels did not change keep their row; changed and new
        cells are measured with :func:`sabgal.pipeline.measure_image` on the
        prepared image. Nucleus pixels no longer inside their own cell are
        dropped. Corrections of cells that no longer exist are dropped.

        Returns
        -------
        (K,) int64 ndarray
            Ids of the cells that changed, appeared or vanished.

        Raises
        ------
        RuntimeError
            When the prepared image is not available (see :attr:`prepared`).
        """
        from sabgal.pipeline import measure_image

        cells = np.asarray(cell_labels)
        if cells.shape != self.cell_labels.shape:
            raise ValueError(f"edited labels have shape {cells.shape}, expected {self.cell_labels.shape}")
        cells = cells.astype(np.uint32)
        nuclei = self.nucleus_labels if nucleus_labels is None else np.asarray(nucleus_labels, dtype=np.uint32)
        nuclei = np.where(nuclei == cells, nuclei, 0).astype(np.uint32)
        diff = (cells != self.cell_labels) | (nuclei != self.nucleus_labels)
        changed = np.union1d(np.unique(cells[diff]), np.unique(self.cell_labels[diff]))
        changed = changed[changed > 0].astype(np.int64)
        if changed.size == 0:
            return changed
        if self.prepared is None:
            raise RuntimeError(f"{self.image}: the prepared image is needed to re-measure edited cells")
        table, xgal, _bg, _glass = measure_image(self.prepared, cells, nuclei, foreground=self.foreground,
                                                 pixel_size_um=self.pixel_size_um, config=self.config)
        keep = self.measurements[~self.measurements["cell_id"].isin(changed)]
        new_rows = table[table["cell_id"].isin(changed)]
        parts = [t for t in (keep, new_rows) if len(t)]
        merged = pd.concat(parts, ignore_index=True) if parts else empty_cells_table()
        self.measurements = merged.sort_values("cell_id").reset_index(drop=True).astype(CELL_COLUMNS)
        self.cell_labels, self.nucleus_labels = cells, nuclei
        if self.xgal is None:
            self.xgal = xgal.astype(np.float32)
        present = set(self.measurements["cell_id"].tolist())
        self.corrections = {k: v for k, v in self.corrections.items() if k[0] in present}
        self.labels_edited = True
        self._invalidate()
        return changed


def run_thresholds(table: pd.DataFrame, config: Config, image: str) -> Thresholds:
    """The thresholds ``sabgal run`` uses for a run of this one image.

    Composes :func:`sabgal.batch.plate_thresholds` (the set's thresholds:
    fixed, learnt, or from controls) and, with ``classify.threshold_scope =
    "image"``, :func:`sabgal.classify.image_thresholds` (the image's own
    split), as :func:`sabgal.batch.rebuild_tables` does.
    """
    cells = table.assign(image=image, plate="")
    th = batch.plate_thresholds(cells, config)[""][0]
    cc = config.classify
    if cc.positive_threshold == "auto" and th.positive_source != "controls" and cc.threshold_scope == "image":
        t, src = classify.image_thresholds(cells, cc, th.positive).get(image, (th.positive, "set"))
        if src != "set":
            th = replace(th, positive=float(t), positive_source=src)
    return th


def analysis_steps(rgb: np.ndarray, *, nuclear: np.ndarray | None = None, config: Config | None = None,
                   pixel_size_um: float | None = None, image: str = "image", encoding: str | None = None):
    """Analyse one image stage by stage, yielding ``(fraction done, next stage)``.

    The stages are those :func:`sabgal.pipeline.analyze_image` composes
    (:func:`~sabgal.pipeline.prepare_image`, :func:`~sabgal.pipeline.segment_image`,
    :func:`~sabgal.pipeline.measure_image`), then the thresholds of
    :func:`run_thresholds`, so the calls equal those of ``sabgal run`` on this
    image alone; the prepared image and the cell foreground are
    kept so that edited labels can be re-measured. The generator's return
    value is the :class:`ImageReview`; it suits napari's ``thread_worker``.
    ``encoding``: what the image's file declares (:attr:`sabgal.io.ImageData.encoding`).

    Raises
    ------
    ValueError
        When the nuclear image's shape differs from the RGB image's, or the
        pipeline rejects the input.
    """
    from sabgal.pipeline import measure_image, prepare_image, segment_image

    config = config or Config()
    if nuclear is not None:
        nuclear = np.asarray(nuclear, dtype=np.float32)
        if nuclear.shape != np.shape(rgb)[:2]:
            raise ValueError(f"nuclear image shape {nuclear.shape} differs from the RGB image {np.shape(rgb)[:2]}")
    px = pixel_size_um or config.setup.pixel_size_um
    yield 0.0, "illumination and stain separation"
    prep = prepare_image(rgb, nuclear=nuclear, config=config, encoding=encoding)
    yield 0.4, "nuclei and cells"
    cells, nuclei, foreground, diameter = segment_image(prep, nuclear=nuclear, config=config)
    yield 0.8, "measuring cells"
    table, xgal, xgal_bg, _glass = measure_image(prep, cells, nuclei, foreground=foreground,
                                                 pixel_size_um=px, config=config, diameter_px=diameter)
    thresholds = run_thresholds(table, config, image)
    yield 1.0, "done"
    info = {"setup": prep.mode, "counterstain": prep.model.counterstain,
            "nucleus_diameter_px": round(float(diameter), 2), "xgal_background_od": round(xgal_bg, 4),
            "warnings": list(prep.warnings)}
    return ImageReview(image=image, cell_labels=cells, nucleus_labels=nuclei, measurements=table,
                       thresholds=thresholds, config=config, rule=config.classify.senescent_rule,
                       prepared=prep, foreground=foreground, xgal=xgal.astype(np.float32),
                       pixel_size_um=px, info=info)


def prepare_for_edits(review: ImageReview, rgb: np.ndarray, *, nuclear: np.ndarray | None = None,
                      encoding: str | None = None) -> None:
    """Give a review loaded from a results folder what label edits need: the
    prepared image, the cell foreground and the X-gal map (recomputed from the
    source pixels with the run's config, ``encoding`` what the file declares;
    the labels are not touched)."""
    from sabgal.pipeline import measure_image, prepare_image, segment_image

    if nuclear is not None:
        nuclear = np.asarray(nuclear, dtype=np.float32)
    prep = prepare_image(rgb, nuclear=nuclear, config=review.config, encoding=encoding)
    _cells, _nuclei, foreground, _d = segment_image(prep, nuclear=nuclear, config=review.config)
    _t, xgal, _bg, _g = measure_image(prep, review.cell_labels, review.nucleus_labels, foreground=foreground,
                                      pixel_size_um=review.pixel_size_um, config=review.config)
    review.prepared, review.foreground, review.xgal = prep, foreground, xgal.astype(np.float32)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def tuned_config_toml(config: Config, thresholds: Thresholds, rule: str, *, note: str = "") -> str:
    """TOML text of ``config`` with the reviewed thresholds fixed, for
    ``sabgal run --config FILE``.

    >>> from sabgal.config import config_from_dict
    >>> import tomllib
    >>> th = Thresholds(positive=0.2, positive_source="manual", measure="xgal_od_p90", enlarged_factor=2.0)
    >>> d = tomllib.loads(tuned_config_toml(Config(), th, "positive"))
    >>> c = config_from_dict(d)
    >>> c.classify.positive_threshold, c.classify.enlarged_factor, c.classify.senescent_rule
    (0.2, 2.0, 'positive')
    """
    from sabgal.config import config_to_dict

    d = config_to_dict(config)
    d["classify"].update(positive_threshold=float(thresholds.positive),
                         enlarged_factor=float(thresholds.enlarged_factor), senescent_rule=rule)
    lines = ["# sabgal configuration tuned in the napari plugin" + (f": {note}" if note else ""), ""]
    for section, values in d.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------- plates
_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")
_PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))  # 96, 384, 1536 wells


def parse_well(well: Any) -> tuple[int, int] | None:
    """``"B03"`` -> ``(1, 2)`` (zero-based row, column), or None if it is not a well name.

    >>> parse_well("A01"), parse_well("p24"), parse_well("AA1"), parse_well("x"), parse_well(None)
    ((0, 0), (15, 23), (26, 0), None, None)
    """
    if not isinstance(well, str):
        return None
    m = _WELL.match(well)
    if not m:
        return None
    letters, col = m.group(1).upper(), int(m.group(2))
    row = ord(letters[-1]) - ord("A") + (26 * (ord(letters[0]) - ord("A") + 1) if len(letters) == 2 else 0)
    if col < 1:
        return None
    return row, col - 1


@dataclass(frozen=True)
class PlateGrid:
    """Wells of one plate: ``fraction[r, c]`` (NaN for empty wells) and the
    images of each well, for a heat map."""

    plate: str
    n_rows: int
    n_cols: int
    fraction: np.ndarray
    n_cells: np.ndarray
    images: dict[tuple[int, int], list[str]]

    @staticmethod
    def row_name(r: int) -> str:
        return chr(ord("A") + r) if r < 26 else "A" + chr(ord("A") + r - 26)


def plate_grid(images: pd.DataFrame, *, column: str = "sabgal_positive") -> list[PlateGrid] | None:
    """Well grids from an ``images.csv`` table with ``plate`` and ``well`` columns.

    Each well's fraction pools its fields: ``sum(n_<column>) / sum(n_cells)``
    over the well's images with status ``ok``. Returns None when the table
    has no usable ``well`` column (the plugin then lists images instead).
    """
    if "well" not in images or len(images) == 0:
        return None
    parsed = [parse_well(w) for w in images["well"]]
    if all(p is None for p in parsed):
        return None
    plates = images["plate"].fillna("").astype(str) if "plate" in images else pd.Series([""] * len(images))
    out = []
    ok = images["status"].eq("ok").to_numpy() if "status" in images else np.ones(len(images), bool)
    n_col = f"n_{column}"
    for plate in dict.fromkeys(plates.tolist()):
        sel = np.flatnonzero((plates == plate).to_numpy())
        cells = [parsed[i] for i in sel if parsed[i] is not None]
        if not cells:
            continue
        max_r = max(r for r, _ in cells) + 1
        max_c = max(c for _, c in cells) + 1
        n_rows, n_cols = next(((r, c) for r, c in _PLATE_FORMATS if max_r <= r and max_c <= c), (max_r, max_c))
        num = np.zeros((n_rows, n_cols))
        den = np.zeros((n_rows, n_cols))
        wells: dict[tuple[int, int], list[str]] = {}
        for i in sel:
            rc = parsed[i]
            if rc is None:
                continue
            wells.setdefault(rc, []).append(str(images["image"].iloc[i]))
            if ok[i]:
                n = images["n_cells"].iloc[i]
                k = images[n_col].iloc[i] if n_col in images else np.nan
                if pd.notna(n) and pd.notna(k):
                    num[rc] += float(k)
                    den[rc] += float(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(den > 0, num / np.maximum(den, 1), np.nan)
        out.append(PlateGrid(plate, n_rows, n_cols, frac, den.astype(np.int64), wells))
    return out


# ----------------------------------------------------------- results folders
def _resolve(path: str | None, root: Path) -> Path | None:
    """A recorded input path: as written, else relative to the results folder or its parent."""
    if not path:
        return None
    p = Path(path)
    for cand in (p, root / p, root.parent / p):
        if cand.exists():
            return cand
    return p


class ResultsFolder:
    """A ``sabgal run`` output folder (``images.csv``, ``run.json``, ``labels/``).

    Raises
    ------
    ResultsError
        When ``images.csv`` or ``run.json`` is missing or unreadable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        for name in ("images.csv", "run.json"):
            if not (self.path / name).is_file():
                raise ResultsError(f"{self.path}: not a sabgal results folder (no {name}; "
                                   "make one with `sabgal run IMAGES --out DIR`)")
        try:
            self.run = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{self.path / 'run.json'}: unreadable: {exc}") from None
        try:
            self.config = config_from_dict(self.run.get("config", {}), source=str(self.path / "run.json"))
            names = {f.name for f in dataclasses.fields(Thresholds)}
            self.thresholds = Thresholds(**{k: v for k, v in self.run["thresholds"].items() if k in names})
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{self.path / 'run.json'}: no usable config/thresholds: {exc}") from None
        self.inputs = {d["image"]: d for d in self.run.get("inputs", [])}
        self.reload_tables()

    @staticmethod
    def is_results_folder(path: str | os.PathLike[str]) -> bool:
        p = Path(path)
        return p.is_dir() and (p / "images.csv").is_file() and (p / "run.json").is_file()

    def reload_tables(self) -> None:
        """(Re)read ``images.csv`` and ``corrections.csv``."""
        try:
            self.images = pd.read_csv(self.path / "images.csv", dtype={"image": str, "well": str, "plate": str},
                                      keep_default_na=False, na_values=[""])
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ResultsError(f"{self.path / 'images.csv'}: unreadable: {exc}") from None
        if "image" not in self.images:
            raise ResultsError(f"{self.path / 'images.csv'}: no 'image' column")
        self.corrections = load_corrections(self.path / "corrections.csv")
        self._cells: pd.DataFrame | None = None

    @property
    def image_names(self) -> list[str]:
        return self.images["image"].astype(str).tolist()

    def status(self, image: str) -> tuple[str, str]:
        row = self.images[self.images["image"] == image]
        if not len(row):
            return "missing", f"{image}: not in {self.path / 'images.csv'}"
        return str(row["status"].iloc[0]), str(row["error"].iloc[0]) if "error" in row else ""

    def key(self, image: str) -> str:
        return batch.image_key(image)

    def source_paths(self, image: str) -> tuple[Path | None, Path | None]:
        """(RGB image, nuclear companion) paths recorded for ``image``."""
        rec = self.inputs.get(image, {})
        return _resolve(rec.get("path"), self.path), _resolve(rec.get("nuclear_image"), self.path)

    def _label_paths(self, image: str) -> tuple[Path, Path]:
        key = self.key(image)
        return self.path / "labels" / f"{key}_cells.tif", self.path / "labels" / f"{key}_nuclei.tif"

    def _state_cells(self, image: str) -> Path:
        return batch.state_paths(self.path, self.key(image))[1]

    def _measurements(self, image: str) -> pd.DataFrame:
        """Per-cell measurements without calls: the run's own per-image table
        (all cells, before corrections), else the rows of ``cells.csv``."""
        state = self._state_cells(image)
        if state.is_file():
            t = sio.read_columns(state)
        else:
            if self._cells is None:
                self._cells = pd.read_csv(self.path / "cells.csv", dtype={"image": str})
            t = self._cells[self._cells["image"] == image]
        missing = [c for c in CELL_COLUMNS if c not in t]
        if missing:
            raise ResultsError(f"{state if state.is_file() else self.path / 'cells.csv'}: "
                               f"missing column(s) {missing}")
        return t[list(CELL_COLUMNS)].astype(CELL_COLUMNS).reset_index(drop=True)

    def thresholds_for(self, image: str) -> Thresholds:
        """The thresholds the run classified ``image`` with: its plate's
        (``run.json``), with the image's own positivity and enlarged-area
        thresholds from ``images.csv`` where the run recorded them."""
        names = {f.name for f in dataclasses.fields(Thresholds)}
        row = self.images[self.images["image"] == image]
        plate = ""
        if len(row) and "plate" in row and pd.notna(row["plate"].iloc[0]):
            plate = str(row["plate"].iloc[0])
        by_plate = self.run.get("thresholds_by_plate") or {}
        th = self.thresholds
        if plate in by_plate:
            th = Thresholds(**{k: v for k, v in by_plate[plate].items() if k in names})
        if len(row):
            pos = row["positive_threshold_od"].iloc[0] if "positive_threshold_od" in row else np.nan
            if pd.notna(pos):
                src = row["positive_threshold_source"].iloc[0] if "positive_threshold_source" in row else None
                th = replace(th, positive=float(pos), positive_source=str(src) if pd.notna(src) else th.positive_source)
            enl = row["enlarged_threshold_px"].iloc[0] if "enlarged_threshold_px" in row else np.nan
            if pd.notna(enl):
                th = replace(th, enlarged_area_px=float(enl))
        return th

    def load(self, image: str, *, read_pixels: bool = True) -> tuple[Any, Any, ImageReview]:
        """Read an image's pixels, labels and measurements.

        Returns
        -------
        rgb : ImageData or None
        nuclear : ImageData or None
        review : ImageReview
            With this folder's thresholds, config and corrections.

        Raises
        ------
        ResultsError
            When the image failed in the run or its labels are missing.
        sabgal.io.ImageReadError
            When the source image cannot be read.
        """
        status, error = self.status(image)
        if status != "ok":
            raise ResultsError(f"{image}: no result to review ({status}: {error})")
        cells_path, nuclei_path = self._label_paths(image)
        if not cells_path.is_file():
            raise ResultsError(f"{cells_path}: label image missing (was the run made with --no-labels?)")
        cells = sio.read_labels(cells_path)
        nuclei = sio.read_labels(nuclei_path) if nuclei_path.is_file() else np.zeros_like(cells)
        rgb = nuclear = None
        px = None
        if read_pixels:
            rgb_path, nuc_path = self.source_paths(image)
            if rgb_path is None:
                raise ResultsError(f"{self.path / 'run.json'}: no source path recorded for {image}")
            rgb = sio.read_rgb(rgb_path)
            if rgb.pixels.shape[:2] != cells.shape:
                raise ResultsError(f"{rgb_path}: image is {rgb.pixels.shape[:2]}, its labels {cells.shape} "
                                   "(was the image replaced after the run?)")
            nuclear = sio.read_nuclear(nuc_path) if nuc_path is not None else None
            px = rgb.pixel_size_um
        row = self.images[self.images["image"] == image]
        if px is None and "pixel_size_um" in row and pd.notna(row["pixel_size_um"].iloc[0]):
            px = float(row["pixel_size_um"].iloc[0])
        review = ImageReview(image=image, cell_labels=cells, nucleus_labels=nuclei,
                             measurements=self._measurements(image), thresholds=self.thresholds_for(image),
                             config=self.config, rule=self.config.classify.senescent_rule,
                             pixel_size_um=px or self.config.setup.pixel_size_um)
        review.load_corrections(self.corrections)
        return rgb, nuclear, review

    def save(self, review: ImageReview) -> Path:
        """Write ``review``'s corrections into ``corrections.csv`` (replacing
        that image's earlier rows), and its labels and measurements when they
        were edited. Returns the corrections file."""
        path = self.path / "corrections.csv"
        others = self.corrections[self.corrections["image"] != review.image]
        mine = review.corrections_table()
        parts = [t for t in (others, mine) if len(t)]
        table = pd.concat(parts, ignore_index=True) if parts else mine
        save_corrections(path, table)
        self.corrections = load_corrections(path)
        if review.labels_edited:
            cells_path, nuclei_path = self._label_paths(review.image)
            sio.write_labels(cells_path, review.cell_labels)
            sio.write_labels(nuclei_path, review.nucleus_labels)
            sio.write_columns(self._state_cells(review.image), review.measurements)
            review.labels_edited = False
            self._cells = None
        log.info("saved %d correction(s) of %s to %s", len(mine), review.image, path)
        return path

    def rebuild(self) -> pd.DataFrame:
        """Rewrite ``images.csv``, ``cells.csv`` and ``run.json`` (as ``sabgal run`` does at its end)."""
        sets = []
        for image, rec in self.inputs.items():
            rgb, nuc = self.source_paths(image)
            sets.append(batch.ImageSet(str(rgb) if rgb else rec.get("path", ""), image, batch.image_key(image),
                                       str(nuc) if nuc else None))
        keep = {k: v for k, v in self.run.items()
                if k not in ("sabgal_version", "config", "thresholds", "inputs", "n_images", "n_failed")}
        batch.rebuild_tables(sets, self.config, self.path, run_info=keep)
        self.reload_tables()
        return self.images
