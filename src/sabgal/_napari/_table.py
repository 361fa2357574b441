"""Per-cell table of the image under review, linked to its labels layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QTableView

from sabgal._napari._layers import CALL_COLORS

__all__ = ["CellTable", "TABLE_COLUMNS"]

# (column, header, format) shown in the table; the full set is in layer.features.
TABLE_COLUMNS = [
    ("cell_id", "cell", "{:d}"),
    ("call", "call", "{}"),
    ("corrected", "corr.", "{}"),
    ("xgal_od_perinuclear_p60", "X-gal perinuclear p60", "{:.3f}"),
    ("xgal_od_core_p60", "X-gal core p60", "{:.3f}"),
    ("xgal_od_p90", "X-gal p90", "{:.3f}"),
    ("xgal_od_mean", "X-gal mean", "{:.3f}"),
    ("area_px", "area px", "{:d}"),
    ("area_um2", "area µm²", "{:.0f}"),
    ("form_factor", "form f.", "{:.2f}"),
    ("has_nucleus", "nucleus", "{}"),
    ("touches_border", "border", "{}"),
]


def _display(values: np.ndarray, fmt: str) -> list[str]:
    out = []
    for v in values.tolist():
        if isinstance(v, bool):
            out.append("yes" if v else "")
        elif isinstance(v, float) and not np.isfinite(v):
            out.append("")
        else:
            try:
                out.append(fmt.format(v))
            except (ValueError, TypeError):
                out.append(str(v))
    return out


class _FrameModel(QAbstractTableModel):
    """Read-only model of a cells table; display strings are made once per
    table so that scrolling and sorting do not touch pandas."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._columns: list[tuple[str, str, str]] = []
        self._ids = np.zeros(0, dtype=np.int64)
        self._text: list[list[str]] = []
        self._keys: list[list] = []
        self._brushes: list[QBrush | None] = []

    def set_table(self, table: pd.DataFrame) -> bool:
        """Show ``table``; returns whether the set of columns changed."""
        cols = [c for c in TABLE_COLUMNS if c[0] in table]
        if "area_um2" in table and table["area_um2"].isna().all():
            cols = [c for c in cols if c[0] != "area_um2"]
        changed = [c[0] for c in cols] != [c[0] for c in self._columns]
        self.beginResetModel()
        self._columns = cols
        self._ids = table["cell_id"].to_numpy(dtype=np.int64) if "cell_id" in table else np.zeros(0, np.int64)
        self._text = [_display(table[c].to_numpy(), fmt) for c, _, fmt in cols]
        self._keys = [table[c].tolist() for c, _, _ in cols]
        brushes = {k: QBrush(QColor.fromRgbF(r, g, b)) for k, (r, g, b, _a) in CALL_COLORS.items()}
        self._brushes = [brushes.get(str(v)) for v in table["call"]] if "call" in table else []
        self.endResetModel()
        return changed

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self._ids)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._columns)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self._columns[section][1]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text[c][r]
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return self._keys[c][r]
        if role == Qt.ItemDataRole.ForegroundRole and self._columns[c][0] == "call" and self._brushes:
            return self._brushes[r]
        return None

    def row_of(self, cell_id: int) -> int | None:
        hits = np.flatnonzero(self._ids == cell_id)
        return int(hits[0]) if len(hits) else None

    def cell_at(self, row: int) -> int:
        return int(self._ids[row])


class CellTable(QTableView):
    """Sortable table of cells; emits :attr:`cell_selected` (cell id) when a
    row is chosen, and selects a cell's row on :meth:`select_cell`."""

    cell_selected = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._model = _FrameModel(self)
        self._proxy = QSortFilterProxyModel(self)
        self._proxy.setSourceModel(self._model)
        self._proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.setModel(self._proxy)
        self.setSortingEnabled(True)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(20)
        self.horizontalHeader().setStretchLastSection(True)
        self.horizontalHeader().setResizeContentsPrecision(200)
        self._quiet = False
        self.selectionModel().selectionChanged.connect(self._on_selection)

    def set_table(self, table: pd.DataFrame, *, keep: int | None = None) -> None:
        """Show ``table`` (columns of :data:`TABLE_COLUMNS`); keep cell ``keep`` selected."""
        self._quiet = True
        try:
            if self._model.set_table(table):
                self.resizeColumnsToContents()  # only when the columns change: it reads rows
            if keep is not None:
                self.select_cell(keep, scroll=False)
        finally:
            self._quiet = False

    def row_count(self) -> int:
        return self._model.rowCount()

    def selected_cell(self) -> int | None:
        rows = self.selectionModel().selectedRows()
        if not rows:
            return None
        return self._model.cell_at(self._proxy.mapToSource(rows[0]).row())

    def select_cell(self, cell_id: int | None, *, scroll: bool = True) -> None:
        """Select a cell's row without emitting :attr:`cell_selected`."""
        quiet, self._quiet = self._quiet, True
        try:
            row = None if cell_id is None else self._model.row_of(int(cell_id))
            if row is None:
                self.clearSelection()
                return
            index = self._proxy.mapFromSource(self._model.index(row, 0))
            self.selectRow(index.row())
            if scroll:
                self.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)
        finally:
            self._quiet = quiet

    def _on_selection(self, *_args) -> None:
        if self._quiet:
            return
        cid = self.selected_cell()
        if cid is not None:
            self.cell_selected.emit(cid)
