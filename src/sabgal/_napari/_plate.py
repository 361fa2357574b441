"""Plate review: a well-grid heat map of the fraction of SA-β-gal positive
cells, and the list of a results folder's images."""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QListWidget,
                            QListWidgetItem, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from sabgal._napari._review import PlateGrid, plate_grid

__all__ = ["PlateView", "heat_color"]

_EMPTY = QColor(60, 60, 60)


def heat_color(fraction: float) -> QColor:
    """Viridis colour of a fraction in [0, 1] (dark grey when NaN)."""
    if not np.isfinite(fraction):
        return _EMPTY
    from napari.utils.colormaps import ensure_colormap

    r, g, b, _a = ensure_colormap("viridis").map(np.array([float(np.clip(fraction, 0, 1))]))[0]
    return QColor.fromRgbF(float(r), float(g), float(b))


def _percent(k, n) -> str:
    return f"{100 * k / n:.0f} %" if n else "–"


class PlateView(QWidget):
    """Heat map of ``fraction_sabgal_positive`` per well (when ``images.csv``
    has ``plate`` / ``well`` columns) above a list of every image.

    Emits :attr:`image_chosen` with an image name when a well or a list row
    is clicked. A well with several fields opens its first field, then the
    next one on each further click.
    """

    image_chosen = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._grids: list[PlateGrid] = []
        self._images = pd.DataFrame()
        self._current: str | None = None
        self._quiet = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.plate_combo = QComboBox()
        self.plate_combo.currentIndexChanged.connect(self._show_grid)
        top.addWidget(QLabel("Plate"))
        top.addWidget(self.plate_combo, 1)
        self._plate_row = QWidget()
        self._plate_row.setLayout(top)
        lay.addWidget(self._plate_row)
        self.grid = QTableWidget()
        self.grid.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.cellClicked.connect(self._on_well)
        # the current well gets a white frame; its heat colour stays visible
        self.grid.setStyleSheet("QTableWidget::item:selected { border: 2px solid white; "
                                "background-color: transparent; }")
        lay.addWidget(self.grid)
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.legend)
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._on_row)
        lay.addWidget(self.list, 1)

    # ---------------------------------------------------------------- content
    def set_images(self, images: pd.DataFrame) -> None:
        """Show an ``images.csv`` table (summary columns per image)."""
        self._images = images.reset_index(drop=True)
        self._grids = plate_grid(self._images) or []
        self._quiet = True
        try:
            self.plate_combo.clear()
            for g in self._grids:
                self.plate_combo.addItem(g.plate or "(plate)")
            self._plate_row.setVisible(len(self._grids) > 1)
            self.grid.setVisible(bool(self._grids))
            self.legend.setVisible(bool(self._grids))
            self._fill_list()
            self._show_grid()
        finally:
            self._quiet = False

    def update_image(self, image: str, summary: dict[str, float]) -> None:
        """Replace one image's counts (after a correction) and redraw."""
        sel = self._images["image"] == image
        if not sel.any():
            return
        for k, v in summary.items():
            if k in self._images:
                self._images.loc[sel, k] = v
        current = self._current
        self.set_images(self._images)
        self.set_current(current)

    def _fill_list(self) -> None:
        self.list.clear()
        for _, row in self._images.iterrows():
            name = str(row["image"])
            if row.get("status", "ok") == "ok":
                n, k = int(row.get("n_cells", 0) or 0), int(row.get("n_sabgal_positive", 0) or 0)
                where = f"{row['well']}  " if "well" in row and isinstance(row["well"], str) else ""
                text = f"{where}{name}   {k}/{n} positive ({_percent(k, n)})"
            else:
                text = f"{name}   failed: {row.get('error', '')}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, name)
            if row.get("status", "ok") != "ok":
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
            self.list.addItem(item)

    def _show_grid(self, *_args) -> None:
        i = self.plate_combo.currentIndex()
        if not self._grids or i < 0:
            self.grid.clear()
            return
        g = self._grids[i]
        self.grid.clear()
        self.grid.setRowCount(g.n_rows)
        self.grid.setColumnCount(g.n_cols)
        self.grid.setVerticalHeaderLabels([g.row_name(r) for r in range(g.n_rows)])
        self.grid.setHorizontalHeaderLabels([str(c + 1) for c in range(g.n_cols)])
        size = 30 if g.n_cols <= 12 else (20 if g.n_cols <= 24 else 12)
        font = self.grid.font()
        font.setPointSize(7 if size < 30 else 8)
        for r in range(g.n_rows):
            self.grid.setRowHeight(r, size)
        for c in range(g.n_cols):
            self.grid.setColumnWidth(c, size)
        for r in range(g.n_rows):
            for c in range(g.n_cols):
                f = g.fraction[r, c]
                item = QTableWidgetItem("" if not np.isfinite(f) or size < 20 else f"{100 * f:.0f}")
                item.setFont(font)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setBackground(QBrush(heat_color(f)))
                item.setForeground(QBrush(QColor("black" if np.isfinite(f) and f > 0.55 else "white")))
                names = g.images.get((r, c), [])
                well = f"{g.row_name(r)}{c + 1:02d}"
                if names:
                    item.setToolTip(f"{well}: {_percent(np.nan_to_num(f) * g.n_cells[r, c], g.n_cells[r, c])} "
                                    f"positive of {g.n_cells[r, c]} cells\n" + "\n".join(names))
                else:
                    item.setToolTip(f"{well}: no image")
                self.grid.setItem(r, c, item)
        width = self.grid.verticalHeader().width() + g.n_cols * size + 4
        height = self.grid.horizontalHeader().height() + g.n_rows * size + 4
        self.grid.setFixedHeight(min(height, 420))
        self.grid.setMinimumWidth(min(width, 460))
        self.legend.setText(_legend_html())
        self.set_current(self._current)

    # ------------------------------------------------------------- navigation
    def set_current(self, image: str | None) -> None:
        """Mark ``image`` as the one on view (list row and well)."""
        self._current = image
        quiet, self._quiet = self._quiet, True
        try:
            for i in range(self.list.count()):
                if self.list.item(i).data(Qt.ItemDataRole.UserRole) == image:
                    self.list.setCurrentRow(i)
                    break
            g = self._grids[self.plate_combo.currentIndex()] if self._grids else None
            if g is not None:
                rc = next((rc for rc, names in g.images.items() if image in names), None)
                if rc is None:  # on another plate
                    for k, other in enumerate(self._grids):
                        if any(image in names for names in other.images.values()):
                            if k != self.plate_combo.currentIndex():
                                self.plate_combo.setCurrentIndex(k)
                                return
                    self.grid.clearSelection()
                else:
                    self.grid.setCurrentCell(*rc)
        finally:
            self._quiet = quiet

    def image_names(self) -> list[str]:
        return self._images["image"].astype(str).tolist() if len(self._images) else []

    def _on_row(self, row: int) -> None:
        if self._quiet or row < 0:
            return
        name = self.list.item(row).data(Qt.ItemDataRole.UserRole)
        if name != self._current:
            self.image_chosen.emit(name)

    def _on_well(self, r: int, c: int) -> None:
        if self._quiet or not self._grids:
            return
        names = self._grids[self.plate_combo.currentIndex()].images.get((r, c), [])
        ok = set(self._images.loc[self._images.get("status", pd.Series("ok", index=self._images.index))
                                  .eq("ok"), "image"].astype(str))
        names = [n for n in names if n in ok]
        if not names:
            return
        nxt = names[(names.index(self._current) + 1) % len(names)] if self._current in names else names[0]
        if nxt != self._current:
            self.image_chosen.emit(nxt)


def _legend_html() -> str:
    stops = "".join(f'<span style="background-color:{heat_color(f).name()}">&nbsp;&nbsp;&nbsp;</span>'
                    for f in np.linspace(0, 1, 11))
    return f"<small>SA-β-gal positive: 0 % {stops} 100 % (pooled fields; grey: no image)</small>"
