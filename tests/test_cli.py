"""The CLI end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from sabgal import __version__
from sabgal.cli import main
from sabgal.io import read_labels

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_IMAGES = ["image", "n_cells", "n_sabgal_positive", "fraction_sabgal_positive", "n_enlarged",
                   "fraction_enlarged", "n_senescent", "fraction_senescent", "status", "error"]
CONTRACT_CELLS = ["image", "cell_id", "centroid_y", "centroid_x", "area_px", "area_um2", "perimeter_px",
                  "form_factor", "solidity", "eccentricity", "aspect_ratio", "nucleus_area_px",
                  "nucleus_cell_area_ratio", "xgal_od_mean", "xgal_od_integrated", "xgal_stained_fraction",
                  "body_od_mean", "sabgal_positive", "enlarged", "senescent", "touches_border"]


def test_run_on_sample_data_writes_the_contract(sample_run):
    images = pd.read_csv(sample_run / "images.csv")
    cells = pd.read_csv(sample_run / "cells.csv")
    assert set(CONTRACT_IMAGES) <= set(images.columns)
    assert set(CONTRACT_CELLS) <= set(cells.columns)
    assert (images["status"] == "ok").all() and len(images) == 6
    # one set-up of each kind decided without any option
    assert set(images["setup"]) == {"counterstain", "brightfield", "fluorescence"}
    for _, row in images.iterrows():
        key = row["image"].rsplit(".", 1)[0]
        lab = read_labels(sample_run / "labels" / f"{key}_cells.tif")
        nuc = read_labels(sample_run / "labels" / f"{key}_nuclei.tif")
        assert lab.dtype == np.uint32 and lab.shape == (row["height_px"], row["width_px"])
        c = cells[cells["image"] == row["image"]]
        assert len(c) == row["n_cells"] == len(np.unique(lab)) - 1
        assert set(c["cell_id"]) == set(np.unique(lab)) - {0}
        assert set(np.unique(nuc)) - {0} <= set(c["cell_id"])
        assert row["n_sabgal_positive"] == c["sabgal_positive"].sum()
        # the per-image enlarged rule is shown: factor x the recorded reference area
        ref = row["enlarged_reference_area_px"]
        assert ref > 0 and np.isnan(row["enlarged_threshold_px"])
        assert (c["enlarged"].astype(bool) == (c["area_px"] > 1.8 * ref)).all()
    # where each nucleus size came from: the nuclei of a nuclear stain, or in
    # plain brightfield the scale selection, checked by the stained cells' holes
    by_setup = images.groupby("setup")["nucleus_size_source"].agg(set)
    assert by_setup["counterstain"] == by_setup["fluorescence"] == {"nuclear_stain"}
    assert by_setup["brightfield"] <= {"blobs_checked", "blobs_checked_at_scale", "blobs_corrected", "holes",
                                     "blobs_unchecked"}
    run = json.loads((sample_run / "run.json").read_text())
    assert run["sabgal_version"] == __version__
    assert run["config"]["classify"]["senescent_rule"] == "positive_and_enlarged"


def test_sample_counts_are_close_to_the_truth(sample_run):
    truth_dir = ROOT / "tests" / "data" / "sample_truth"
    images = pd.read_csv(sample_run / "images.csv")
    # nuclear stain present: counts are tight; plain brightfield is best-effort
    # (sample04 is a confluent sheet whose unstained cells show no cytoplasm and
    # faint nuclei; brightfield accuracy is measured by benchmarks/accuracy.py)
    tolerance = {"counterstain": 0.05, "fluorescence": 0.05, "brightfield": 0.5}
    for _, row in images.iterrows():
        stem = row["image"].rsplit(".", 1)[0]
        truth = pd.read_csv(truth_dir / f"{stem}_truth.csv")
        assert abs(row["n_cells"] - len(truth)) <= tolerance[row["setup"]] * len(truth) + 2, stem


def test_rerun_skips_finished_images_and_force_redoes_them(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("sample01_counterstain.jpg", "sample03_brightfield.png"):
        (src / name).write_bytes((ROOT / "sample_data" / name).read_bytes())
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    first = pd.read_csv(out / "images.csv")
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()} == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "images.csv")[CONTRACT_IMAGES], first[CONTRACT_IMAGES])
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q", "--force"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()} != stamp


def test_a_brightfield_field_without_stained_cells_takes_its_plates_nucleus_size(tmp_path):
    """A plain-brightfield field with too few stained cells' nuclear holes to
    check its nucleus size (a negative control) is analysed again with the
    size of the plate's checked fields where its own disagrees; the result
    records the hint, and a resumed run keeps it."""
    import dataclasses

    from sabgal import synth

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):  # fields whose stained cells' holes check their size
        (src / f"A0{k + 1}_f1.png").write_bytes((ROOT / "sample_data" / "sample03_brightfield.png").read_bytes())
    p = synth.random_params(np.random.default_rng(4), setup="brightfield", shape=(384, 512), jpeg=False)
    p = dataclasses.replace(p, senescent_fraction=0.0, positive_only_fraction=0.0, file_format="png")
    synth.write_field(synth.render_field(p, np.random.default_rng(p.seed)), src, "B01_f1",
                      truth_dir=tmp_path / "truth")
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    first = pd.read_csv(out / "images.csv").set_index("image")
    checked = first.drop(index="B01_f1.png")
    assert set(checked["nucleus_size_source"]) == {"blobs_checked"}
    assert first.at["B01_f1.png", "nucleus_size_source"].startswith("blobs")
    # say its own size came out far off and unchecked (as cell bodies or
    # specks can make it): the next run analyses it again with the plate's
    state = out / ".sabgal" / "B01_f1.json"
    rec = json.loads(state.read_text())
    rec["info"].update(nucleus_diameter_px=60.0, nucleus_size_source="blobs_unchecked")
    state.write_text(json.dumps(rec))
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    again = pd.read_csv(out / "images.csv").set_index("image")
    row = again.loc["B01_f1.png"]
    assert row["nucleus_size_hint_px"] == pytest.approx(checked["nucleus_diameter_px"].median(), abs=0.01)
    assert row["nucleus_size_source"] in ("blobs_plate_checked", "blobs_plate_corrected", "plate")
    assert 0.7 * row["nucleus_size_hint_px"] <= row["nucleus_diameter_px"] <= 1.4 * row["nucleus_size_hint_px"]
    assert again.drop(index="B01_f1.png")["nucleus_size_hint_px"].isna().all()
    # resumed: nothing is analysed again
    stamp = {q.name: q.stat().st_mtime_ns for q in (out / "labels").iterdir()}
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    assert {q.name: q.stat().st_mtime_ns for q in (out / "labels").iterdir()} == stamp


def test_same_input_same_config_same_output(tmp_path):
    src = ROOT / "sample_data" / "sample02_counterstain.tif"
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
        outs.append(pd.read_csv(out / "cells.csv"))
    pd.testing.assert_frame_equal(outs[0], outs[1])


def test_a_bad_image_is_an_error_row_and_the_others_go_on(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jpg").write_bytes((ROOT / "sample_data" / "sample01_counterstain.jpg").read_bytes())
    (src / "empty.tif").write_bytes(b"")
    tifffile.imwrite(src / "grey.tif", np.zeros((64, 64), np.uint8))
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 1
    images = pd.read_csv(out / "images.csv").set_index("image")
    assert images.loc["good.jpg", "status"] == "ok" and images.loc["good.jpg", "n_cells"] > 0
    assert images.loc["empty.tif", "status"] == "error" and "empty" in images.loc["empty.tif", "error"]
    assert "greyscale" in images.loc["grey.tif", "error"]
    assert "failed" in capsys.readouterr().err


@pytest.mark.parametrize("text, match", [("[classify]\nbogus = 1\n", "unknown key"),
                                         ("[setup]\nmode = 'x'\n", "setup.mode")])
def test_bad_config_exits_2_with_the_key_named(tmp_path, capsys, text, match):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert main(["run", str(ROOT / "sample_data"), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert match in capsys.readouterr().err


def test_no_images_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err


def test_presets_run(tmp_path):
    src = ROOT / "sample_data" / "sample05_fluorescence.tif"
    out = tmp_path / "o"
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q", "--config", "fluorescence"]) == 0
    assert pd.read_csv(out / "images.csv")["setup"].iloc[0] == "fluorescence"



def test_a_file_that_declares_srgb_is_read_as_light(tmp_path):
    """A plain-brightfield field through a camera that encodes light with
    the sRGB tone curve, saved twice: once saying so (a PNG sRGB chunk),
    once not. By default (illumination.encoding
    "auto") the first is decoded to light before optical density is read;
    the second, read as linear, has every density ~1/2.2 of its value and
    loses faint cells (detection F1 0.89 against 0.96)."""
    import dataclasses

    from PIL import Image, PngImagePlugin

    from sabgal import synth
    from sabgal.evaluate import match_labels

    p = synth.random_params(np.random.default_rng(3), setup="brightfield", shape=(512, 640), formats=("png",))
    field = synth.render_field(dataclasses.replace(p, srgb_camera=True), np.random.default_rng(p.seed))
    src = tmp_path / "in"
    src.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")
    Image.fromarray(field.rgb).save(src / "declared.png", pnginfo=info)
    Image.fromarray(field.rgb).save(src / "silent.png")
    out = tmp_path / "out"
    assert main(["run", str(src), "--out", str(out), "-j", "1", "-q"]) == 0
    images = pd.read_csv(out / "images.csv").set_index("image")
    assert images.loc["declared.png", "pixel_encoding"] == "srgb"
    assert images.loc["silent.png", "pixel_encoding"] == "linear"
    f1 = {name: match_labels(field.cell_labels, read_labels(out / "labels" / f"{name}_cells.tif")).f1
          for name in ("declared", "silent")}
    assert f1["declared"] > 0.94 and f1["declared"] > f1["silent"] + 0.04, f1
