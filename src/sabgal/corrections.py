"""A person's corrections to per-cell calls, kept beside the results.

``DIR/corrections.csv`` has one row per change: ``image``, ``cell_id``,
``field`` (``sabgal_positive``, ``enlarged``, ``senescent`` or ``deleted``),
``old``, ``new``. Later rows win. The table rebuild (``sabgal run`` and the
napari plugin) applies them after the automatic calls, so a rerun never
loses a reviewer's work.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sabgal.classify import SENESCENT_RULES

__all__ = ["CORRECTION_FIELDS", "CORRECTION_COLUMNS", "load_corrections", "save_corrections",
           "apply_corrections"]

CORRECTION_FIELDS = ("sabgal_positive", "enlarged", "senescent", "deleted")
CORRECTION_COLUMNS = ["image", "cell_id", "field", "old", "new"]


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(v)


def load_corrections(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``corrections.csv`` (an empty table when there is none).

    Raises
    ------
    ValueError
        When a column is missing or a field is unknown (message names the file).
    """
    p = Path(path)
    if not p.exists():
        return pd.DataFrame({c: pd.Series(dtype="object") for c in CORRECTION_COLUMNS})
    table = pd.read_csv(p, dtype={"image": str})
    missing = [c for c in CORRECTION_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; expected {CORRECTION_COLUMNS}")
    bad = sorted(set(table["field"]) - set(CORRECTION_FIELDS))
    if bad:
        raise ValueError(f"{p}: unknown field(s) {bad}; valid: {list(CORRECTION_FIELDS)}")
    table["cell_id"] = table["cell_id"].astype(np.int64)
    table["old"] = table["old"].map(_as_bool)
    table["new"] = table["new"].map(_as_bool)
    return table[CORRECTION_COLUMNS]


def save_corrections(path: str | os.PathLike[str], corrections: pd.DataFrame) -> None:
    """Write the corrections table atomically."""
    from sabgal.io import write_table

    write_table(path, corrections[CORRECTION_COLUMNS])


def apply_corrections(cells: pd.DataFrame, corrections: pd.DataFrame, *,
                      rule: str = "positive_and_enlarged") -> pd.DataFrame:
    """Apply corrections to a classified table.

    Flips of ``sabgal_positive`` / ``enlarged`` re-derive ``senescent`` by the
    rule; an explicit ``senescent`` correction then overrides it; ``deleted``
    removes the cell. Adds a boolean ``corrected`` column.
    """
    out = cells.copy()
    out["corrected"] = False
    if corrections is None or len(corrections) == 0 or len(out) == 0:
        return out
    last = corrections.drop_duplicates(["image", "cell_id", "field"], keep="last")
    index = {(img, int(cid)): i for i, (img, cid) in enumerate(zip(out["image"], out["cell_id"]))}
    drop = []
    explicit_sen = []
    rederive = np.zeros(len(out), dtype=bool)
    cols = {c: out.columns.get_loc(c) for c in ("sabgal_positive", "enlarged", "senescent", "corrected")}
    for img, cid, fld, new in zip(last["image"], last["cell_id"], last["field"], last["new"]):
        i = index.get((img, int(cid)))
        if i is None:
            continue  # the cell no longer exists (labels were re-made)
        out.iat[i, cols["corrected"]] = True
        if fld == "deleted":
            if new:
                drop.append(i)
        elif fld == "senescent":
            explicit_sen.append((i, bool(new)))
        else:
            out.iat[i, cols[fld]] = bool(new)
            rederive[i] = True
    if rederive.any():
        pos = out["sabgal_positive"].to_numpy(dtype=bool)
        enl = out["enlarged"].to_numpy(dtype=bool)
        sen = out["senescent"].to_numpy(dtype=bool).copy()
        sen[rederive] = SENESCENT_RULES[rule](pos, enl)[rederive]
        out["senescent"] = sen
    for i, v in explicit_sen:
        out.iat[i, cols["senescent"]] = v
    if drop:
        out = out.drop(out.index[drop]).reset_index(drop=True)
    return out
