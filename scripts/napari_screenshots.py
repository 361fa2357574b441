"""Screenshots of the sabgal napari plugin in use, for the README.

Opens a real napari viewer (headless: Qt's offscreen platform, OpenGL from an
X server; when no DISPLAY is set the script re-runs itself under
``xvfb-run``), analyses the synthetic sample field with the widget, tunes a
threshold, corrects a few cells, and reviews a small synthetic plate run
through ``sabgal run``. Writes PNGs (< 400 KB; palette-quantised only when larger) to
``docs/screenshots/``::

    python scripts/napari_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("napari_screenshots")
ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1600, 940)  # width, height of the napari window
MAX_BYTES = 400_000


def _ensure_display(argv: list[str]) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if os.environ.get("DISPLAY") or os.environ.get("SABGAL_NO_XVFB"):
        return
    if shutil.which("xvfb-run") is None:
        raise SystemExit("napari_screenshots: no DISPLAY and no xvfb-run; install xvfb (apt-get install xvfb)")
    os.environ["SABGAL_NO_XVFB"] = "1"
    os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", sys.executable, __file__, *argv])


def _wait(widget, timeout: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while widget._worker is not None or widget._prep_worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the sabgal widget did not finish in time")
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)


def _save(viewer, path: Path) -> None:
    """Screenshot of the whole window, kept under MAX_BYTES."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)
    img = Image.fromarray(_window_pixels(viewer))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    for colors in (256, 192, 128):  # only when too large: a palette changes small colour swatches
        if path.stat().st_size < MAX_BYTES:
            break
        img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            path, optimize=True)
    log.info("wrote %s (%d x %d, %.0f KB)", path, img.width, img.height, path.stat().st_size / 1024)


def _window_pixels(viewer) -> np.ndarray:
    """The whole window, with the OpenGL canvas (which a window grab on Qt's
    offscreen platform leaves black) rendered separately and pasted in."""
    from qtpy.QtCore import QPoint

    full = np.array(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    vispy_canvas = viewer.window._qt_viewer.canvas
    canvas_widget = vispy_canvas.native
    # vispy's own off-screen render: the widget's framebuffer grab is black on this platform
    canvas = np.asarray(vispy_canvas._scene_canvas.render())[..., :3]
    at = canvas_widget.mapTo(viewer.window._qt_window, QPoint(0, 0))
    h = min(canvas.shape[0], full.shape[0] - at.y())
    w = min(canvas.shape[1], full.shape[1] - at.x())
    full[at.y():at.y() + h, at.x():at.x() + w] = canvas[:h, :w]
    return full


def _make_plate(folder: Path) -> Path:
    """A small synthetic plate (rows A-D x columns 1-6, one field per well;
    the senescent fraction rises along the columns) run through ``sabgal run``."""
    from sabgal import synth
    from sabgal.cli import main

    images = folder / "images"
    for r, row in enumerate("ABCD"):
        for c in range(1, 7):
            frac = [0.02, 0.08, 0.2, 0.35, 0.55, 0.75][c - 1]
            rng = np.random.default_rng([7, r, c])
            params = synth.random_params(rng, setup="counterstain", shape=(256, 320), senescent_fraction=frac,
                                         formats=("png",), counterstain="nuclear_fast_red")
            field = synth.render_field(params, np.random.default_rng(params.seed))
            synth.write_field(field, images, f"plate1_{row}{c:02d}_f1", truth_dir=folder / "truth")
    out = folder / "results"
    code = main(["run", str(images), "--out", str(out), "-q", "-j", str(min(4, os.cpu_count() or 1))])
    if code not in (0, 1):
        raise SystemExit(f"sabgal run failed with exit code {code}")
    return out


def _zoom(viewer, center, zoom) -> None:
    from sabgal._napari._widget import _camera

    cam = _camera(viewer)
    cam.center = center
    cam.zoom = zoom


def take(out_dir: Path) -> list[Path]:
    import warnings

    # PyQt5 cannot detect the desktop theme; napari would show the warning as a pop-up
    warnings.filterwarnings("ignore", "System theme detection")
    import napari
    from qtpy.QtWidgets import QApplication

    from sabgal._napari._reader import WIDGET_NAME

    viewer = napari.Viewer(show=True, title="sabgal: SA-β-gal review")
    win = viewer.window._qt_window
    win.resize(*WINDOW)
    QApplication.processEvents()
    viewer.open_sample("sabgal", "field")
    _dock, widget = viewer.window.add_plugin_dock_widget("sabgal", WIDGET_NAME)
    widget.parentWidget().setMinimumWidth(470)
    widget.run_analysis()
    _wait(widget)
    shots = []

    # 1. the analysis: outlines coloured by call, counts in the widget
    viewer.layers.selection.active = widget._layers["cells"]
    viewer.reset_view()
    widget.tabs.setCurrentIndex(0)
    path = out_dir / "napari_analyse.png"
    _save(viewer, path)
    shots.append(path)

    # 2. live thresholds and corrections: raise the positivity threshold, flip two cells, delete one
    widget.tabs.setCurrentIndex(1)
    calls = widget.review.calls()
    widget.pos_spin.setValue(round(widget.review.thresholds.positive * 1.15, 3))
    calls = widget.review.calls()
    center = np.array(widget._layers["cells"].data.shape) / 2
    dist = np.hypot(calls["centroid_y"] - center[0], calls["centroid_x"] - center[1])
    near = calls.assign(d=dist).sort_values("d")
    neg = near[~near["sabgal_positive"]]
    pos = near[near["sabgal_positive"]]
    flipped = [int(neg["cell_id"].iloc[0]), int(pos["cell_id"].iloc[0])]
    for cid in flipped:
        widget.flip(cid, "sabgal_positive")
    widget.flip(int(near.loc[~near["cell_id"].isin(flipped), "cell_id"].iloc[2]), "deleted")
    widget.select_cell(flipped[0])
    _zoom(viewer, tuple(center), 2.2)
    path = out_dir / "napari_correct.png"
    _save(viewer, path)
    shots.append(path)

    # 3. the per-cell table linked to the labels
    widget.tabs.setCurrentIndex(3)
    cid = int(pos["cell_id"].iloc[1]) if len(pos) > 1 else int(near["cell_id"].iloc[1])
    widget.table.select_cell(cid)
    widget.select_cell(cid, center=True)
    path = out_dir / "napari_cells_table.png"
    _save(viewer, path)
    shots.append(path)

    # 4. plate review of a `sabgal run` results folder
    with tempfile.TemporaryDirectory(prefix="sabgal_shots_") as tmp:
        results = _make_plate(Path(tmp))
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        widget.review = None
        widget._layers.clear()
        widget.open_results(results)
        _wait(widget)
        widget.tabs.setCurrentIndex(2)
        images = widget.results.images
        target = str(images.loc[images["n_cells"].idxmax(), "image"])  # the busiest field
        widget.open_result_image(target)
        _wait(widget)
        viewer.reset_view()
        path = out_dir / "napari_plate.png"
        _save(viewer, path)
        shots.append(path)
    viewer.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="output folder")
    args = parser.parse_args(argv)
    _ensure_display(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shots = take(args.out)
    too_big = [p for p in shots if p.stat().st_size >= MAX_BYTES]
    if too_big:
        log.error("larger than %d bytes: %s", MAX_BYTES, ", ".join(map(str, too_big)))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
