"""The napari plugin: review model (no Qt), reader, sample data, widget.

The review model tests need neither napari nor Qt. The viewer tests are
marked ``napari`` and need napari, pytest-qt and an OpenGL-capable Qt
platform: with ``QT_QPA_PLATFORM=offscreen`` that means an X server for GLX.
When none is running and ``Xvfb`` is installed, this module starts one for
the session; otherwise the viewer tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sabgal import synth
from sabgal._napari import _review
from sabgal._napari._review import ImageReview, ResultsFolder, analysis_steps
from sabgal.corrections import load_corrections

SHAPE = (192, 240)
WIDGET = "SA-β-gal analysis and review"
# napari warns that PyQt5 cannot detect the desktop theme: harmless, and not ours.
pytestmark = pytest.mark.filterwarnings("ignore:System theme detection requires a Qt6 backend:UserWarning")


# ----------------------------------------------------------------- helpers
def _field(setup: str, seed: int, shape=SHAPE, **kw):
    params = synth.random_params(np.random.default_rng(seed), setup=setup, shape=shape, formats=("tif",),
                                 senescent_fraction=0.4, **kw)
    return synth.render_field(params, np.random.default_rng(params.seed))


def _drain(gen):
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        return steps, stop.value


def _analyse(rgb, nuclear=None, **kw) -> ImageReview:
    return _drain(analysis_steps(rgb, nuclear=nuclear, **kw))[1]


@pytest.fixture(scope="session")
def results_src(tmp_path_factory) -> Path:
    """A `sabgal run` results folder of three synthetic images (one with DAPI)."""
    from sabgal.cli import main

    root = tmp_path_factory.mktemp("plate")
    for i, (well, setup) in enumerate([("A01", "counterstain"), ("A02", "fluorescence"),
                                       ("B01", "brightfield")]):
        synth.write_field(_field(setup, 10 + i), root / "in", f"p1_{well}_f1", truth_dir=root / "truth")
    assert main(["run", str(root / "in"), "--out", str(root / "out"), "-j", "1", "-q"]) == 0
    return root / "out"


@pytest.fixture
def results(results_src, tmp_path) -> Path:
    """A fresh copy of the results folder (tests write corrections into it)."""
    dst = tmp_path / "results"
    shutil.copytree(results_src, dst)
    return dst


def _set_wells(folder: Path, wells: bool) -> None:
    """Give images.csv `plate` / `well` columns (from the file names), or take them away."""
    images = pd.read_csv(folder / "images.csv")
    images = images.drop(columns=[c for c in ("plate", "well") if c in images])
    if wells:
        images["plate"] = "p1"
        images["well"] = [n.split("_")[1] for n in images["image"]]
    images.to_csv(folder / "images.csv", index=False)


# ===================================================== review model (no Qt)
def test_analysis_steps_measure_like_analyze_image_and_call_like_sabgal_run(tmp_path):
    from sabgal import io as sio
    from sabgal.cli import main
    from sabgal.measure import CELL_COLUMNS
    from sabgal.pipeline import analyze_image

    paths = synth.write_field(_field("fluorescence", 3), tmp_path / "in", "A01", truth_dir=tmp_path / "truth")
    rgb, dapi = sio.read_rgb(paths["image"]).pixels, sio.read_nuclear(paths["dapi"]).pixels
    steps, review = _drain(analysis_steps(rgb, nuclear=dapi, image="A01.tif"))
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0
    assert review.prepared is not None and review.xgal.shape == SHAPE
    ref = analyze_image(rgb, nuclear=dapi, classify_cells=False)
    pd.testing.assert_frame_equal(review.measurements, ref.cells[list(CELL_COLUMNS)].reset_index(drop=True))
    np.testing.assert_array_equal(review.cell_labels, ref.cell_labels)
    # the calls are those of `sabgal run` on this image alone
    assert main(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-j", "1", "-q"]) == 0
    run = pd.read_csv(tmp_path / "out" / "cells.csv")
    calls = ["cell_id", "sabgal_positive", "enlarged", "senescent"]
    pd.testing.assert_frame_equal(review.kept_calls()[calls], run[calls])


def test_analysis_rejects_a_nuclear_image_of_another_shape():
    field = _field("counterstain", 1)
    with pytest.raises(ValueError, match="nuclear image shape"):
        _analyse(field.rgb, nuclear=np.zeros((10, 10)))


def test_flip_changes_counts_and_flipping_back_removes_the_correction():
    review = _analyse(_field("counterstain", 2).rgb)
    before = review.summary()
    calls = review.calls()
    neg = int(calls.loc[~calls["sabgal_positive"], "cell_id"].iloc[0])
    assert review.flip(neg, "sabgal_positive") is True
    assert review.summary()["n_sabgal_positive"] == before["n_sabgal_positive"] + 1
    assert review.corrections_table()[["cell_id", "field", "old", "new"]].values.tolist() == \
        [[neg, "sabgal_positive", False, True]]
    assert review.flip(neg, "sabgal_positive") is False
    assert review.corrections == {} and review.summary() == before


def test_deleted_cells_stay_listed_but_leave_the_counts():
    review = _analyse(_field("counterstain", 2).rgb)
    n = review.summary()["n_cells"]
    cid = int(review.calls()["cell_id"].iloc[0])
    review.flip(cid, "deleted")
    calls = review.calls()
    assert len(calls) == n and calls.set_index("cell_id").at[cid, "deleted"]
    assert review.summary()["n_cells"] == n - 1
    with pytest.raises(KeyError):
        review.flip(10_000, "sabgal_positive")
    with pytest.raises(ValueError, match="field must be one of"):
        review.flip(cid, "blue")


def test_positive_count_never_rises_with_the_threshold():
    review = _analyse(_field("counterstain", 4).rgb)
    counts = []
    for t in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        review.set_thresholds(positive=t)
        counts.append(review.summary()["n_sabgal_positive"])
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    review.reset_thresholds()
    assert review.thresholds == review.learnt_thresholds


def test_edited_labels_are_remeasured_and_only_edited_cells_change():
    review = _analyse(_field("counterstain", 2).rgb)
    before = review.measurements.set_index("cell_id")
    labels = review.cell_labels.copy()
    gone = int(before.index[0])
    labels[labels == gone] = 0
    new_id = int(labels.max()) + 1
    labels[5:25, 5:25] = new_id  # painted over whatever was there
    changed = review.set_labels(labels)
    after = review.measurements.set_index("cell_id")
    assert gone in changed and new_id in changed
    assert gone not in after.index and after.at[new_id, "area_px"] == 400
    untouched = [c for c in before.index if c not in changed]
    pd.testing.assert_frame_equal(after.loc[untouched], before.loc[untouched])
    assert review.labels_edited
    # nuclei never lie outside their own cell
    nuc = review.nucleus_labels
    assert np.all((nuc == 0) | (nuc == review.cell_labels))


def test_review_of_a_results_folder_reproduces_its_calls(results):
    folder = ResultsFolder(results)
    cells = pd.read_csv(results / "cells.csv")
    calls = ["cell_id", "sabgal_positive", "enlarged", "senescent"]
    for image in folder.image_names:
        _rgb, _nuc, review = folder.load(image, read_pixels=False)
        ref = cells[cells["image"] == image][calls].reset_index(drop=True)
        pd.testing.assert_frame_equal(review.kept_calls()[calls], ref)


def test_results_folder_round_trip_of_corrections(results):
    folder = ResultsFolder(results)
    image = folder.image_names[1]
    _rgb, _nuc, review = folder.load(image)
    cid = int(review.calls()["cell_id"].iloc[0])
    review.flip(cid, "sabgal_positive")
    review.flip(int(review.calls()["cell_id"].iloc[1]), "deleted")
    folder.save(review)
    table = load_corrections(results / "corrections.csv")
    assert set(table["image"]) == {image} and len(table) == 2
    _rgb, _nuc, again = ResultsFolder(results).load(image)
    assert again.corrections == review.corrections and again.summary() == review.summary()
    # `sabgal run`'s table rebuild applies them: images.csv agrees with the review
    images = ResultsFolder(results).rebuild()
    row = images.set_index("image").loc[image]
    assert row["n_cells"] == review.summary()["n_cells"]
    assert row["n_sabgal_positive"] == review.summary()["n_sabgal_positive"]


def test_edited_labels_are_saved_into_the_results_folder_and_the_rebuild_keeps_them(results):
    from sabgal import io as sio
    from sabgal._napari._review import prepare_for_edits

    folder = ResultsFolder(results)
    image = folder.image_names[0]
    rgb, nuc, review = folder.load(image)
    prepare_for_edits(review, rgb.pixels, nuclear=None if nuc is None else nuc.pixels)
    labels = review.cell_labels.copy()
    new_id = int(labels.max()) + 1
    # split the palest cell in two (two unstained cells the run had merged):
    # the set's learnt thresholds stay as they were, so the review's calls
    # are the rebuild's
    m = review.measurements
    palest = int(m.loc[m["xgal_od_core_p60"].idxmin(), "cell_id"])
    yy, xx = np.nonzero(labels == palest)
    left = xx < np.median(xx)
    labels[yy[left], xx[left]] = new_id
    review.set_labels(labels)
    folder.save(review)
    saved = sio.read_labels(results / "labels" / f"{folder.key(image)}_cells.tif")
    np.testing.assert_array_equal(saved, review.cell_labels)
    folder.rebuild()
    cells = pd.read_csv(results / "cells.csv")
    assert new_id in set(cells.loc[cells["image"] == image, "cell_id"])
    _rgb, _nuc, again = ResultsFolder(results).load(image, read_pixels=False)
    assert again.summary() == review.summary()


def test_results_folder_errors_name_the_file(tmp_path, results):
    with pytest.raises(_review.ResultsError, match="not a sabgal results folder"):
        ResultsFolder(tmp_path)
    (results / "labels" / f"{ResultsFolder(results).key(ResultsFolder(results).image_names[0])}_cells.tif").unlink()
    folder = ResultsFolder(results)
    with pytest.raises(_review.ResultsError, match="label image missing"):
        folder.load(folder.image_names[0])


def test_plate_grid_pools_fields_per_well():
    images = pd.DataFrame({
        "image": ["a", "b", "c", "d"], "plate": ["P", "P", "P", "Q"], "well": ["A01", "A01", "C05", "H12"],
        "status": ["ok"] * 4, "n_cells": [10, 30, 5, 0], "n_sabgal_positive": [5, 5, 5, 0]})
    grids = _review.plate_grid(images)
    assert [g.plate for g in grids] == ["P", "Q"]
    p = grids[0]
    assert (p.n_rows, p.n_cols) == (8, 12)
    assert p.fraction[0, 0] == pytest.approx(10 / 40) and p.fraction[2, 4] == 1.0
    assert np.isnan(p.fraction[1, 1]) and p.images[(0, 0)] == ["a", "b"]
    assert np.isnan(grids[1].fraction[7, 11])  # no cells: no fraction
    assert _review.plate_grid(images.drop(columns="well")) is None
    assert _review.plate_grid(images.assign(well="x")) is None
    big = images.assign(well=["P24", "A1", "B2", "C3"])
    assert (_review.plate_grid(big)[0].n_rows, _review.plate_grid(big)[0].n_cols) == (16, 24)


def test_tuned_config_is_a_valid_config_file(tmp_path):
    from sabgal.classify import Thresholds
    from sabgal.config import Config, load_config

    th = Thresholds(positive=0.123, positive_source="manual", measure="xgal_od_p90", enlarged_factor=2.5)
    path = tmp_path / "tuned.toml"
    path.write_text(_review.tuned_config_toml(Config(), th, "positive_or_enlarged"), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.classify.positive_threshold == 0.123 and cfg.classify.enlarged_factor == 2.5
    assert cfg.classify.senescent_rule == "positive_or_enlarged" and cfg.segment == Config().segment


# ================================================================= manifest
def test_npe2_validate_passes():
    pytest.importorskip("npe2", reason="npe2 is not installed")
    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", "sabgal", "--imports"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


# =================================================================== reader
@pytest.mark.napari
def test_reader_opens_an_image_with_its_dapi_companion(tmp_path):
    pytest.importorskip("napari", reason="napari is not installed")
    from sabgal._napari._reader import napari_get_reader

    field = _field("fluorescence", 5)
    paths = synth.write_field(field, tmp_path, "A01_f1", truth_dir=tmp_path / "truth")
    reader = napari_get_reader(paths["image"])
    layers = reader(paths["image"])
    (rgb, rgb_meta, rgb_kind), (nuc, nuc_meta, nuc_kind) = layers
    assert rgb_kind == nuc_kind == "image" and rgb_meta["rgb"]
    assert rgb.shape == SHAPE + (3,) and rgb.dtype == np.float32 and 0 <= rgb.min() and rgb.max() <= 1
    assert nuc.shape == SHAPE and not nuc_meta["visible"]
    assert rgb_meta["metadata"]["sabgal"]["companion"] == paths["dapi"]
    assert napari_get_reader(paths["dapi"]) is None  # a companion opens with its RGB image
    assert napari_get_reader(str(tmp_path)) is None  # a plain folder is not a results folder
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None


@pytest.mark.napari
def test_reader_reports_a_bad_image_in_one_line(tmp_path):
    pytest.importorskip("napari", reason="napari is not installed")
    from sabgal._napari._reader import napari_get_reader
    from sabgal.io import ImageReadError

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(ImageReadError, match="broken.tif"):
        napari_get_reader(str(bad))(str(bad))


@pytest.mark.napari
def test_reader_opens_a_results_folder(results):
    pytest.importorskip("napari", reason="napari is not installed")
    from sabgal._napari._reader import napari_get_reader

    layers = napari_get_reader(str(results))(str(results))
    kinds = {meta["metadata"]["sabgal"]["role"]: (data, meta, kind) for data, meta, kind in layers}
    assert {"rgb", "nuclei", "cells"} <= set(kinds)
    data, meta, kind = kinds["cells"]
    folder = ResultsFolder(results)
    assert kind == "labels" and meta["metadata"]["sabgal"]["image"] == folder.image_names[0]
    features = meta["features"]
    assert {"index", "cell_id", "call", "sabgal_positive", "xgal_od_p90"} <= set(features.columns)
    assert len(features) == int(folder.images["n_cells"].iloc[0])
    assert set(np.unique(data)) - {0} == set(features["cell_id"])


# ================================================================ in napari
@pytest.fixture(scope="session", autouse=True)
def _qt_platform():
    """Headless Qt with OpenGL: offscreen windows, GLX from an X server.

    When no DISPLAY is set and Xvfb is installed, an Xvfb is started with
    ``-terminate`` and this process holds a connection to it until it exits;
    the server then exits by itself. (Stopping it while Qt is still connected
    would make Xlib abort the whole test run.)
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        yield
        return
    import ctypes
    import ctypes.util

    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1600x1200x24", "-nolisten", "tcp",
                             "-terminate"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        display = f.readline().strip()
    held = None
    try:
        xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        xlib.XOpenDisplay.restype = ctypes.c_void_p
        held = xlib.XOpenDisplay(f":{display}".encode()) if display else None
    except OSError:
        pass
    if held:
        os.environ["DISPLAY"] = f":{display}"
        _qt_platform.connection = held  # kept open for the life of the process
    else:  # cannot use it: stop it now (no Qt client has connected yet)
        proc.terminate()
        proc.wait(timeout=10)
    yield


@pytest.fixture(scope="session")
def _opengl(_qt_platform):
    """Skip (with the reason) when napari, pytest-qt or an OpenGL-capable Qt platform is missing."""
    pytest.importorskip("napari", reason="napari is not installed")
    pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    ok = ctx.create() and ctx.makeCurrent(surface)
    if ok:
        ctx.doneCurrent()
    del ctx, surface
    if not ok:
        pytest.skip(f"no OpenGL context on Qt platform {app.platformName()!r} (DISPLAY="
                    f"{os.environ.get('DISPLAY')!r}): install xvfb, or run the tests under xvfb-run")


@pytest.fixture
def viewer_widget(_opengl, make_napari_viewer, qtbot):
    from qtpy.QtCore import QThreadPool

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("sabgal", WIDGET)
    yield viewer, widget
    # An analysis thread emits "finished" a moment before its runnable returns;
    # let it return before the viewer (and the Qt objects it signals) is torn down,
    # and deliver the signals it queued while the widgets they call still exist.
    from napari.qt.threading import WorkerBase

    assert QThreadPool.globalInstance().waitForDone(60_000), "an analysis thread did not finish"
    qtbot.waitUntil(lambda: not WorkerBase._worker_set, timeout=10_000)


def _wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None and widget._prep_worker is None, timeout=timeout)


def _run(qtbot, viewer, widget, field, name="field"):
    viewer.add_image(field.rgb, name=name, rgb=True)
    if field.nuclear is not None:
        viewer.add_image(field.nuclear, name=f"{name} dapi", visible=False)
        widget.nuclear_combo.setCurrentText(f"{name} dapi")
    widget.image_combo.setCurrentText(name)
    assert widget.run_analysis() is not None
    _wait_idle(qtbot, widget)
    return widget.review


def _colour_of(layer, cell_id):
    return tuple(round(float(c), 3) for c in layer.colormap.color_dict[cell_id])


@dataclass
class _Mouse:
    """A vispy-like mouse event, as the viewer's callbacks read it."""

    type: str
    position: tuple[float, float]
    pos: tuple[int, int] = (10, 10)
    button: int = 1
    modifiers: tuple[str, ...] = ()
    is_dragging: bool = False
    handled: bool = False
    dims_displayed: tuple[int, int] = (0, 1)
    view_direction: tuple | None = None
    dims_point: tuple | None = None


def _click(viewer, where, *, drag_to=None):
    """Press and release the left button at ``where`` (world), optionally dragging in between."""
    from napari.utils._proxies import ReadOnlyWrapper  # what the canvas hands to callbacks
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    mouse_press_callbacks(viewer, ReadOnlyWrapper(_Mouse("mouse_press", where), exceptions=("handled",)))
    end = (10, 10)
    if drag_to is not None:
        end = drag_to
        mouse_move_callbacks(viewer, _Mouse("mouse_move", where, pos=end, is_dragging=True))
    mouse_release_callbacks(viewer, _Mouse("mouse_release", where, pos=end))


@pytest.mark.napari
@pytest.mark.parametrize("key", ["field", "field_dapi"])
def test_sample_data_opens(_opengl, make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("sabgal", key)
    rgb = [ly for ly in viewer.layers if getattr(ly, "rgb", False)]
    assert len(rgb) == 1 and rgb[0].data.shape[-1] == 3
    truth = [ly for ly in viewer.layers if ly.metadata.get("sabgal", {}).get("role") == "truth"]
    assert len(truth) == 1 and truth[0].data.max() > 10
    if key == "field_dapi":
        assert any(ly.metadata.get("sabgal", {}).get("role") == "nuclear" for ly in viewer.layers)


@pytest.mark.napari
def test_widget_analyses_an_image_into_layers_with_features(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    field = _field("fluorescence", 7)
    review = _run(qtbot, viewer, widget, field)
    assert "Analysis failed" not in widget.status_label.text()
    names = [ly.name for ly in viewer.layers]
    assert {"field X-gal", "field nuclei", "field cells"} <= set(names)
    cells = viewer.layers["field cells"]
    feats = cells.features
    assert len(feats) == review.summary()["n_cells"] > 5
    assert {"index", "cell_id", "call", "sabgal_positive", "enlarged", "senescent", "xgal_od_p90",
            "area_px"} <= set(feats.columns)
    assert set(np.unique(cells.data)) - {0} == set(feats["cell_id"])
    assert cells.contour > 0
    # the widget adds nothing of its own: the same numbers as the review model
    ref = _analyse(field.rgb, nuclear=field.nuclear, image="field")
    assert review.summary() == ref.summary()
    s, text = ref.summary(), widget.counts_label.text()
    assert f"<b>{s['n_cells']}</b>" in text
    assert f"<b>{s['n_sabgal_positive']}</b> ({100 * s['fraction_sabgal_positive']:.1f} %)" in text
    widget.tabs.setCurrentWidget(widget.table)  # the table is filled when shown
    assert widget.table.row_count() == len(feats)


@pytest.mark.napari
def test_threshold_change_recolours_without_resegmenting(viewer_widget, qtbot):
    from sabgal._napari._layers import CALL_COLORS

    viewer, widget = viewer_widget
    review = _run(qtbot, viewer, widget, _field("counterstain", 2))
    cells = viewer.layers["field cells"]
    labels_before = cells.data.copy()
    pos = review.calls().query("sabgal_positive & ~senescent")
    if not len(pos):
        pos = review.calls().query("sabgal_positive")
    cid = int(pos["cell_id"].iloc[0])
    score = float(pos[widget.review.thresholds.measure].iloc[0])
    assert _colour_of(cells, cid) in {tuple(round(float(c), 3) for c in CALL_COLORS[k]) for k in ("positive", "senescent")}
    n_before = review.summary()["n_sabgal_positive"]
    widget.pos_spin.setValue(score + 0.02)  # what moving the slider / spin box does
    assert score < widget.review.thresholds.positive == pytest.approx(widget.pos_spin.value())
    assert not cells.features.set_index("cell_id").at[cid, "sabgal_positive"]
    assert _colour_of(cells, cid) in {tuple(round(float(c), 3) for c in CALL_COLORS[k]) for k in ("negative", "enlarged")}
    assert widget.review.summary()["n_sabgal_positive"] < n_before
    np.testing.assert_array_equal(cells.data, labels_before)
    widget.reset_thresholds()
    assert widget.review.summary()["n_sabgal_positive"] == n_before


@pytest.mark.napari
def test_click_flips_a_call_and_saves_corrections_then_reopening_restores_them(
        viewer_widget, qtbot, results, make_napari_viewer):
    viewer, widget = viewer_widget
    assert widget.open_results(results)
    _wait_idle(qtbot, widget)
    review = widget.review
    image = review.image
    n_pos = review.summary()["n_sabgal_positive"]
    neg = review.calls().query("~sabgal_positive & ~deleted").iloc[0]
    cid = int(neg["cell_id"])
    ys, xs = np.nonzero(review.cell_labels == cid)
    where = (float(ys[len(ys) // 2]), float(xs[len(xs) // 2]))
    widget.click_combo.setCurrentIndex(0)  # flip SA-β-gal positive
    _click(viewer, where)
    assert widget.review.summary()["n_sabgal_positive"] == n_pos + 1
    assert widget.table.selected_cell() == cid
    table = load_corrections(results / "corrections.csv")
    assert table[["image", "cell_id", "field", "old", "new"]].values.tolist() == \
        [[image, cid, "sabgal_positive", False, True]]
    # a drag pans the view: no flip
    _click(viewer, where, drag_to=(60, 60))
    assert widget.review.summary()["n_sabgal_positive"] == n_pos + 1
    # delete another object
    widget.click_combo.setCurrentIndex(3)
    other = int(review.calls().query("cell_id != @cid")["cell_id"].iloc[0])
    n_cells = widget.review.summary()["n_cells"]
    widget.flip(other, "deleted")
    assert widget.review.summary()["n_cells"] == n_cells - 1
    expected = widget.review.summary()

    # reopen the folder in a new viewer: the reader docks the widget, which restores the corrections
    viewer2 = make_napari_viewer()
    viewer2.open(str(results), plugin="sabgal")
    _dock, widget2 = viewer2.window.add_plugin_dock_widget("sabgal", WIDGET)  # the one the reader docked
    _wait_idle(qtbot, widget2)
    if widget2.review.image != image:
        assert widget2.open_result_image(image)
    assert widget2.review.summary() == expected
    feats = viewer2.layers[f"{Path(image).stem} cells"].features.set_index("cell_id")
    assert feats.at[cid, "sabgal_positive"] and feats.at[cid, "corrected"] and feats.at[other, "deleted"]


@pytest.mark.napari
def test_painting_a_missed_cell_and_erasing_a_false_one_update_the_counts(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    review = _run(qtbot, viewer, widget, _field("counterstain", 2))
    cells = viewer.layers["field cells"]
    n = review.summary()["n_cells"]
    gone = int(review.calls()["cell_id"].iloc[0])
    new_id = int(cells.data.max()) + 1
    data = cells.data
    data[data == gone] = 0
    data[2:22, 2:22] = new_id
    cells.data = data
    cells.events.paint(value=[])  # what a paint stroke emits
    qtbot.waitUntil(lambda: new_id in set(cells.features["cell_id"]), timeout=5000)
    feats = cells.features.set_index("cell_id")
    assert gone not in feats.index and feats.at[new_id, "area_px"] == 400
    assert widget.review.summary()["n_cells"] == n  # one gone, one new


@pytest.mark.napari
def test_plate_review_jumps_between_images(viewer_widget, qtbot, results):
    viewer, widget = viewer_widget
    _set_wells(results, True)
    assert widget.open_results(results)
    names = ResultsFolder(results).image_names
    plate = widget.plate
    assert not plate.grid.isHidden() and plate.grid.rowCount() == 8 and plate.grid.columnCount() == 12
    assert widget.review.image == names[0]
    assert "A01" in plate.grid.item(0, 0).toolTip()
    plate._on_well(1, 0)  # B01
    assert widget.review.image == names[2]
    assert widget.step_image(+1) and widget.review.image == names[0]
    assert widget.step_image(-1) and widget.review.image == names[2]
    assert widget.position_label.text() == "3 / 3"
    plate.list.setCurrentRow(1)
    assert widget.review.image == names[1]
    _wait_idle(qtbot, widget)
    assert any(ly.name.endswith("X-gal") for ly in viewer.layers)
    cells = [ly for ly in viewer.layers if ly.metadata.get("sabgal", {}).get("role") == "cells"]
    assert len(cells) == 1  # the layers are re-used from image to image


@pytest.mark.napari
def test_paging_quickly_prepares_one_image_at_a_time_and_skips_those_paged_past(viewer_widget, qtbot, results,
                                                                              monkeypatch):
    import threading

    from sabgal._napari import _folder

    viewer, widget = viewer_widget
    lock, running, most, prepared = threading.Lock(), [0], [0], []
    original = _folder.prepare_for_edits

    def counting(review, *args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            prepared.append(review.image)
        try:
            return original(review, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(_folder, "prepare_for_edits", counting)
    _set_wells(results, False)
    assert widget.open_results(results)
    names = ResultsFolder(results).image_names
    for _ in range(2):  # page through twice, faster than one image can be prepared
        assert widget.step_image(+1) and widget.step_image(+1) and widget.step_image(+1)
    assert widget.step_image(+1) and widget.review.image == names[1]
    _wait_idle(qtbot, widget)
    assert most[0] == 1
    assert prepared == [names[0], names[1]]
    assert widget.review.prepared is not None
    assert any(ly.name.endswith("X-gal") for ly in viewer.layers)


@pytest.mark.napari
def test_plate_review_without_wells_lists_images(viewer_widget, qtbot, results):
    _viewer, widget = viewer_widget
    _set_wells(results, False)
    assert widget.open_results(results)
    assert widget.plate.grid.isHidden()
    assert widget.plate.list.count() == 3
    _wait_idle(qtbot, widget)


@pytest.mark.napari
def test_table_row_and_cell_selection_are_linked(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    review = _run(qtbot, viewer, widget, _field("counterstain", 2))
    row = review.calls().iloc[3]
    cid = int(row["cell_id"])
    widget.table.select_cell(cid)
    widget.table.cell_selected.emit(cid)  # what a click on the row emits
    ring = viewer.layers["selected cell"]
    np.testing.assert_allclose(ring.data[0], [row["centroid_y"], row["centroid_x"]])
    from sabgal._napari._widget import _camera

    np.testing.assert_allclose(_camera(viewer).center[-2:], [row["centroid_y"], row["centroid_x"]])
    assert viewer.layers["field cells"].selected_label == cid
    widget.click_combo.setCurrentIndex(4)  # only select
    other = review.calls().iloc[5]
    ys, xs = np.nonzero(review.cell_labels == int(other["cell_id"]))
    widget.click((float(ys[0]), float(xs[0])))
    assert widget.table.selected_cell() == int(other["cell_id"])
    assert widget.review.corrections == {}


@pytest.mark.napari
def test_exports_write_a_cells_table_and_a_config(viewer_widget, qtbot, tmp_path):
    from sabgal.config import load_config

    viewer, widget = viewer_widget
    _run(qtbot, viewer, widget, _field("counterstain", 2))
    widget.pos_spin.setValue(0.25)
    cfg = load_config(widget.export_config(str(tmp_path / "tuned.toml")))
    assert cfg.classify.positive_threshold == 0.25
    table = pd.read_csv(widget.export_cells(str(tmp_path / "cells.csv")))
    assert len(table) == widget.review.summary()["n_cells"] and "corrected" in table


@pytest.mark.napari
def test_analysis_error_is_shown_in_one_line(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="x", rgb=True)
    viewer.add_image(np.zeros((10, 10), np.float32), name="small dapi")
    widget.image_combo.setCurrentText("x")
    widget.nuclear_combo.setCurrentText("small dapi")
    widget.run_analysis()
    _wait_idle(qtbot, widget)
    assert "nuclear image shape" in widget.status_label.text()
    assert widget.review is None


