"""QC overlays: outlines in the colour of each call, nuclei marked, sensible size, legend."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sabgal.overlay import (CALL_COLOURS, NUCLEUS_COLOUR, cell_categories, load_overlay_base,
                            overlay_summary_lines, render_overlay, resize_for_display, save_overlay_base,
                            write_overlay, write_overlays)

BG = 235


def scene(shape=(120, 160)):
    """Four square cells, one per call, each with a nucleus; a flat grey background."""
    rgb = np.full(shape + (3,), BG, np.uint8)
    cells = np.zeros(shape, np.uint32)
    nuclei = np.zeros(shape, np.uint32)
    boxes = {1: (10, 50, 10, 50), 2: (10, 50, 90, 130), 3: (65, 110, 10, 60), 4: (65, 110, 90, 150)}
    for cid, (r0, r1, c0, c1) in boxes.items():
        cells[r0:r1, c0:c1] = cid
        rgb[r0:r1, c0:c1] = (200, 190, 210)
        rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
        nuclei[rm - 5:rm + 5, cm - 5:cm + 5] = cid
    calls = pd.DataFrame({"cell_id": [1, 2, 3, 4], "sabgal_positive": [False, True, True, False],
                          "enlarged": [False, False, True, True], "senescent": [False, False, True, False]})
    return rgb, cells, nuclei, calls


def colour_at(img, r, c):
    return tuple(int(v) for v in img[r, c])


def test_outlines_take_the_colour_of_the_call():
    rgb, cells, nuclei, calls = scene()
    out = render_overlay(rgb, cells, nuclei, calls, min_px=1)
    assert out.shape[1] == 160 and out.shape[0] > 120  # panel under the image
    assert colour_at(out, 10, 30) == CALL_COLOURS["negative"]  # top edge of cell 1
    assert colour_at(out, 10, 110) == CALL_COLOURS["positive"]
    assert colour_at(out, 65, 30) == CALL_COLOURS["senescent"]
    assert colour_at(out, 66, 30) == CALL_COLOURS["senescent"]  # senescent outlines are double width
    assert colour_at(out, 66, 110) != CALL_COLOURS["enlarged"]
    assert colour_at(out, 65, 110) == CALL_COLOURS["enlarged"]


def test_interiors_and_background_keep_their_pixels():
    rgb, cells, nuclei, calls = scene()
    out = render_overlay(rgb, cells, nuclei, calls, min_px=1)
    assert colour_at(out, 20, 20) == (200, 190, 210)
    assert colour_at(out, 58, 5) == (BG, BG, BG)


def test_nuclei_are_outlined_in_white():
    rgb, cells, nuclei, calls = scene()
    out = render_overlay(rgb, cells, nuclei, calls, min_px=1)
    edge = colour_at(out, 25, 30)  # top edge of cell 1's nucleus (rows 25..34)
    assert min(edge) > 220 and edge != colour_at(out, 24, 30)
    blend = 0.35 * np.array((200, 190, 210)) + 0.65 * np.array(NUCLEUS_COLOUR)
    np.testing.assert_allclose(edge, blend, atol=1)


def test_panel_holds_title_counts_and_legend():
    rgb, cells, nuclei, calls = scene()
    plain = render_overlay(rgb, cells, nuclei, calls, min_px=1)
    titled = render_overlay(rgb, cells, nuclei, calls, min_px=1, title="A01_f1.png", qc_pass=False,
                            qc_reasons="out of focus: sharpness 0.2x plate median (< 0.35)")
    assert titled.shape[0] > plain.shape[0]  # title and verdict lines
    panel = titled[120:]
    assert (panel < 128).any()  # dark text
    red = (panel[..., 0] > 150) & (panel[..., 1] < 60) & (panel[..., 2] < 60)
    assert red.any()  # the QC verdict is red when flagged
    for name in ("negative", "positive", "senescent", "enlarged"):
        assert (panel == np.array(CALL_COLOURS[name], np.uint8)).all(axis=-1).any(), name


def test_without_calls_cells_are_drawn_unclassified():
    rgb, cells, nuclei, _ = scene()
    out = render_overlay(rgb, cells, nuclei, None, min_px=1)
    assert colour_at(out, 10, 30) == CALL_COLOURS["unclassified"]


def test_big_images_are_shrunk_and_small_ones_enlarged():
    rgb, cells, nuclei, calls = scene()
    big = np.kron(cells, np.ones((20, 20), np.uint32))  # 2400 x 3200
    big_rgb = np.repeat(np.repeat(rgb, 20, axis=0), 20, axis=1)
    big_nuc = np.kron(nuclei, np.ones((20, 20), np.uint32))
    out = render_overlay(big_rgb, big, big_nuc, calls, max_px=800)
    assert out.shape[1] == 800
    assert colour_at(out, 200, 100) == (200, 190, 210)  # cell 1's interior survives the shrink
    small = render_overlay(rgb, cells, nuclei, calls, min_px=640)
    assert small.shape[1] == 640  # 160 px x 4


def test_resize_keeps_labels_integer_and_aligned():
    rgb, cells, nuclei, _ = scene((1000, 1500))
    base = resize_for_display(rgb, cells, nuclei, max_px=300)
    assert base.rgb.shape == (200, 300, 3) and base.cells.shape == (200, 300)
    assert set(np.unique(base.cells)) <= set(np.unique(cells))
    assert base.scale == pytest.approx(0.2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_any_image_dtype_is_accepted(dtype):
    rgb, cells, nuclei, calls = scene()
    img = rgb.astype(np.float32) / 255 if dtype == np.float32 else (
        rgb.astype(np.uint16) * 16 if dtype == np.uint16 else rgb)
    out = render_overlay(img.astype(dtype), cells, nuclei, calls, min_px=1)
    assert out.dtype == np.uint8 and out.shape[2] == 3


def test_bad_inputs_name_the_argument():
    rgb, cells, nuclei, calls = scene()
    with pytest.raises(ValueError, match="cell_labels must have the image's shape"):
        render_overlay(rgb, cells[:10], nuclei, calls)
    with pytest.raises(ValueError, match="rgb must have shape"):
        render_overlay(rgb[..., 0], cells, nuclei, calls)
    with pytest.raises(ValueError, match="nucleus_labels must be an integer"):
        render_overlay(rgb, cells, nuclei.astype(float), calls)


def test_scale_bar_is_drawn_when_the_pixel_size_is_known():
    rgb, cells, nuclei, calls = scene()
    without = render_overlay(rgb, cells, nuclei, calls, min_px=1)
    with_bar = render_overlay(rgb, cells, nuclei, calls, min_px=1, pixel_size_um=0.5)
    corner = (slice(100, 120), slice(110, 160))
    assert (with_bar[corner] < 30).all(axis=-1).any()
    assert not (without[corner] < 30).all(axis=-1).any()


def test_categories_and_summary_lines():
    assert cell_categories(None) == {}
    lines = overlay_summary_lines({"n_cells": 0, "n_sabgal_positive": 0, "n_enlarged": 0, "n_senescent": 0,
                                   "positive_threshold_od": 0.12, "positive_threshold_source": "controls"})
    assert lines == ["0 cells · SA-β-gal+ 0 · enlarged 0 · senescent 0",
                     "SA-β-gal+ = X-gal OD above 0.120 (controls)"]


def test_base_round_trip_and_batch_rendering(tmp_path):
    from PIL import Image

    rgb, cells, nuclei, calls = scene()
    state = tmp_path / ".sabgal"
    save_overlay_base(state / "k1.overlay.npz", rgb, cells, nuclei, max_px=1024, min_px=320)
    base = load_overlay_base(state / "k1.overlay.npz")
    assert base.rgb.shape == (240, 320, 3) and base.scale == 2.0
    np.testing.assert_array_equal(base.cells[::2, ::2], cells)

    sets = [SimpleNamespace(key="k1", image="A01.png"), SimpleNamespace(key="k2", image="A02.png")]
    images = pd.DataFrame({"image": ["A01.png", "A02.png"], "status": ["ok", "error"], "n_cells": [4, 0],
                           "n_sabgal_positive": [2, 0], "n_enlarged": [2, 0], "n_senescent": [1, 0],
                           "qc_pass": [True, False], "qc_reasons": ["", "analysis failed"]})
    cells_t = calls.assign(image="A01.png")
    assert write_overlays(tmp_path, sets, images, cells_t) == 1
    png = tmp_path / "qc" / "k1.png"
    assert png.exists() and not (tmp_path / "qc" / "k2.png").exists()
    with Image.open(png) as im:
        assert im.size[0] == 320 and im.info["sabgal-image"] == "A01.png"
    assert write_overlays(tmp_path, sets, images, cells_t) == 0  # unchanged: not redrawn
    cells_t.loc[0, "sabgal_positive"] = True  # a corrected call redraws it
    assert write_overlays(tmp_path, sets, images, cells_t, workers=2) == 1


def test_write_overlay_is_a_png_with_metadata(tmp_path):
    from PIL import Image

    write_overlay(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8), metadata={"k": "v"})
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG" and im.info["k"] == "v"


def test_table_values_from_csv_or_memory_give_the_same_overlay(tmp_path):
    rgb, cells, nuclei, calls = scene()
    save_overlay_base(tmp_path / ".sabgal" / "k.overlay.npz", rgb, cells, nuclei)
    sets = [SimpleNamespace(key="k", image="a.png")]
    row = {"image": "a.png", "status": "ok", "n_cells": 4, "n_sabgal_positive": 2, "n_enlarged": 2,
           "n_senescent": 1, "qc_pass": True, "qc_reasons": "", "pixel_size_um": None}
    assert write_overlays(tmp_path, sets, pd.DataFrame([row]), calls.assign(image="a.png")) == 1
    from_csv = {**row, "qc_reasons": float("nan"), "pixel_size_um": float("nan"), "n_cells": 4.0}
    assert write_overlays(tmp_path, sets, pd.DataFrame([from_csv]), calls.assign(image="a.png")) == 0
