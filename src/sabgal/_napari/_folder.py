"""Results-folder review for the sabgal widget: open a ``sabgal run`` output
folder, show any of its images with the saved labels and calls, step through
them, and rebuild the folder's tables with the corrections.

A mixin of :class:`sabgal._napari._widget.SabgalWidget`; it uses the
widget's layers, review and status line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from sabgal._napari import _layers
from sabgal._napari._plate import PlateView
from sabgal._napari._review import ImageReview, ResultsError, ResultsFolder, prepare_for_edits
from sabgal.io import ImageReadError

__all__ = ["FolderReview"]


class FolderReview:
    """Plate tab and results-folder navigation (mixed into the widget)."""

    def _build_plate_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        row = QHBoxLayout()
        self.results_label = QLabel("No results folder open.")
        self.results_label.setWordWrap(True)
        open_button = QPushButton("Open results…")
        open_button.setToolTip("Open a folder written by `sabgal run` (images.csv, cells.csv, labels/)")
        open_button.clicked.connect(self._choose_results)
        row.addWidget(self.results_label, 1)
        row.addWidget(open_button)
        lay.addLayout(row)
        self.plate = PlateView()
        self.plate.image_chosen.connect(self.open_result_image)
        lay.addWidget(self.plate, 1)
        row = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.clicked.connect(lambda: self.step_image(-1))
        self.position_label = QLabel("")
        self.position_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(lambda: self.step_image(+1))
        row.addWidget(self.prev_button)
        row.addWidget(self.position_label, 1)
        row.addWidget(self.next_button)
        lay.addLayout(row)
        self.rebuild_button = QPushButton("Update images.csv and cells.csv")
        self.rebuild_button.setToolTip("Rebuild the run's tables with the corrections (as `sabgal run` does)")
        self.rebuild_button.clicked.connect(self.rebuild_tables)
        lay.addWidget(self.rebuild_button)
        note = QLabel("<small>Corrections are saved to the folder's corrections.csv as you make them; "
                      "`sabgal run` applies them whenever it rebuilds the tables.</small>")
        note.setWordWrap(True)
        lay.addWidget(note)
        return w

    def _choose_results(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a sabgal results folder")
        if path:
            self.open_results(path)

    def open_results(self, path: str | Path, *, image: str | None = None) -> bool:
        """Open a ``sabgal run`` output folder and show one of its images."""
        try:
            self.results = ResultsFolder(path)
        except ResultsError as exc:
            self._say(str(exc), error=True)
            return False
        self.results_label.setText(f"<small>{self.results.path}</small>")
        self.plate.set_images(self.results.images)
        self._update_enabled()
        ok = [n for n in self.results.image_names if self.results.status(n)[0] == "ok"]
        target = image or (ok[0] if ok else None)
        if target is None:
            self._say(f"{self.results.path}: no image was analysed successfully.", error=True)
            return False
        return self.open_result_image(target)

    def open_result_image(self, image: str) -> bool:
        """Show an image of the open results folder with its saved labels and calls."""
        if self.results is None:
            return False
        try:
            rgb, nuclear, review = self.results.load(image)
        except (ResultsError, ImageReadError, OSError) as exc:
            self._say(str(exc), error=True)
            return False
        meta = _layers.results_meta(self.results.path)
        stem = _layers.display_name(image)
        img_layers = _layers.image_layer_data(rgb.pixels, stem, nuclear=None if nuclear is None else nuclear.pixels,
                                              meta={**meta, "image": image, "pixel_size_um": rgb.pixel_size_um,
                                                    "encoding": rgb.encoding})
        self._show_images(img_layers)
        first = self.review is None
        self.bound_to_results = True
        self.show_review(review, meta=meta)
        self.plate.set_current(image)
        self._show_position()
        if first:
            self.viewer.reset_view()
        self._start_prepare(review, rgb.pixels, None if nuclear is None else nuclear.pixels, encoding=rgb.encoding)
        self._say(f"{image}: {review.summary()['n_cells']} cells, thresholds of the run "
                  f"({review.thresholds.positive:.3f} OD, {review.thresholds.positive_source}).")
        return True

    def _show_images(self, img_layers: list[tuple]) -> None:
        from napari.layers import Layer

        wanted = set()
        for data, kwargs, kind in img_layers:
            role = kwargs["metadata"]["sabgal"]["role"]
            wanted.add(role)
            layer = self._layers.get(role)
            if layer is not None and layer in self.viewer.layers:
                layer.data = data
                layer.name = kwargs["name"]
                layer.metadata = kwargs["metadata"]
                layer.contrast_limits = kwargs["contrast_limits"]
            else:
                layer = Layer.create(data, kwargs, kind)
                self._layers[role] = layer
                self.viewer.layers.insert(0, layer)
        if "nuclear" not in wanted:
            self._remove_layer("nuclear")

    def _bind_reader_layers(self, meta: dict) -> None:
        """Take over the layers the reader made for a results folder."""
        path, image = meta["results"], meta.get("image")
        same = self.results is not None and str(self.results.path.resolve()) == path
        if not same:
            try:
                self.results = ResultsFolder(path)
            except ResultsError as exc:
                self._say(str(exc), error=True)
                return
            self.results_label.setText(f"<small>{self.results.path}</small>")
            self.plate.set_images(self.results.images)
        for layer in self.viewer.layers:
            m = layer.metadata.get("sabgal", {})
            if m.get("results") == path and m.get("image", image) == image and m.get("role"):
                self._layers[m["role"]] = layer
                if m["role"] in ("cells", "nuclei"):
                    layer.events.paint.connect(self._on_paint)
                if m["role"] == "cells":
                    _layers.as_outlines(layer)
        try:
            _rgb, _nuc, review = self.results.load(image, read_pixels=False)
        except (ResultsError, OSError) as exc:
            self._say(str(exc), error=True)
            return
        rgb_layer = self._layers.get("rgb")
        nuc_layer = self._layers.get("nuclear")
        if rgb_layer is not None:
            review.pixel_size_um = rgb_layer.metadata.get("sabgal", {}).get("pixel_size_um") or review.pixel_size_um
        self.bound_to_results = True
        self.show_review(review, meta=_layers.results_meta(path))
        self.plate.set_current(image)
        self._show_position()
        self._update_enabled()
        if rgb_layer is not None:
            self._start_prepare(review, np.asarray(rgb_layer.data),
                                None if nuc_layer is None else np.asarray(nuc_layer.data),
                                encoding=rgb_layer.metadata.get("sabgal", {}).get("encoding"))

    def _start_prepare(self, review: ImageReview, rgb: np.ndarray, nuclear: np.ndarray | None, *,
                       encoding: str | None = None) -> None:
        """Compute, in the background, what label edits and the X-gal layer need.

        One such computation runs at a time: paging quickly through a plate
        queues only the newest image, and the ones paged past are never
        prepared (each would take a core for seconds, and workers started in
        a burst race each other for the threads' shared state).
        """
        from napari.qt.threading import create_worker

        if self._prep_worker is not None:
            self._prep_next = (review, rgb, nuclear, encoding)
            return
        worker = create_worker(prepare_for_edits, review, rgb, nuclear=nuclear, encoding=encoding, _start_thread=False,
                               _ignore_errors=True)

        def done(_result=None) -> None:
            if self.review is not review or self._layers.get("cells") not in self.viewer.layers:
                return
            self._add_xgal_layer()
            if self._pending_edit:
                self._pending_edit = False
                self.apply_label_edits()

        worker.returned.connect(done)
        worker.errored.connect(lambda exc: self._say(f"{review.image}: cannot prepare for edits: {exc}",
                                                     error=True))
        worker.finished.connect(lambda: self._prep_done(worker))
        self._prep_worker = worker
        worker.start()

    def _prep_done(self, worker) -> None:
        if self._prep_worker is not worker:
            return
        self._prep_worker = None
        queued, self._prep_next = self._prep_next, None
        if queued is not None and queued[0] is self.review:
            review, rgb, nuclear, encoding = queued
            self._start_prepare(review, rgb, nuclear, encoding=encoding)

    def _add_xgal_layer(self) -> None:
        from napari.layers import Layer

        review = self.review
        if review is None or review.xgal is None:
            return
        data, kwargs, kind = _layers.review_layer_data(review, meta=_layers.results_meta(self.results.path)
                                                       if self.bound_to_results else None)[0]
        layer = self._layers.get("xgal")
        if layer is not None and layer in self.viewer.layers:
            layer.data = data
            layer.name = kwargs["name"]
            layer.contrast_limits = kwargs["contrast_limits"]
            return
        layer = Layer.create(data, kwargs, kind)
        rgb = self._layers.get("rgb")
        index = self.viewer.layers.index(rgb) + 1 if rgb is not None and rgb in self.viewer.layers else 0
        active = self.viewer.layers.selection.active
        self._layers["xgal"] = layer
        self.viewer.layers.insert(index, layer)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # an added layer would take the selection

    def step_image(self, step: int) -> bool:
        """Show the next (+1) or previous (-1) analysed image of the results folder."""
        if self.results is None:
            return False
        names = [n for n in self.results.image_names if self.results.status(n)[0] == "ok"]
        if not names:
            return False
        cur = self.review.image if (self.review is not None and self.bound_to_results) else None
        if cur in names:
            target = names[(names.index(cur) + step) % len(names)]
        else:
            target = names[0] if step > 0 else names[-1]
        return self.open_result_image(target)

    def _show_position(self) -> None:
        if self.results is None or self.review is None:
            self.position_label.setText("")
            return
        names = self.results.image_names
        i = names.index(self.review.image) + 1 if self.review.image in names else 0
        self.position_label.setText(f"{i} / {len(names)}")

    def rebuild_tables(self) -> None:
        """Rewrite the folder's images.csv / cells.csv with the corrections."""
        if self.results is None:
            return
        if self.bound_to_results and self.review is not None:
            self.results.save(self.review)
        images = self.results.rebuild()
        self.plate.set_images(images)
        if self.review is not None:
            self.plate.set_current(self.review.image)
        self._say(f"Rebuilt {self.results.path / 'images.csv'} and cells.csv.")
