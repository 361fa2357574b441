"""How an :class:`~sabgal._napari._review.ImageReview` is shown as napari layers.

Layer data tuples (for the reader) and the call colours (for the widget's
live re-colouring) are built here; nothing here changes a viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sabgal._napari._review import ImageReview, call_category

__all__ = [
    "CALL_COLORS",
    "NEW_CELL_COLOR",
    "FEATURE_COLUMNS",
    "call_color_dict",
    "cell_features",
    "review_layer_data",
    "image_layer_data",
    "display_name",
]

# Outline colours: distinguishable for red-green colour-blind readers, and
# visible on a pale brightfield background and on blue (X-gal) cells.
CALL_COLORS: dict[str, tuple[float, float, float, float]] = {
    "negative": (0.10, 0.80, 0.30, 1.0),  # green
    "enlarged": (0.00, 0.80, 1.00, 1.0),  # cyan: enlarged, SA-β-gal negative
    "positive": (1.00, 0.60, 0.00, 1.0),  # orange: SA-β-gal positive, not senescent
    "senescent": (1.00, 0.00, 0.90, 1.0),  # magenta: senescent by the rule
    "deleted": (0.45, 0.45, 0.45, 0.55),  # grey: removed by the reviewer
}
NEW_CELL_COLOR = (1.0, 1.0, 1.0, 1.0)  # painted, not measured yet

# Leading columns of layer.features (the status bar shows them in this order).
FEATURE_COLUMNS = ["index", "cell_id", "call", "sabgal_positive", "enlarged", "senescent", "corrected",
                   "deleted", "xgal_od_perinuclear_p60", "xgal_od_core_p60", "xgal_od_p90", "xgal_od_mean", "area_px", "area_um2", "has_nucleus"]


def display_name(image: str) -> str:
    """Short layer-name stem of an image name (``"plate1/A01.tif"`` -> ``"A01"``)."""
    base = image.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def cell_features(calls: pd.DataFrame) -> pd.DataFrame:
    """``layer.features`` of the cell labels: one row per cell, ``index`` = label."""
    t = calls.copy()
    t.insert(0, "index", t["cell_id"].to_numpy())
    t.insert(2, "call", call_category(calls))
    lead = [c for c in FEATURE_COLUMNS if c in t]
    return t[lead + [c for c in t.columns if c not in lead and c != "image"]].reset_index(drop=True)


def call_color_dict(calls: pd.DataFrame) -> dict[int | None, tuple[float, ...]]:
    """Label -> RGBA by call; unknown (newly painted) labels are white, 0 is clear."""
    colors: dict[int | None, tuple[float, ...]] = {None: NEW_CELL_COLOR, 0: (0.0, 0.0, 0.0, 0.0)}
    for cid, cat in zip(calls["cell_id"].to_numpy(), call_category(calls)):
        colors[int(cid)] = CALL_COLORS[cat]
    return colors


def _colormap(calls: pd.DataFrame) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=call_color_dict(calls))


def image_layer_data(rgb: np.ndarray, name: str, *, nuclear: np.ndarray | None = None,
                     meta: dict[str, Any] | None = None) -> list[tuple]:
    """Layer data for an RGB image (and its nuclear companion, hidden)."""
    meta = dict(meta or {})
    layers = [(rgb, {"name": name, "rgb": True, "contrast_limits": _rgb_limits(rgb),
                     "metadata": {"sabgal": {**meta, "role": "rgb", "stem": name}}}, "image")]
    if nuclear is not None:
        lo, hi = np.percentile(nuclear[::4, ::4], [0.5, 99.8])
        layers.append((nuclear, {"name": f"{name} nuclear", "colormap": "cyan", "blending": "additive",
                                 "visible": False, "contrast_limits": [float(lo), float(max(hi, lo + 1e-6))],
                                 "metadata": {"sabgal": {**meta, "role": "nuclear", "stem": name}}}, "image"))
    return layers


def _rgb_limits(rgb: np.ndarray) -> list[float]:
    if rgb.dtype == np.uint8:
        return [0.0, 255.0]
    if rgb.dtype == np.uint16:
        return [0.0, 65535.0]
    return [0.0, 1.0]


def review_layer_data(review: ImageReview, *, meta: dict[str, Any] | None = None) -> list[tuple]:
    """Layer data for a review: X-gal map (when known), nuclei and cells.

    The cells layer carries the per-cell table in ``features`` and is
    coloured by call (:data:`CALL_COLORS`); the widget draws it as outlines
    (see :func:`as_outlines`).
    """
    name = display_name(review.image)
    meta = {**(meta or {}), "image": review.image, "stem": name}
    calls = review.calls()
    layers = []
    if review.xgal is not None:
        hi = float(np.percentile(review.xgal[::2, ::2], 99.8))
        layers.append((review.xgal, {"name": f"{name} X-gal", "colormap": "inferno", "visible": False,
                                     "contrast_limits": [0.0, max(hi, 0.05)],
                                     "metadata": {"sabgal": {**meta, "role": "xgal"}}}, "image"))
    layers.append((review.nucleus_labels, {"name": f"{name} nuclei", "visible": False, "opacity": 0.5,
                                           "metadata": {"sabgal": {**meta, "role": "nuclei"}}}, "labels"))
    layers.append((review.cell_labels, {"name": f"{name} cells", "features": cell_features(calls),
                                        "colormap": _colormap(calls), "opacity": 0.6,
                                        "metadata": {"sabgal": {**meta, "role": "cells"}}}, "labels"))
    return layers


def as_outlines(layer: Any, thickness: int = 2) -> None:
    """Draw a cells labels layer as opaque outlines (napari has no ``contour``
    argument in layer data, so this is set on the layer)."""
    layer.contour = thickness
    layer.opacity = 1.0


def results_meta(path: str | Path) -> dict[str, Any]:
    return {"results": str(Path(path).resolve())}
