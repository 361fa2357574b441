"""napari reader: an SA-β-gal image (with its nuclear companion) or a
``sabgal run`` results folder.

* An image file is read with :func:`sabgal.io.read_rgb` (so the pixels are
  the ones ``sabgal run`` analyses: float in [0, 1] of the file's full scale,
  12/14-bit data in 16-bit words scaled as such). A nuclear companion named
  ``<stem><suffix>.<ext>`` (suffixes: ``setup.companion_suffixes``) beside it
  is opened too, hidden.
* A results folder (``images.csv`` + ``run.json``) opens its first analysed
  image with its saved labels and calls, and docks the sabgal widget, which
  takes over the layers for review.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from sabgal import io as sio
from sabgal.batch import _companion_of
from sabgal.config import Config

log = logging.getLogger(__name__)

__all__ = ["napari_get_reader", "read_image", "read_results", "find_companion", "WIDGET_NAME"]

WIDGET_NAME = "SA-β-gal analysis and review"
_SUFFIXES = Config().setup.companion_suffixes


def find_companion(path: str | os.PathLike[str], suffixes=_SUFFIXES) -> Path | None:
    """The nuclear companion of an RGB image, if one lies beside it."""
    p = Path(path)
    for suf in suffixes:
        for ext in sio.IMAGE_EXTENSIONS:
            for cand in (p.with_name(f"{p.stem}{suf}{ext}"), p.with_name(f"{p.stem}{suf}{ext.upper()}")):
                if cand.is_file():
                    return cand
    return None


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader for ``path``, or None when sabgal does not read it.

    Folders are read only when they are results folders; image files only
    when they are not themselves a nuclear companion (those are opened with
    their RGB image).
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    from sabgal._napari._review import ResultsFolder

    if p.is_dir():
        return read_results if ResultsFolder.is_results_folder(p) else None
    if p.suffix.lower() not in sio.IMAGE_EXTENSIONS:
        return None
    if _companion_of(p, _SUFFIXES) is not None:
        return None
    return read_image


def read_image(path: str | list[str]) -> list[tuple]:
    """Layer data of an RGB brightfield image and its nuclear companion.

    Raises
    ------
    sabgal.io.ImageReadError
        One line naming the file and what is wrong with it.
    """
    from sabgal._napari._layers import display_name, image_layer_data

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    rgb = sio.read_rgb(p)
    comp = find_companion(p)
    nuclear = None
    if comp is not None:
        nuc = sio.read_nuclear(comp)
        if nuc.pixels.shape != rgb.pixels.shape[:2]:
            raise sio.ImageReadError(f"{comp}: nuclear image is {nuc.pixels.shape}, its RGB image "
                                     f"{rgb.pixels.shape[:2]}")
        nuclear = nuc.pixels
    meta = {"path": str(p), "image": p.name, "pixel_size_um": rgb.pixel_size_um, "encoding": rgb.encoding,
            "companion": str(comp) if comp else None}
    return image_layer_data(rgb.pixels, display_name(p.name), nuclear=nuclear, meta=meta)


def read_results(path: str | list[str]) -> list[tuple]:
    """Layer data of a results folder's first analysed image (RGB, nuclear,
    nuclei and cell labels with calls); docks the review widget.

    Raises
    ------
    sabgal._napari._review.ResultsError
        When the folder has no analysed image or its files are missing.
    """
    from sabgal._napari._layers import display_name, image_layer_data, results_meta, review_layer_data
    from sabgal._napari._review import ResultsError, ResultsFolder

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    folder = ResultsFolder(p)
    ok = [n for n in folder.image_names if folder.status(n)[0] == "ok"]
    if not ok:
        raise ResultsError(f"{p}: no image was analysed successfully (see images.csv, column error)")
    rgb, nuclear, review = folder.load(ok[0])
    meta = {**results_meta(p), "image": ok[0]}
    layers = image_layer_data(rgb.pixels, display_name(ok[0]), nuclear=None if nuclear is None else nuclear.pixels,
                              meta={**meta, "pixel_size_um": rgb.pixel_size_um, "encoding": rgb.encoding})
    layers += review_layer_data(review, meta=meta)
    _dock_widget()
    return layers


def _dock_widget() -> None:
    """Dock the review widget in the current viewer, which then adopts the layers."""
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        viewer.window.add_plugin_dock_widget("sabgal", WIDGET_NAME)
    except Exception as exc:  # a reader must still return its layers
        log.warning("could not open the sabgal widget: %s", exc)
