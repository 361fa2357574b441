"""Plate metadata: plate / well / field from file names, OME-XML, and plate maps.

Three sources of metadata are combined into one table with a row per image:

* **File names**, parsed by a regular expression with named groups
  (``plate``, ``well`` or ``row`` + ``column``, ``field``, ``channel``). Presets
  cover the common instruments (:data:`PRESETS`); ``"auto"`` picks the preset
  that matches the most files.
* **OME-XML** (OME-TIFF): ``Plate/Well/WellSample`` elements give the plate
  name, the well and the field when the file name does not.
* **A plate map** (``--platemap``): per well, ``condition``, ``dose``,
  ``replicate`` and ``role`` (``negative_control``, ``positive_control``,
  ``sample``, ``blank``). Two layouts are accepted: a *long* table (a ``well``
  column, optionally ``plate``) and the *grid* wet-lab staff keep in
  spreadsheets (8 x 12 or 16 x 24 blocks, one block per variable, CSV or
  ``.xlsx``).

Well names are normalised to a row letter and a two-digit column (``a1`` ->
``A01``). A well that cannot be a plate well, an image whose well the plate map
does not list, a duplicated plate-map entry or an unknown role fails loudly
with one line naming the source.

Everything here is pure except :func:`read_platemap`, which reads the file.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "PRESET_ORDER",
    "ROLES",
    "METADATA_COLUMNS",
    "PLATEMAP_COLUMNS",
    "MetadataError",
    "normalize_well",
    "split_well",
    "well_from_row_column",
    "compile_pattern",
    "parse_filename",
    "choose_preset",
    "parse_ome_plate",
    "filename_metadata",
    "empty_metadata",
    "platemap_from_rows",
    "read_platemap",
    "join_platemap",
    "plate_summary",
    "coerce_metadata",
]


class MetadataError(ValueError):
    """File-name metadata or a plate map cannot be used; the message names the source."""


# --- presets ----------------------------------------------------------------------------
# Each preset is matched (case-insensitively) against the file *name*. Named
# groups: plate, well | row + column, field, channel; any others are ignored.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PRESETS: dict[str, str] = {
    # Molecular Devices ImageXpress / MetaXpress: <plate>_A01_s1_w1<UUID>.tif
    # (plate prefix, site and wavelength optional; thumbnails excluded).
    "imagexpress": (
        r"^(?:(?P<plate>.+)_)?(?P<well>[a-p]\d{2})(?:_s(?P<field>\d+))?"
        rf"(?:_w(?P<channel>[1-9])(?:{_UUID})?)?\.(?:tiff?|png|jpe?g)$"
    ),
    # PerkinElmer/Revvity Operetta & Opera (Harmony): r01c01f01p01-ch1sk1fk1fl1.tiff
    "operetta": (
        r"^r(?P<row>\d{1,2})c(?P<column>\d{1,2})f(?P<field>\d{1,4})(?:p(?P<plane>\d{1,3}))?"
        r"(?:-ch(?P<channel>\d+))?(?:sk\d+fk\d+fl\d+)?\.(?:tiff?|png|jpe?g)$"
    ),
    # Agilent BioTek Cytation / Gen5 image export:
    # [<plate>_]<well>_<read step>_<channel no>_<field/tile>_<channel name>_<index>.tif
    # e.g. A1_01_1_1_Bright Field_001.tif
    "cytation": (
        r"^(?:(?P<plate>.+?)_)?(?P<well>[a-p]\d{1,2})_(?P<read>-?\d{1,2})_(?P<channel_index>\d{1,2})"
        r"_(?P<field>\d{1,3})_(?P<channel>[^_]+)_(?P<index>\d{3})\.(?:tiff?|png|jpe?g)$"
    ),
    # Sartorius Incucyte export: <vessel>_[<channel>_]<well>_<image no>_<time>.tif
    # time as 2021y05m03d_10h30m or as elapsed 00d04h00m
    "incucyte": (
        r"^(?P<plate>.+?)_(?:(?P<channel>phase|phasecontrast|brightfield|hd|green|red|nir|blue|orange)_)?"
        r"(?P<well>[a-p]\d{1,2})_(?P<field>\d+)_(?P<timepoint>\d{4}y\d{2}m\d{2}d_\d{2}h\d{2}m|\d+d\d+h\d+m)"
        r"\.(?:tiff?|png|jpe?g)$"
    ),
    # Generic: A01_f1.tif, A1-field2.png, plate1_B03_s2.tif, P1_A01_f1.tif, C4.tif; the
    # well is the first well-like token not followed by another one.
    "generic": (
        r"^(?:(?P<plate>.+?)[_\- ])??(?P<well>[a-p]\d{1,2})"
        r"(?:[_\- ]?(?:f|fld|field|s|site)[_\- ]?(?P<field>\d+))?"
        r"(?:[_\-](?![a-p]\d{1,2}(?:[_\- .]|$)).*)?\.(?:tiff?|png|jpe?g)$"
    ),
}
# "auto" tries the specific presets first; ties go to the earlier one.
PRESET_ORDER = ("operetta", "imagexpress", "cytation", "incucyte", "generic")

ROLES = ("negative_control", "positive_control", "sample", "blank")
_ROLE_ALIASES = {
    "negative_control": "negative_control", "negative": "negative_control", "neg": "negative_control",
    "nc": "negative_control", "negative control": "negative_control", "control": "negative_control",
    "ctrl": "negative_control", "neg_ctrl": "negative_control", "negctrl": "negative_control",
    "positive_control": "positive_control", "positive": "positive_control", "pos": "positive_control",
    "pc": "positive_control", "positive control": "positive_control", "pos_ctrl": "positive_control",
    "posctrl": "positive_control",
    "sample": "sample", "treated": "sample", "treatment": "sample", "test": "sample",
    "blank": "blank", "empty": "blank", "background": "blank",
}

# Per-image metadata columns (images.csv / cells.csv), then the plate-map ones.
METADATA_COLUMNS: dict[str, str] = {
    "plate": "str",
    "well": "str",
    "row": "str",
    "column": "Int64",
    "field": "Int64",
    "channel": "str",
}
PLATEMAP_COLUMNS: dict[str, str] = {
    "condition": "str",
    "dose": "float64",
    "replicate": "str",
    "role": "str",
}

_MAX_ROWS = 32  # 1536-well plates: A..Z, AA..AF
_MAX_COLUMNS = 48


# --- wells ------------------------------------------------------------------------------
def _row_letters(index: int) -> str:
    """1 -> 'A', 26 -> 'Z', 27 -> 'AA'."""
    if not 1 <= index <= _MAX_ROWS:
        raise MetadataError(f"row number {index} outside 1..{_MAX_ROWS}")
    return chr(ord("A") + index - 1) if index <= 26 else "A" + chr(ord("A") + index - 27)


def _row_index(letters: str) -> int:
    letters = letters.upper()
    if len(letters) == 1:
        return ord(letters) - ord("A") + 1
    return 26 + ord(letters[1]) - ord("A") + 1


_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def split_well(well: str) -> tuple[str, int]:
    """Row letters and column number of a well name.

    >>> split_well("b7")
    ('B', 7)

    Raises
    ------
    MetadataError
        When ``well`` is not a letter (or two) followed by a column number in
        1..48, or the row is beyond AF.
    """
    m = _WELL_RE.match(str(well))
    if not m:
        raise MetadataError(f"{well!r} is not a well name (expected a row letter and a column number, e.g. A01)")
    letters, col = m.group(1).upper(), int(m.group(2))
    if len(letters) == 2 and (letters[0] != "A" or letters[1] > "F"):
        raise MetadataError(f"{well!r}: row {letters} does not exist on a plate (rows A..Z, AA..AF)")
    if not 1 <= col <= _MAX_COLUMNS:
        raise MetadataError(f"{well!r}: column {col} outside 1..{_MAX_COLUMNS}")
    return letters, col


def normalize_well(well: str) -> str:
    """Canonical well name: row letter(s) and a two-digit column.

    >>> normalize_well("a1"), normalize_well("H012"), normalize_well("P24")
    ('A01', 'H12', 'P24')
    """
    letters, col = split_well(well)
    return f"{letters}{col:02d}"


def well_from_row_column(row: str | int, column: str | int) -> str:
    """Well name from a row (letter or 1-based number) and a 1-based column.

    >>> well_from_row_column(2, 3), well_from_row_column("c", "10")
    ('B03', 'C10')
    """
    r = str(row).strip()
    letters = _row_letters(int(r)) if r.isdigit() else r.upper()
    return normalize_well(f"{letters}{int(str(column).strip())}")


# --- file names -------------------------------------------------------------------------
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a preset name or a regular expression with named groups.

    The expression must name ``well``, or both ``row`` and ``column``; it is
    matched case-insensitively with :func:`re.search` against the file name,
    or against the image's relative path when it contains ``/``.

    Raises
    ------
    MetadataError
        For an invalid expression or one without the needed groups.
    """
    if pattern in PRESETS:
        return re.compile(PRESETS[pattern], re.IGNORECASE)
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise MetadataError(
            f"filename pattern {pattern!r} is neither a preset ({sorted(PRESETS)} or 'auto') "
            f"nor a valid regular expression: {exc}") from None
    groups = set(rx.groupindex)
    if "well" not in groups and not {"row", "column"} <= groups:
        raise MetadataError(
            f"filename pattern {pattern!r} needs a named group (?P<well>...) or both (?P<row>...) "
            f"and (?P<column>...); it has {sorted(groups) or 'none'}")
    return rx


def _subject(image: str, rx: re.Pattern[str]) -> str:
    return image if "/" in rx.pattern else image.rsplit("/", 1)[-1]


def parse_filename(image: str, rx: re.Pattern[str]) -> dict[str, Any] | None:
    """Metadata of one image from its name; None when the pattern does not match.

    Parameters
    ----------
    image : str
        Path relative to the input root, ``/``-separated.
    rx : re.Pattern
        From :func:`compile_pattern`.

    Returns
    -------
    dict or None
        ``plate`` (None when the pattern has none), ``well``, ``row``,
        ``column``, ``field`` (int or None), ``channel`` (str or None).

    Raises
    ------
    MetadataError
        When the matched well cannot exist on a plate.

    >>> rx = compile_pattern("imagexpress")
    >>> parse_filename("run1/MyPlate_B03_s2_w1.tif", rx)["well"]
    'B03'
    """
    m = rx.search(_subject(image, rx))
    if m is None:
        return None
    g = {k: v for k, v in m.groupdict().items() if v not in (None, "")}
    try:
        if "well" in g:
            well = normalize_well(g["well"])
        elif "row" in g and "column" in g:
            well = well_from_row_column(g["row"], g["column"])
        else:
            return None
    except MetadataError as exc:
        raise MetadataError(f"{image}: {exc}") from None
    letters, col = split_well(well)
    field = g.get("field")
    return {
        "plate": g.get("plate"),
        "well": well,
        "row": letters,
        "column": col,
        "field": int(field) if field is not None and str(field).isdigit() else None,
        "channel": g.get("channel"),
    }


def choose_preset(images: Sequence[str]) -> tuple[str | None, int]:
    """The preset for a set of file names, and how many names it matches.

    Presets are tried in :data:`PRESET_ORDER` (instrument-specific first,
    ``generic`` last); the first one that matches at least 90 % as many names
    as the best one wins, so a permissive pattern does not beat the
    instrument's own over a stray file or two.

    >>> choose_preset(["r01c02f01p01-ch1sk1fk1fl1.tiff", "r01c02f02p01-ch1sk1fk1fl1.tiff"])
    ('operetta', 2)
    """
    counts = {}
    for name in PRESET_ORDER:
        rx = compile_pattern(name)
        n = 0
        for image in images:
            try:
                if parse_filename(image, rx) is not None:
                    n += 1
            except MetadataError:
                pass
        counts[name] = n
    best = max(counts.values(), default=0)
    if best == 0:
        return None, 0
    name = next(k for k in PRESET_ORDER if counts[k] >= 0.9 * best)
    return name, counts[name]


# --- OME-XML ----------------------------------------------------------------------------
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_ome_plate(xml: str, *, image_id: str | None = None) -> dict[str, Any]:
    """Plate, well and field of an image from OME-XML (empty dict when absent).

    The ``Plate/Well/WellSample`` that references ``image_id`` (default: the
    first ``Image`` of the document) is used; OME ``Row``/``Column`` are
    0-based, the field is the sample's position within its well (1-based).

    >>> xml = ('<OME><Plate Name="P7"><Well Row="1" Column="2"><WellSample Index="0">'
    ...        '<ImageRef ID="Image:0"/></WellSample></Well></Plate><Image ID="Image:0"/></OME>')
    >>> parse_ome_plate(xml)
    {'plate': 'P7', 'well': 'B03', 'row': 'B', 'column': 3, 'field': 1}
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    if image_id is None:
        first = next((el for el in root.iter() if _local(el.tag) == "Image"), None)
        image_id = first.get("ID") if first is not None else None
    for plate in (el for el in root.iter() if _local(el.tag) == "Plate"):
        for well in (el for el in plate if _local(el.tag) == "Well"):
            samples = [el for el in well if _local(el.tag) == "WellSample"]
            for pos, sample in enumerate(samples, start=1):
                refs = [el.get("ID") for el in sample if _local(el.tag) == "ImageRef"]
                if image_id is not None and image_id not in refs:
                    continue
                try:
                    w = well_from_row_column(int(well.get("Row", "")) + 1, int(well.get("Column", "")) + 1)
                except (ValueError, MetadataError):
                    return {}
                letters, col = split_well(w)
                return {"plate": plate.get("Name") or plate.get("ID") or "", "well": w, "row": letters,
                        "column": col, "field": pos}
    return {}


# --- per-image metadata table ----------------------------------------------------------
def empty_metadata(with_platemap: bool = True) -> pd.DataFrame:
    """Zero-row metadata table with the full schema (``image`` first)."""
    cols = {"image": "str", **METADATA_COLUMNS, **(PLATEMAP_COLUMNS if with_platemap else {})}
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in cols.items()})


def _folder_plate(image: str) -> str:
    return image.rsplit("/", 1)[0] if "/" in image else ""


def filename_metadata(images: Sequence[str], pattern: str = "auto", *,
                      ome: dict[str, dict[str, Any]] | None = None) -> tuple[pd.DataFrame, str | None]:
    """Plate / well / field / channel for each image, from its name (and OME-XML).

    Parameters
    ----------
    images : sequence of str
        Paths relative to the input root, ``/``-separated.
    pattern : str
        ``"auto"``, a preset name (:data:`PRESETS`) or a regular expression
        with named groups (see :func:`compile_pattern`).
    ome : dict, optional
        image -> :func:`parse_ome_plate` result; fills what the name does not give.

    Returns
    -------
    table : DataFrame
        One row per image, columns ``image`` + :data:`METADATA_COLUMNS`. The
        plate defaults to the image's folder (relative to the input root) when
        neither the name nor OME-XML gives one, so two folders never share a well.
    pattern_used : str or None
        The preset chosen by ``"auto"`` (None when no preset matched), else ``pattern``.

    Raises
    ------
    MetadataError
        When an explicit pattern does not match an image, or a well is impossible.
    """
    ome = ome or {}
    if pattern == "auto":
        name, n = choose_preset(images)
        rx = compile_pattern(name) if name else None
        used = name
        if name:
            log.info("file names: pattern %r matched %d of %d image(s)", name, n, len(images))
    else:
        rx = compile_pattern(pattern)
        used = pattern
    rows = []
    unmatched = []
    for image in images:
        meta = parse_filename(image, rx) if rx is not None else None
        if meta is None:
            unmatched.append(image)
            meta = {}
        o = ome.get(image) or {}
        for key in ("plate", "well", "row", "column", "field"):
            if meta.get(key) is None and o.get(key) not in (None, ""):
                meta[key] = o[key]
        if meta.get("plate") is None:
            meta["plate"] = _folder_plate(image)
        rows.append({"image": image, **{k: meta.get(k) for k in METADATA_COLUMNS}})
    if unmatched and pattern != "auto":
        missing = [i for i in unmatched if not (ome.get(i) or {}).get("well")]
        if missing:
            raise MetadataError(
                f"{missing[0]}: file name does not match the filename pattern {pattern!r}"
                + (f" (nor do {len(missing) - 1} other image(s))" if len(missing) > 1 else ""))
    elif unmatched and rx is not None:
        log.warning("%d image(s) do not match file-name pattern %r (first: %s); they have no well",
                    len(unmatched), used, unmatched[0])
    table = pd.DataFrame(rows, columns=["image", *METADATA_COLUMNS]) if rows else empty_metadata(False)
    return _typed(table, {"image": "str", **METADATA_COLUMNS}), used


def _typed(table: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    out = table.copy()
    for col, dtype in schema.items():
        if col not in out:
            out[col] = pd.Series([None] * len(out), index=out.index)
        if dtype == "str":
            out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                    else str(v)).astype("str")
        elif dtype == "Int64":
            out[col] = pd.array([None if _missing(v) else int(v) for v in out[col]], dtype="Int64")
        else:
            out[col] = pd.Series([float("nan") if _missing(v) else float(v) for v in out[col]],
                                 index=out.index, dtype=dtype)
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "") or bool(pd.isna(v))


def coerce_metadata(table: pd.DataFrame) -> pd.DataFrame:
    """Give a metadata table read back from CSV its schema (strings stay strings,
    empty cells become "" / NA / NaN); extra plate-map columns become strings."""
    schema = {"image": "str", **METADATA_COLUMNS, **PLATEMAP_COLUMNS}
    schema.update({c: "str" for c in table.columns if c not in schema})
    return _typed(table, schema)


# --- plate maps -------------------------------------------------------------------------
def _norm_header(name: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _role(value: str, where: str) -> str:
    key = value.strip().lower().replace("-", "_")
    if key == "":
        return "sample"
    if key in _ROLE_ALIASES:
        return _ROLE_ALIASES[key]
    key2 = key.replace("_", " ")
    if key2 in _ROLE_ALIASES:
        return _ROLE_ALIASES[key2]
    raise MetadataError(f"{where}: unknown role {value!r}; valid roles: {list(ROLES)}")


def _dose(value: str, where: str) -> float:
    if value == "":
        return float("nan")
    try:
        return float(value)
    except ValueError:
        raise MetadataError(
            f"{where}: dose {value!r} is not a number (put the unit in the condition or a column name)") from None


def _is_long(rows: list[list[str]]) -> bool:
    for row in rows:
        cells = [c for c in row if c != ""]
        if cells:
            return "well" in {_norm_header(c) for c in cells}
    return False


def _long_platemap(rows: list[list[str]], source: str) -> pd.DataFrame:
    start = next(i for i, r in enumerate(rows) if any(c != "" for c in r))
    header = [_norm_header(c) for c in rows[start]]
    width = len(header)
    keep = [j for j, h in enumerate(header) if h != ""]
    dup = sorted({header[j] for j in keep if [header[k] for k in keep].count(header[j]) > 1})
    if dup:
        raise MetadataError(f"{source}: duplicated column(s) {dup}")
    records = []
    for i, row in enumerate(rows[start + 1:], start=start + 2):
        row = (row + [""] * width)[:width]
        if all(row[j] == "" for j in keep):
            continue
        records.append({header[j]: row[j] for j in keep} | {"_line": i})
    table = pd.DataFrame(records, columns=[header[j] for j in keep] + ["_line"])
    out = []
    for rec in table.to_dict("records"):
        where = f"{source}, line {rec['_line']}"
        if rec.get("well", "") == "":
            raise MetadataError(f"{where}: empty well")
        try:
            well = normalize_well(rec["well"])
        except MetadataError as exc:
            raise MetadataError(f"{where}: {exc}") from None
        entry = {"plate": rec.get("plate", ""), "well": well,
                 "condition": rec.get("condition", ""),
                 "dose": _dose(rec.get("dose", ""), where),
                 "replicate": rec.get("replicate", ""),
                 "role": _role(rec.get("role", ""), where)}
        for k, v in rec.items():
            if k not in entry and k not in ("_line", "row", "column", "col"):
                entry[k] = v
        out.append(entry)
    has_plate = "plate" in table.columns
    if has_plate and any(e["plate"] == "" for e in out):
        line = next(r["_line"] for r in table.to_dict("records") if r.get("plate", "") == "")
        raise MetadataError(f"{source}, line {line}: empty plate (leave the plate column out to apply "
                            "the map to every plate)")
    return _finish_platemap(out, source, has_plate)


def _grid_header(row: list[str]) -> tuple[int, int] | None:
    """(first column index, number of plate columns) when ``row`` is 1..N for N in 12, 24, 48."""
    for j in range(len(row)):
        if row[j] == "1":
            n = 0
            while j + n < len(row) and row[j + n] == str(n + 1):
                n += 1
            if n in (12, 24, 48):
                return j, n
            return None
    return None


_GRID_ROWS = {12: 8, 24: 16, 48: 32}


def _grid_platemap(sheets: list[tuple[str, list[list[str]]]], source: str) -> pd.DataFrame:
    values: dict[str, dict[str, str]] = {}  # variable -> well -> value
    layout = None
    for sheet_name, rows in sheets:
        i = 0
        while i < len(rows):
            hdr = _grid_header(rows[i])
            if hdr is None:
                i += 1
                continue
            j0, ncol = hdr
            nrow = _GRID_ROWS[ncol]
            if layout is None:
                layout = (nrow, ncol)
            elif layout != (nrow, ncol):
                raise MetadataError(f"{source}: grids of different plate sizes ({layout[0]}x{layout[1]} "
                                    f"and {nrow}x{ncol})")
            # the variable's name: the cell left of the "1", or the line above the grid
            name = rows[i][j0 - 1] if j0 >= 1 and rows[i][j0 - 1] else ""
            if not name and i > 0:
                name = next((c for c in rows[i - 1] if c), "")
            if not name:
                known = _norm_header(sheet_name) if sheet_name else ""
                name = known if known in PLATEMAP_COLUMNS else ("condition" if "condition" not in values else "")
            if not name:
                raise MetadataError(f"{source}: grid at line {i + 1} has no name; write the variable "
                                    f"(condition, dose, replicate, role) in its top-left cell")
            var = _norm_header(name)
            if var in values:
                raise MetadataError(f"{source}: two grids named {var!r}")
            grid: dict[str, str] = {}
            for k in range(nrow):
                r = i + 1 + k
                expected = _row_letters(k + 1)
                line = rows[r] if r < len(rows) else []
                label = line[j0 - 1].upper() if j0 >= 1 and len(line) >= j0 else ""
                if label != expected:
                    raise MetadataError(
                        f"{source}: grid {var!r} line {r + 1}: expected row {expected!r}, found {label!r} "
                        f"(a {nrow}x{ncol} grid needs rows A..{_row_letters(nrow)})")
                for c in range(ncol):
                    v = line[j0 + c] if j0 + c < len(line) else ""
                    if v != "":
                        grid[f"{expected}{c + 1:02d}"] = v
            values[var] = grid
            i += 1 + nrow
    if not values:
        raise MetadataError(f"{source}: no 'well' column and no 8x12 / 16x24 grid (a header row 1..12 "
                            f"or 1..24 with row letters A.. below it) found")
    wells = sorted(set().union(*[set(g) for g in values.values()]),
                   key=lambda w: (_row_index(split_well(w)[0]), split_well(w)[1]))
    out = []
    for well in wells:
        where = f"{source}, well {well}"
        entry: dict[str, Any] = {"plate": "", "well": well,
                                 "condition": values.get("condition", {}).get(well, ""),
                                 "dose": _dose(values.get("dose", {}).get(well, ""), where),
                                 "replicate": values.get("replicate", {}).get(well, ""),
                                 "role": _role(values.get("role", {}).get(well, ""), where)}
        for var, grid in values.items():
            if var not in entry:
                entry[var] = grid.get(well, "")
        out.append(entry)
    return _finish_platemap(out, source, has_plate=False)


def _finish_platemap(entries: list[dict[str, Any]], source: str, has_plate: bool) -> pd.DataFrame:
    if not entries:
        raise MetadataError(f"{source}: plate map lists no wells")
    table = pd.DataFrame(entries)
    keys = ["plate", "well"]
    dup = table[table.duplicated(keys, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        where = f"plate {first['plate']!r}, " if has_plate else ""
        raise MetadataError(f"{source}: {where}well {first['well']} is listed more than once")
    extras = [c for c in table.columns if c not in ("plate", "well", *PLATEMAP_COLUMNS)]
    table = _typed(table, {"plate": "str", "well": "str", **PLATEMAP_COLUMNS, **{c: "str" for c in extras}})
    table = table[["plate", "well", *PLATEMAP_COLUMNS, *extras]]
    table.attrs["has_plate"] = bool(has_plate)
    table.attrs["source"] = source
    return table.reset_index(drop=True)


def platemap_from_rows(sheets: Sequence[tuple[str, Sequence[Sequence[Any]]]], *,
                       source: str = "plate map") -> pd.DataFrame:
    """Parse a plate map given as the cells of one or more sheets.

    Parameters
    ----------
    sheets : sequence of (name, rows)
        Each sheet's rows of cells (CSV: one sheet with name ""). A sheet
        whose first non-empty row has a ``well`` header is a *long* table:
        columns ``well`` (required), ``plate``, ``condition``, ``dose``,
        ``replicate``, ``role`` and any others (kept as extra columns).
        Otherwise the sheets hold *grids*: a header row ``1 .. 12`` (or
        ``1 .. 24``, ``1 .. 48``) with the row letters below it, the variable's
        name in the top-left cell (or on the line above, or the sheet name).
    source : str
        Named in error messages.

    Returns
    -------
    DataFrame
        ``plate`` ("" = every plate), ``well``, ``condition``, ``dose`` (float),
        ``replicate``, ``role`` (one of :data:`ROLES`), extra columns.

    Raises
    ------
    MetadataError
        Bad well name, unknown role, non-numeric dose, duplicated well,
        malformed grid, nothing found.

    >>> pm = platemap_from_rows([("", [["well", "condition", "role"], ["a1", "DMSO", "neg"]])])
    >>> pm.loc[0, ["well", "role"]].tolist()
    ['A01', 'negative_control']
    """
    cleaned = [(name, [[_cell(c) for c in row] for row in rows]) for name, rows in sheets]
    non_empty = [(n, r) for n, r in cleaned if any(any(c for c in row) for row in r)]
    if not non_empty:
        raise MetadataError(f"{source}: plate map is empty")
    if _is_long(non_empty[0][1]):
        if len(non_empty) > 1:
            log.info("%s: long-format plate map; using the first sheet only", source)
        return _long_platemap(non_empty[0][1], source)
    return _grid_platemap(non_empty, source)


def read_platemap(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a plate map (CSV/TSV, or ``.xlsx`` with openpyxl); see :func:`platemap_from_rows`.

    Raises
    ------
    MetadataError
        When the file is missing or unreadable, or its content is invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise MetadataError(f"{p}: plate map not found")
    ext = p.suffix.lower()
    try:
        if ext in (".xlsx", ".xlsm"):
            try:
                import openpyxl  # noqa: F401
            except ImportError:
                raise MetadataError(f"{p}: reading .xlsx plate maps needs openpyxl (pip install openpyxl)") from None
            book = pd.read_excel(p, sheet_name=None, header=None, dtype=object)
            sheets = [(str(name), df.where(df.notna(), None).values.tolist()) for name, df in book.items()]
        elif ext in (".csv", ".tsv", ".txt"):
            sep = "\t" if ext == ".tsv" else None
            df = pd.read_csv(p, header=None, dtype=str, keep_default_na=False, sep=sep, engine="python",
                             skip_blank_lines=False, encoding="utf-8-sig")
            sheets = [("", df.values.tolist())]
        else:
            raise MetadataError(f"{p}: plate map must be .csv, .tsv or .xlsx, got {ext or 'no extension'!r}")
    except MetadataError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MetadataError(f"{p}: cannot read plate map: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return platemap_from_rows(sheets, source=str(p))


def join_platemap(metadata: pd.DataFrame, platemap: pd.DataFrame | None) -> pd.DataFrame:
    """Add the plate-map columns to per-image metadata.

    A map without plates applies to every plate. Every image must have a
    well listed in the map (for its plate when the map names plates).

    Raises
    ------
    MetadataError
        When an image has no well, or its (plate, well) is not in the map.
    """
    if platemap is None:
        out = metadata.copy()
        for col, dtype in PLATEMAP_COLUMNS.items():
            out[col] = pd.Series([float("nan")] * len(out) if dtype == "float64" else [""] * len(out),
                                 index=out.index, dtype=dtype)
        return out
    source = platemap.attrs.get("source", "plate map")
    has_plate = bool(platemap.attrs.get("has_plate", False)) and (platemap["plate"] != "").any()
    no_well = metadata[metadata["well"] == ""]
    if len(no_well):
        raise MetadataError(
            f"{no_well['image'].iloc[0]}: no well in the file name, so the plate map {source} cannot be "
            "applied (use --filename-pattern with a (?P<well>...) group)"
            + (f"; {len(no_well) - 1} more image(s) like it" if len(no_well) > 1 else ""))
    keys = ["plate", "well"] if has_plate else ["well"]
    pm = platemap if has_plate else platemap.drop(columns=["plate"])
    if has_plate:
        unknown_plates = sorted(set(metadata["plate"]) - set(platemap["plate"]))
        if unknown_plates:
            raise MetadataError(
                f"{source}: no entry for plate(s) {unknown_plates[:5]}; the map names plates "
                f"{sorted(set(platemap['plate']))[:5]}")
    merged = metadata.merge(pm, on=keys, how="left", indicator=True, validate="many_to_one")
    missing = merged[merged["_merge"] != "both"]
    if len(missing):
        first = missing.iloc[0]
        n = missing["well"].nunique()
        where = f"plate {first['plate']!r} " if has_plate else ""
        raise MetadataError(
            f"{first['image']}: {where}well {first['well']} is not in the plate map {source}"
            + (f" ({n} well(s) missing in all)" if n > 1 else ""))
    merged = merged.drop(columns=["_merge"])
    unused = len(platemap) - len(platemap.merge(metadata[keys].drop_duplicates(), on=keys))
    if unused:
        log.info("plate map %s: %d well(s) have no image", source, unused)
    return merged.reset_index(drop=True)


def plate_summary(metadata: pd.DataFrame) -> str:
    """One line: how many plates, wells and fields the metadata holds."""
    wells = metadata[metadata["well"] != ""]
    n_plates = metadata["plate"].nunique()
    return (f"{len(metadata)} image(s), {n_plates} plate(s), "
            f"{wells.groupby(['plate', 'well']).ngroups if len(wells) else 0} well(s)")

