"""The sabgal dock widget: analyse, tune thresholds, correct calls, review plates.

A thin adapter over :mod:`sabgal._napari._review`: every number shown comes
from the same functions as ``sabgal run``; this module only moves data
between them and the viewer. The results-folder part (plate tab, image
navigation) is in :mod:`sabgal._napari._folder`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                            QHBoxLayout, QLabel, QProgressBar, QPushButton, QSlider, QTabWidget,
                            QVBoxLayout, QWidget)

from sabgal import classify
from sabgal._napari import _layers
from sabgal._napari._folder import FolderReview
from sabgal._napari._review import ImageReview, ResultsFolder, analysis_steps, tuned_config_toml
from sabgal._napari._table import CellTable
from sabgal.config import ConfigError, load_config, preset_names
from sabgal.io import write_table

log = logging.getLogger(__name__)

__all__ = ["SabgalWidget", "CLICK_ACTIONS"]

# What a click on a cell does: (label in the combo box, corrections field or None).
CLICK_ACTIONS = (
    ("flip SA-β-gal positive", "sabgal_positive"),
    ("flip enlarged", "enlarged"),
    ("flip senescent", "senescent"),
    ("delete / restore the object", "deleted"),
    ("only select it", None),
)
_SLIDER_STEPS = 1000
_OD_MIN, _OD_MAX = 0.01, 2.0  # range of the log-scaled positivity slider (OD)


def _hex(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _legend_html() -> str:
    names = {"negative": "negative", "enlarged": "enlarged only", "positive": "SA-β-gal+ only",
             "senescent": "senescent", "deleted": "deleted"}
    return "  ".join(f'<span style="color:{_hex(_layers.CALL_COLORS[k])}">&#9632;</span>&nbsp;{v}'
                     for k, v in names.items())


class SabgalWidget(FolderReview, QWidget):
    """Dock widget of the sabgal plugin (see the README, "napari plugin")."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.review: ImageReview | None = None
        self.results: ResultsFolder | None = None
        self.bound_to_results = False  # the review is an image of self.results
        self._layers: dict[str, Any] = {}
        self._worker = None
        self._prep_worker = None
        self._prep_next: tuple | None = None  # (review, rgb, nuclear, encoding) waiting for _prep_worker
        self._pending_edit = False
        self._selected: int | None = None
        self._features = None
        self._table_stale = False
        self._edit_timer = QTimer(self)
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(250)
        self._edit_timer.timeout.connect(self.apply_label_edits)
        self._build_ui()
        self._connect_viewer()
        self.reset_choices()
        self._adopt_existing_layers()
        self._update_enabled()

    # ================================================================== UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)
        self.counts_label = QLabel("No image analysed yet.")
        self.counts_label.setTextFormat(Qt.TextFormat.RichText)
        self.counts_label.setWordWrap(True)
        root.addWidget(self.counts_label)
        legend = QLabel(_legend_html())
        legend.setTextFormat(Qt.TextFormat.RichText)
        legend.setWordWrap(True)
        root.addWidget(legend)
        self.tabs = QTabWidget()
        root.addWidget(self.tabs, 1)
        self.tabs.addTab(self._build_analyse_tab(), "Analyse")
        self.tabs.addTab(self._build_calls_tab(), "Calls")
        self.tabs.addTab(self._build_plate_tab(), "Plate")
        self.table = CellTable()
        self.table.cell_selected.connect(lambda cid: self.select_cell(cid, center=True))
        self.tabs.addTab(self.table, "Cells")
        self.tabs.currentChanged.connect(self._on_tab)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)

    def _build_analyse_tab(self) -> QWidget:
        w = QWidget()
        form = QFormLayout(w)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("RGB brightfield image layer to analyse")
        self.image_combo.currentIndexChanged.connect(self._on_image_choice)
        self.nuclear_combo = QComboBox()
        self.nuclear_combo.setToolTip("Nuclear fluorescence (DAPI/Hoechst) of the same field, if any")
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(preset_names())
        if "default" in preset_names():
            self.preset_combo.setCurrentText("default")
        self.preset_combo.setToolTip("Configuration preset (src/sabgal/configs/*.toml)")
        self.preset_combo.currentTextChanged.connect(self._load_preset)
        self.diameter_spin = self._spin(0, 500, 1, 0, "0 = estimate from the image")
        self.diameter_spin.setSpecialValueText("auto")
        self.reach_spin = self._spin(1, 50, 1, 8, "How far a cell may extend, in nucleus diameters")
        self.sensitivity_spin = self._spin(0.25, 4, 2, 1, ">1 grows cells into fainter cytoplasm")
        self.pixel_spin = self._spin(0, 100, 4, 0, "µm per pixel; 0 = from the file (or unknown)")
        self.pixel_spin.setSpecialValueText("from file")
        form.addRow("Image", self.image_combo)
        form.addRow("Nuclear image", self.nuclear_combo)
        form.addRow("Preset", self.preset_combo)
        form.addRow("Nucleus diameter (px)", self.diameter_spin)
        form.addRow("Cell reach (nuclei)", self.reach_spin)
        form.addRow("Foreground sensitivity", self.sensitivity_spin)
        form.addRow("Pixel size (µm)", self.pixel_spin)
        row = QHBoxLayout()
        self.run_button = QPushButton("Analyse")
        self.run_button.clicked.connect(self.run_analysis)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress_label = QLabel("")
        form.addRow(self.progress)
        form.addRow(self.progress_label)
        self._load_preset(self.preset_combo.currentText())
        return w

    @staticmethod
    def _spin(lo, hi, decimals, value, tip) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setDecimals(decimals)
        s.setSingleStep(10 ** -decimals if decimals else 1)
        s.setValue(value)
        s.setToolTip(tip)
        return s

    def _build_calls_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        box = QGroupBox("Thresholds (re-classify without re-segmenting)")
        form = QFormLayout(box)
        self.measure_label = QLabel("X-gal p90 (OD) >")
        self.pos_slider = QSlider(Qt.Orientation.Horizontal)
        self.pos_slider.setRange(0, _SLIDER_STEPS)
        self.pos_spin = self._spin(0.001, 5, 3, 0.15, "SA-β-gal positive above this X-gal optical density")
        self.pos_spin.setSingleStep(0.005)
        self.pos_slider.valueChanged.connect(self._on_slider)
        self._drag_timer = QTimer(self)
        self._drag_timer.setSingleShot(True)
        self._drag_timer.setInterval(60)
        self._drag_timer.timeout.connect(self._apply_dragged_threshold)
        self.pos_slider.sliderReleased.connect(self._apply_dragged_threshold)
        self.pos_spin.valueChanged.connect(self._on_positive)
        prow = QHBoxLayout()
        prow.addWidget(self.pos_slider, 1)
        prow.addWidget(self.pos_spin)
        form.addRow(self.measure_label, prow)
        self.enlarged_spin = self._spin(1.01, 10, 2, 1.8, "Enlarged above this × median area of the "
                                        "image's SA-β-gal negative cells")
        self.enlarged_spin.setSingleStep(0.05)
        self.enlarged_spin.valueChanged.connect(self._on_enlarged)
        form.addRow("Enlarged: area > × negative median", self.enlarged_spin)
        self.rule_combo = QComboBox()
        self.rule_combo.addItems(sorted(classify.SENESCENT_RULES))
        self.rule_combo.currentTextChanged.connect(self._on_rule)
        form.addRow("Senescent rule", self.rule_combo)
        self.threshold_source = QLabel("")
        form.addRow(self.threshold_source)
        brow = QHBoxLayout()
        self.reset_button = QPushButton("Reset thresholds")
        self.reset_button.clicked.connect(self.reset_thresholds)
        self.export_config_button = QPushButton("Export config…")
        self.export_config_button.setToolTip("Save a TOML config with these thresholds for `sabgal run --config`")
        self.export_config_button.clicked.connect(lambda: self.export_config())
        brow.addWidget(self.reset_button)
        brow.addWidget(self.export_config_button)
        form.addRow(brow)
        lay.addWidget(box)

        box = QGroupBox("Corrections")
        form = QFormLayout(box)
        self.click_combo = QComboBox()
        self.click_combo.addItems([a for a, _ in CLICK_ACTIONS])
        form.addRow("Click on a cell to", self.click_combo)
        hint = QLabel("Missed a cell? Select the cells layer, press M for a new label and paint it; erase a "
                      "false object with label 0. Edited cells are re-measured at once.")
        hint.setWordWrap(True)
        form.addRow(hint)
        self.corrections_label = QLabel("")
        self.corrections_label.setWordWrap(True)
        form.addRow(self.corrections_label)
        brow = QHBoxLayout()
        self.export_cells_button = QPushButton("Export cells…")
        self.export_cells_button.setToolTip("Save the per-cell table with the corrected calls (CSV)")
        self.export_cells_button.clicked.connect(lambda: self.export_cells())
        brow.addWidget(self.export_cells_button)
        form.addRow(brow)
        lay.addWidget(box)
        lay.addStretch(1)
        return w

    def _update_enabled(self) -> None:
        has = self.review is not None
        running = self._worker is not None
        for wdg in (self.pos_slider, self.pos_spin, self.enlarged_spin, self.rule_combo, self.reset_button,
                    self.export_config_button, self.export_cells_button, self.click_combo):
            wdg.setEnabled(has)
        self.run_button.setEnabled(not running and self.image_combo.count() > 0)
        self.cancel_button.setEnabled(running)
        names = self.plate.image_names()
        self.prev_button.setEnabled(bool(names))
        self.next_button.setEnabled(bool(names))
        self.rebuild_button.setEnabled(self.results is not None)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status_label.setStyleSheet("color: #ff6060;" if error else "")
        self.status_label.setText(text)
        (log.warning if error else log.info)("%s", text)

    # ============================================================ viewer
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layer_inserted)
        ev.removed.connect(self._on_layer_removed)
        ev.reordered.connect(self.reset_choices)
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        viewer, callback = self.viewer, self._on_mouse

        def _detach(*_):
            if callback in viewer.mouse_drag_callbacks:
                viewer.mouse_drag_callbacks.remove(callback)
        self.destroyed.connect(_detach)

    def reset_choices(self, *_args) -> None:
        """Refill the image / nuclear layer choices from the viewer."""
        from napari.layers import Image

        cur_img, cur_nuc = self.image_combo.currentText(), self.nuclear_combo.currentText()
        rgb = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and ly.rgb]
        grey = [ly.name for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and ly.ndim == 2
                and ly.metadata.get("sabgal", {}).get("role") not in ("xgal",)]
        for combo, names, cur in ((self.image_combo, rgb, cur_img), (self.nuclear_combo, ["(none)"] + grey, cur_nuc)):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            combo.blockSignals(False)
        self._on_image_choice()
        self._update_enabled()

    def _on_image_choice(self, *_args) -> None:
        """Pick the nuclear companion and pixel size that came with the chosen image."""
        layer = self._layer_named(self.image_combo.currentText())
        if layer is None:
            return
        meta = layer.metadata.get("sabgal", {})
        for ly in self.viewer.layers:
            m = ly.metadata.get("sabgal", {})
            if m.get("role") == "nuclear" and m.get("stem") == meta.get("stem") and \
                    self.nuclear_combo.findText(ly.name) >= 0:
                self.nuclear_combo.setCurrentText(ly.name)
        if meta.get("pixel_size_um"):
            self.pixel_spin.setValue(float(meta["pixel_size_um"]))

    def _layer_named(self, name: str):
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_layer_inserted(self, event) -> None:
        self.reset_choices()
        layer = event.value
        meta = layer.metadata.get("sabgal", {})
        if meta.get("role") == "cells" and meta.get("results") and layer not in self._layers.values():
            self._bind_reader_layers(meta)

    def _on_layer_removed(self, event) -> None:
        for role, ly in list(self._layers.items()):
            if ly is event.value:
                del self._layers[role]
        self.reset_choices()

    def _adopt_existing_layers(self) -> None:
        for layer in list(self.viewer.layers)[::-1]:
            meta = layer.metadata.get("sabgal", {})
            if meta.get("role") == "cells" and meta.get("results"):
                self._bind_reader_layers(meta)
                return

    # ========================================================== analysis
    def _load_preset(self, name: str) -> None:
        try:
            cfg = load_config(name)
        except ConfigError as exc:
            self._say(str(exc), error=True)
            return
        self.diameter_spin.setValue(cfg.segment.nucleus_diameter_px)
        self.reach_spin.setValue(cfg.segment.max_cell_radius_nuclei)
        self.sensitivity_spin.setValue(cfg.segment.foreground_sensitivity)
        self.pixel_spin.setValue(cfg.setup.pixel_size_um or 0)

    def current_config(self):
        """The preset with the parameters edited in the widget."""
        cfg = load_config(self.preset_combo.currentText())
        return cfg.replace(
            segment={"nucleus_diameter_px": float(self.diameter_spin.value()),
                     "max_cell_radius_nuclei": float(self.reach_spin.value()),
                     "foreground_sensitivity": float(self.sensitivity_spin.value())},
            setup={"pixel_size_um": float(self.pixel_spin.value()) or None})

    def run_analysis(self) -> Any:
        """Analyse the chosen image layer in a background thread; returns the worker."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return self._worker
        layer = self._layer_named(self.image_combo.currentText())
        if layer is None:
            self._say("Choose an RGB image layer to analyse.", error=True)
            return None
        rgb = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
            self._say(f"{layer.name}: sabgal analyses one 2-D RGB image, got shape {rgb.shape}", error=True)
            return None
        nuc_layer = self._layer_named(self.nuclear_combo.currentText())
        nuclear = None if nuc_layer is None else np.asarray(nuc_layer.data)
        try:
            config = self.current_config()
        except ConfigError as exc:
            self._say(str(exc), error=True)
            return None
        meta = layer.metadata.get("sabgal", {})
        image = meta.get("image") or layer.name
        worker = create_worker(analysis_steps, rgb, nuclear=nuclear, config=config,
                               pixel_size_um=config.setup.pixel_size_um, image=image,
                               encoding=meta.get("encoding"), _start_thread=False,
                               _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda review: self._on_analysed(review, layer))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_done)
        self._worker = worker
        self.progress.setValue(0)
        self._say(f"Analysing {layer.name}…")
        self._update_enabled()
        worker.start()
        return worker

    def _on_progress(self, step) -> None:
        frac, text = step
        self.progress.setValue(int(round(100 * frac)))
        self.progress_label.setText(text)

    def _on_error(self, exc) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self._say(f"Analysis failed: {first}", error=True)

    def _on_worker_done(self) -> None:
        self._worker = None
        self._update_enabled()

    def _cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._say("Cancelled.")

    def _on_analysed(self, review: ImageReview, rgb_layer) -> None:
        if rgb_layer not in self.viewer.layers:  # removed meanwhile, or the viewer closed
            return
        self.bound_to_results = False
        if self._layers.get("rgb") is not None and self._layers.get("rgb") is not rgb_layer:
            self._layers.pop("rgb")
        self.show_review(review)
        s = review.summary()
        self._say(f"{rgb_layer.name}: {s['n_cells']} cells ({review.info.get('setup', '?')} set-up).")

    # ======================================================= review layers
    def show_review(self, review: ImageReview, *, meta: dict | None = None) -> None:
        """Show ``review``'s layers (re-using the current ones) and its numbers."""
        from napari.layers import Layer

        self.review = review
        self._selected = None
        layer_data = _layers.review_layer_data(review, meta=meta)
        roles = {d[1]["metadata"]["sabgal"]["role"] for d in layer_data}
        if "xgal" not in roles and "xgal" in self._layers:
            self._remove_layer("xgal")
        for data, kwargs, kind in layer_data:
            role = kwargs["metadata"]["sabgal"]["role"]
            layer = self._layers.get(role)
            if layer is not None and layer in self.viewer.layers and layer.__class__.__name__.lower() == kind:
                layer.metadata = kwargs["metadata"]
                layer.data = data.copy() if role == "cells" else data
                layer.name = kwargs["name"]
                if role == "cells":
                    layer.features = kwargs["features"]
                    layer.colormap = kwargs["colormap"]
                elif role == "xgal":
                    layer.contrast_limits = kwargs["contrast_limits"]
            else:
                if role == "cells":
                    data = data.copy()  # the layer is edited by the person; the review keeps the measured copy
                layer = Layer.create(data, kwargs, kind)
                self._layers[role] = layer  # before adding: ours, not a reader's to adopt
                self.viewer.add_layer(layer)
                if role in ("cells", "nuclei"):
                    layer.events.paint.connect(self._on_paint)
                if role == "cells":
                    _layers.as_outlines(layer)
        cells = self._layers["cells"]
        if self.viewer.layers.index(cells) != len(self.viewer.layers) - 1:
            self.viewer.layers.move(self.viewer.layers.index(cells), len(self.viewer.layers))
        self.viewer.layers.selection.active = cells  # the layer under review (clicks, painting)
        self._set_threshold_widgets()
        self.refresh_calls()
        self._update_enabled()

    def _remove_layer(self, role: str) -> None:
        layer = self._layers.pop(role, None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def refresh_calls(self) -> None:
        """Re-colour the outlines, refresh the features, the table and the counts."""
        review = self.review
        if review is None:
            return
        calls = review.calls()
        features = _layers.cell_features(calls)
        cells = self._layers.get("cells")
        if cells is not None:
            from napari.utils.colormaps import DirectLabelColormap

            cells.features = features
            cells.colormap = DirectLabelColormap(color_dict=_layers.call_color_dict(calls))
        self._features = features
        if self.tabs.currentWidget() is self.table:
            self._refresh_table()
        else:
            self._table_stale = True  # filled when the Cells tab is shown (or a cell selected)
        self._show_counts()
        self._mark_corrections(calls)
        if self.bound_to_results and review.thresholds == review.learnt_thresholds \
                and review.rule == review.config.classify.senescent_rule:
            # the plate map shows the run's thresholds only: a tuned threshold is a what-if
            self.plate.update_image(review.image, review.summary())

    def _refresh_table(self) -> None:
        if self._features is not None:
            self.table.set_table(self._features, keep=self._selected)
        self._table_stale = False

    def _on_tab(self, _index: int) -> None:
        if self.tabs.currentWidget() is self.table and self._table_stale:
            self._refresh_table()

    def _mark_corrections(self, calls) -> None:
        """A small white cross on every corrected cell (layer created at the first correction)."""
        fixed = calls[calls["corrected"]]
        layer = self._layers.get("corrected")
        if layer is None or layer not in self.viewer.layers:
            if not len(fixed):
                return
            active = self.viewer.layers.selection.active
            layer = self.viewer.add_points(np.zeros((0, 2)), name="corrected cells", symbol="cross",
                                           face_color="white", border_color="black", border_width=0.15,
                                           size=8, metadata={"sabgal": {"role": "corrected"}})
            self._layers["corrected"] = layer
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        layer.data = fixed[["centroid_y", "centroid_x"]].to_numpy(dtype=float).reshape(-1, 2)
        diam = float(self.review.info.get("nucleus_diameter_px") or 0)
        layer.size = max(6.0, 0.6 * diam) if diam else 8.0

    def _show_counts(self) -> None:
        review = self.review
        s = review.summary()
        calls = review.calls()
        n = s["n_cells"]
        cols = [("cells", None, None)] + [
            (label, key, _layers.CALL_COLORS[color]) for label, key, color in
            (("SA-β-gal+", "sabgal_positive", "positive"), ("enlarged", "enlarged", "enlarged"),
             ("senescent", "senescent", "senescent"))]
        head, body = [], []
        for label, key, color in cols:
            swatch = f'<span style="color:{_hex(color)}">&#9632;</span> ' if color else ""
            head.append(f'<td align="center">{swatch}{label}</td>')
            if key is None:
                body.append(f'<td align="center"><b>{n}</b></td>')
            else:
                pct = f" ({100 * s[f'fraction_{key}']:.1f} %)" if n else ""
                body.append(f'<td align="center"><b>{s[f"n_{key}"]}</b>{pct}</td>')
        corrected = int(calls["corrected"].sum())
        deleted = int(calls["deleted"].sum())
        self.counts_label.setText(
            f"<b>{review.image}</b>"
            f'<table width="100%" cellspacing="0" cellpadding="2"><tr>{"".join(head)}</tr>'
            f'<tr>{"".join(body)}</tr></table>'
            f"<small>{corrected} cell(s) corrected, {deleted} deleted · positive if {review.thresholds.measure} "
            f"&gt; {review.thresholds.positive:.3f} OD ({review.thresholds.positive_source})</small>")
        where = (f"saved to {self.results.path / 'corrections.csv'}" if self.bound_to_results
                 else "kept in this session (open a `sabgal run` results folder to save them)")
        self.corrections_label.setText(f"{len(review.corrections)} correction(s), {where}.")

    # ======================================================== thresholds
    def _set_threshold_widgets(self) -> None:
        th = self.review.thresholds
        for w in (self.pos_spin, self.pos_slider, self.enlarged_spin, self.rule_combo):
            w.blockSignals(True)
        self.pos_spin.setValue(th.positive)
        self.pos_slider.setValue(self._od_to_slider(th.positive))
        self.enlarged_spin.setValue(th.enlarged_factor)
        self.rule_combo.setCurrentText(self.review.rule)
        for w in (self.pos_spin, self.pos_slider, self.enlarged_spin, self.rule_combo):
            w.blockSignals(False)
        self.measure_label.setText(f"SA-β-gal+: {th.measure} (OD) >")
        fixed = th.enlarged_area_px is not None or th.enlarged_area_um2 is not None
        self.enlarged_spin.setToolTip("The config fixes the enlarged area; this factor is not used" if fixed
                                      else "Enlarged above this × median area of the image's negative cells")
        self.threshold_source.setText(f"<small>positive threshold: {th.positive_source}; "
                                      f"enlarged: {th.enlarged_source}</small>")

    @staticmethod
    def _od_to_slider(od: float) -> int:
        t = (math.log10(max(od, _OD_MIN)) - math.log10(_OD_MIN)) / (math.log10(_OD_MAX) - math.log10(_OD_MIN))
        return int(round(np.clip(t, 0, 1) * _SLIDER_STEPS))

    @staticmethod
    def _slider_to_od(v: int) -> float:
        lo, hi = math.log10(_OD_MIN), math.log10(_OD_MAX)
        return round(10 ** (lo + (hi - lo) * v / _SLIDER_STEPS), 4)

    def _on_slider(self, v: int) -> None:
        self.pos_spin.setValue(self._slider_to_od(v))

    def _on_positive(self, value: float) -> None:
        self.pos_slider.blockSignals(True)
        self.pos_slider.setValue(self._od_to_slider(value))
        self.pos_slider.blockSignals(False)
        if self.pos_slider.isSliderDown():
            self._drag_timer.start()  # while dragging, re-classify at most every 60 ms
        else:
            self.set_thresholds(positive=value)

    def _apply_dragged_threshold(self) -> None:
        self.set_thresholds(positive=float(self.pos_spin.value()))

    def _on_enlarged(self, value: float) -> None:
        self.set_thresholds(enlarged_factor=value)

    def _on_rule(self, rule: str) -> None:
        self.set_thresholds(rule=rule)

    def set_thresholds(self, *, positive: float | None = None, enlarged_factor: float | None = None,
                       rule: str | None = None) -> None:
        """Re-classify the current image with new thresholds (no re-segmentation)."""
        if self.review is None:
            return
        self.review.set_thresholds(positive=positive, enlarged_factor=enlarged_factor, rule=rule)
        th = self.review.thresholds
        self.threshold_source.setText(f"<small>positive threshold: {th.positive_source}; "
                                      f"enlarged: {th.enlarged_source}</small>")
        self.refresh_calls()

    def reset_thresholds(self) -> None:
        if self.review is None:
            return
        self.review.reset_thresholds()
        self._set_threshold_widgets()
        self.refresh_calls()

    # ========================================================= corrections
    def _on_mouse(self, viewer, event):
        """Viewer click: flip / delete / select the cell under the pointer (a drag pans)."""
        if event.button != 1 or self.review is None or "cells" not in self._layers:
            return
        if getattr(event, "modifiers", None):
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return  # painting, picking, transforming: not a review click
        position = tuple(event.position)
        start = np.asarray(event.pos, dtype=float)
        moved = False
        yield
        while event.type == "mouse_move":
            if np.hypot(*(np.asarray(event.pos, dtype=float) - start)) > 4:
                moved = True
            yield
        if not moved:
            self.click(position)

    def cell_at(self, world_position) -> int:
        """Cell label under a world position (0 for none)."""
        cells = self._layers.get("cells")
        if cells is None:
            return 0
        data_pos = np.round(np.asarray(cells.world_to_data(world_position))[-2:]).astype(int)
        r, c = data_pos
        if not (0 <= r < cells.data.shape[0] and 0 <= c < cells.data.shape[1]):
            return 0
        return int(cells.data[r, c])

    def click(self, world_position) -> None:
        """What a click at ``world_position`` does, per the "Click on a cell to" choice."""
        cid = self.cell_at(world_position)
        if cid == 0:
            self.select_cell(None)
            return
        field = CLICK_ACTIONS[self.click_combo.currentIndex()][1]
        if field is not None:
            self.flip(cid, field)
        self.select_cell(cid)

    def flip(self, cell_id: int, field: str) -> None:
        """Flip a call (or delete / restore a cell), update counts, save when bound to a folder."""
        try:
            new = self.review.flip(cell_id, field)
        except KeyError:
            self._say(f"Cell {cell_id} is not measured yet (being re-measured).", error=True)
            return
        self.refresh_calls()
        self._autosave()
        self._say(f"cell {cell_id}: {field} → {new}")

    def _autosave(self) -> None:
        if self.bound_to_results and self.results is not None:
            try:
                self.results.save(self.review)
            except OSError as exc:
                self._say(f"Could not save corrections: {exc}", error=True)

    def select_cell(self, cell_id: int | None, *, center: bool = False) -> None:
        """Highlight a cell (ring marker + table row); centre the view on it when asked."""
        self._selected = cell_id
        calls = self.review.calls() if self.review is not None else None
        row = None
        if cell_id is not None and calls is not None:
            hit = calls[calls["cell_id"] == cell_id]
            row = hit.iloc[0] if len(hit) else None
        if self._table_stale:
            self._refresh_table()
        self.table.select_cell(cell_id if row is not None else None)
        ring = self._highlight_layer(create=row is not None)
        if ring is None:
            return
        if row is None:
            ring.data = np.zeros((0, 2))
            return
        size = max(float(row["major_axis_px"]) * 1.15, 12.0)
        ring.data = np.array([[row["centroid_y"], row["centroid_x"]]])
        ring.size = size
        if center:
            _camera(self.viewer).center = (float(row["centroid_y"]), float(row["centroid_x"]))
        cells = self._layers.get("cells")
        if cells is not None:
            cells.selected_label = int(cell_id)

    def _highlight_layer(self, *, create: bool):
        layer = self._layers.get("selection")
        if layer is not None and layer in self.viewer.layers:
            return layer
        if not create:
            return None
        cells = self._layers.get("cells")
        layer = self.viewer.add_points(np.zeros((0, 2)), name="selected cell", face_color="transparent",
                                       border_color="yellow", border_width=0.04, border_width_is_relative=True,
                                       size=20, opacity=1.0, metadata={"sabgal": {"role": "selection"}})
        self._layers["selection"] = layer
        if cells is not None:
            self.viewer.layers.selection.active = cells
        return layer

    def _on_paint(self, *_args) -> None:
        self._edit_timer.start()

    def apply_label_edits(self) -> None:
        """Re-measure cells painted or erased in the cells layer."""
        cells = self._layers.get("cells")
        if self.review is None or cells is None:
            return
        nuclei = self._layers.get("nuclei")
        if np.array_equal(cells.data, self.review.cell_labels) and (
                nuclei is None or np.array_equal(nuclei.data, self.review.nucleus_labels)):
            return
        if self.review.prepared is None:
            self._pending_edit = True
            self._say("Preparing the image for re-measurement…")
            return
        try:
            changed = self.review.set_labels(np.asarray(cells.data),
                                             None if nuclei is None else np.asarray(nuclei.data))
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        if changed.size == 0:
            return
        if nuclei is not None and not np.array_equal(nuclei.data, self.review.nucleus_labels):
            nuclei.data = self.review.nucleus_labels.copy()
        self.refresh_calls()
        self._autosave()
        self._say(f"Re-measured {changed.size} edited cell(s).")

    # ============================================================ exports
    def export_config(self, path: str | None = None) -> Path | None:
        """Write the config with the current thresholds as TOML (asks for a file when ``path`` is None)."""
        if self.review is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export sabgal config", "sabgal_tuned.toml",
                                                  "TOML (*.toml)")
            if not path:
                return None
        from sabgal.io import atomic_path

        text = tuned_config_toml(self.review.config, self.review.thresholds, self.review.rule,
                                 note=f"thresholds reviewed on {self.review.image}")
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        self._say(f"Config written to {path} (use: sabgal run IMAGES --config {path})")
        return Path(path)

    def export_cells(self, path: str | None = None) -> Path | None:
        """Write the per-cell table with corrected calls (CSV or Parquet by extension)."""
        if self.review is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export cells", "cells.csv", "CSV (*.csv)")
            if not path:
                return None
        write_table(path, self.review.calls())
        self._say(f"Cells written to {path}")
        return Path(path)
