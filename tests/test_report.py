"""The HTML run report: every section, self-contained, right layout, renders in a browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sabgal.config import Config, config_to_dict
from sabgal.report import (REPORT_SECTIONS, RunTables, build_report, methods_text, plate_shape, read_run,
                           well_position, write_report)

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = [("DMSO", 0.0, "negative_control"), ("doxorubicin", 0.01, "sample"), ("doxorubicin", 0.1, "sample"),
              ("doxorubicin", 1.0, "sample"), ("etoposide", 1.0, "sample"), ("etoposide", 10.0, "sample"),
              ("palbociclib", 1.0, "positive_control")]


def synthetic_results(out: Path, *, n_rows: int = 3, n_cols: int = 7, fields: int = 2, plates=("P1",),
                      with_plate: bool = True, seed: int = 0, n_images: int | None = None) -> Path:
    """A results folder written directly as tables (no image analysis): a plate with
    conditions, doses and roles, one flagged image with an overlay, cells and run.json."""
    from sabgal.batch import image_key
    from sabgal.overlay import render_overlay, write_overlay

    rng = np.random.default_rng(seed)
    rows, cell_rows = [], []
    for plate in plates:
        for r in range(n_rows):
            for c in range(n_cols):
                cond, dose, role = CONDITIONS[c % len(CONDITIONS)]
                p_pos = 0.05 + 0.6 * (role == "positive_control") + 0.1 * np.log10(1 + 10 * dose)
                for f in range(1, fields + 1):
                    well = f"{chr(65 + r)}{c + 1:02d}"
                    image = f"{plate}/{well}_f{f}.tif"
                    n = int(rng.integers(40, 90))
                    pos = rng.random(n) < min(p_pos, 0.95)
                    enl = rng.random(n) < 0.1 + 0.5 * pos
                    sen = pos & enl
                    rows.append({"image": image, "plate": plate, "well": well, "row": chr(65 + r),
                                 "column": c + 1, "field": f, "condition": cond, "dose": dose, "role": role,
                                 "n_cells": n, "n_sabgal_positive": int(pos.sum()),
                                 "fraction_sabgal_positive": pos.mean(), "n_enlarged": int(enl.sum()),
                                 "fraction_enlarged": enl.mean(), "n_senescent": int(sen.sum()),
                                 "fraction_senescent": sen.mean(), "status": "ok", "error": "",
                                 "qc_pass": True, "qc_reasons": "", "setup": "counterstain",
                                 "counterstain": "nuclear_fast_red", "xgal_angle_from_reference_deg": 3.0,
                                 "qc_saturated_fraction": 0.0, "qc_background_od_nonuniformity": 0.01,
                                 "qc_debris_area_fraction": 0.0, "qc_focus_ratio": 1.0,
                                 "qc_cell_count_ratio": 1.0, "positive_threshold_od": 0.12,
                                 "positive_threshold_source": "controls", "pixel_size_um": 0.65})
                    xg = np.where(pos, rng.lognormal(np.log(0.4), 0.4, n), rng.lognormal(np.log(0.04), 0.5, n))
                    area = rng.lognormal(np.log(900), 0.3, n) * np.where(enl, 2.2, 1.0)
                    cell_rows.append(pd.DataFrame({"image": image, "cell_id": np.arange(1, n + 1),
                                                   "xgal_od_p90": xg, "area_px": area.astype(int),
                                                   "sabgal_positive": pos, "enlarged": enl, "senescent": sen,
                                                   "touches_border": rng.random(n) < 0.1}))
    images = pd.DataFrame(rows)
    if n_images is not None:
        images = images.iloc[:n_images]
    images.loc[1, ["qc_pass", "qc_reasons"]] = [False, "out of focus: sharpness 0.20x plate median (< 0.35)"]
    images.loc[2, ["status", "error", "qc_pass", "qc_reasons", "n_cells"]] = [
        "error", "x.tif: cannot decode .tif (truncated or corrupt?)", False, "analysis failed", 0]
    if not with_plate:
        images = images.drop(columns=["plate", "well", "row", "column", "field", "condition", "dose", "role"])
    out.mkdir(parents=True, exist_ok=True)
    images.to_csv(out / "images.csv", index=False)
    cells = pd.concat(cell_rows, ignore_index=True)
    cells[cells["image"].isin(images["image"])].to_csv(out / "cells.csv", index=False)
    cfg = config_to_dict(Config())
    run = {"sabgal_version": "0.1.0", "config": cfg, "command": ["sabgal", "run", "in", "--out", "out"],
           "thresholds": {"positive": 0.12, "positive_source": "controls", "measure": "xgal_od_p90",
                          "enlarged_factor": 1.8},
           "thresholds_by_plate": {p: {"positive": 0.12, "positive_source": "controls",
                                       "measure": "xgal_od_p90", "n_control_cells": 300} for p in plates},
           "inputs": [{"image": i, "path": f"/data/{i}", "nuclear_image": None} for i in images["image"]],
           "n_images": len(images), "n_failed": 1,
           "timings": {"wall_s": 123.4, "workers": 2, "images_processed": len(images)}}
    (out / "run.json").write_text(json.dumps(run), encoding="utf-8")
    # an overlay for the flagged image, as the batch would have written it
    rgb = np.full((60, 80, 3), 230, np.uint8)
    lab = np.zeros((60, 80), np.uint32)
    lab[10:30, 10:30] = 1
    flagged = images.loc[1, "image"]
    write_overlay(out / "qc" / f"{image_key(flagged)}.png",
                  render_overlay(rgb, lab, lab, None, title=flagged, min_px=200))
    return out


@pytest.fixture(scope="module")
def plate_report(tmp_path_factory):
    out = synthetic_results(tmp_path_factory.mktemp("plate") / "results")
    path = write_report(out)
    return path.read_text(encoding="utf-8")


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_report_has_every_section_with_content(plate_report):
    for sid in REPORT_SECTIONS:
        assert len(re.sub(r"<[^>]+>", "", _section(plate_report, sid)).strip()) > 20, sid
    assert _section(plate_report, "plates").count("<img") == 1
    assert "96-well layout" in _section(plate_report, "plates")
    conditions = _section(plate_report, "conditions")
    assert conditions.count("<img") == 2 and "Dose-response" in conditions
    assert _section(plate_report, "distributions").count("<img") == 1


def test_qc_section_shows_flagged_images_with_thumbnails(plate_report):
    qc = _section(plate_report, "qc")
    assert "out of focus: sharpness 0.20x plate median" in qc
    assert 'src="data:image/jpeg;base64,' in qc  # the flagged image's overlay
    assert "cannot decode .tif" in qc  # the failed image and its error
    assert "<b>40</b> of 42 image(s) passed QC; <b>1</b> analysed image(s) were flagged and 1 failed" in qc


def test_provenance_and_methods(plate_report):
    prov = _section(plate_report, "provenance")
    assert "[qc]" in prov and "min_focus_ratio = 0.35" in prov and "sabgal run in --out out" in prov
    assert "123.4" in prov and "n_control_cells" in prov
    methods = _section(plate_report, "methods")
    for text in ("Ruifrok AC, Johnston DA", "Wilson EB", "Dimri GP", "0.120 OD",
                 "negative-control cells of the plate", "both SA-β-gal positive and enlarged"):
        assert text in methods, text


def test_report_is_self_contained(plate_report):
    assert "<script" not in plate_report and "<link" not in plate_report
    assert re.findall(r'(?:src|href)="(?!data:|#)[^"]*"', plate_report) == []
    assert "url(" not in plate_report
    assert all(s.startswith("data:image/") for s in re.findall(r'src="([^"]+)"', plate_report))


def test_384_well_plates_get_the_384_layout(tmp_path):
    out = synthetic_results(tmp_path / "r", n_rows=12, n_cols=20, fields=1)
    html = build_report(read_run(out))
    assert "384-well layout" in _section(html, "plates")


def test_plate_format_can_be_forced(tmp_path):
    out = synthetic_results(tmp_path / "r", n_rows=2, n_cols=3, fields=1)
    assert "96-well layout" in build_report(read_run(out))
    assert "6-well layout" in build_report(read_run(out), plate_wells=6)
    assert "384-well layout" in build_report(read_run(out), plate_wells=384)


def test_several_plates_get_one_map_each(tmp_path):
    out = synthetic_results(tmp_path / "r", plates=("P1", "P2"), fields=1)
    plates = _section(build_report(read_run(out)), "plates")
    assert plates.count("<img") == 2 and "Plate P1" in plates and "Plate P2" in plates


def test_without_plate_metadata_images_are_shown_one_by_one(tmp_path):
    out = synthetic_results(tmp_path / "few", n_rows=1, n_cols=5, fields=2, with_plate=False)
    html = build_report(read_run(out))
    plates = _section(html, "plates")
    assert "per-image results" in plates and plates.count("<img") == 1
    assert "No plate map" in _section(html, "conditions")
    many = synthetic_results(tmp_path / "many", n_rows=4, n_cols=7, fields=3, with_plate=False)
    assert _section(build_report(read_run(many)), "plates").count("<img") == 1


def test_a_run_with_no_cells_still_gets_a_report(tmp_path):
    out = synthetic_results(tmp_path / "r", n_rows=1, n_cols=3, fields=1)
    images = pd.read_csv(out / "images.csv")
    images[["n_cells", "n_sabgal_positive", "n_enlarged", "n_senescent"]] = 0
    images[["fraction_sabgal_positive", "fraction_enlarged", "fraction_senescent"]] = np.nan
    images.to_csv(out / "images.csv", index=False)
    (out / "cells.csv").write_text(",".join(["image", "cell_id", "xgal_od_p90", "area_px", "sabgal_positive",
                                             "enlarged", "senescent", "touches_border"]) + "\n")
    html = build_report(read_run(out))
    assert "No per-cell table" in _section(html, "distributions")
    for sid in REPORT_SECTIONS:
        _section(html, sid)


def test_read_run_needs_an_images_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images.csv"):
        read_run(tmp_path)
    (tmp_path / "images.csv").write_text("image,status\na.tif,ok\n")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="run.json: not valid JSON"):
        read_run(tmp_path)


def test_well_geometry():
    assert well_position("A01") == (0, 0) and well_position("p24") == (15, 23)
    assert well_position("AF48") == (31, 47) and well_position("Z") is None and well_position(None) is None
    assert plate_shape([(0, 0), (7, 11)]) == (8, 12)
    assert plate_shape([(7, 12)]) == (16, 24)
    assert plate_shape([(16, 0)]) == (32, 48)
    assert plate_shape([(0, 0)], wells=24) == (4, 6)
    assert plate_shape([(5, 5)], wells=24) == (8, 12)  # does not fit: the next automatic format
    with pytest.raises(ValueError, match="plate format"):
        plate_shape([(0, 0)], wells=100)


def test_methods_text_follows_the_config():
    images = pd.DataFrame({"image": ["a", "b"], "status": ["ok", "ok"], "setup": ["brightfield"] * 2,
                           "positive_threshold_od": [0.2, 0.2], "positive_threshold_source": ["config"] * 2,
                           "qc_pass": [True, False]})
    cfg = config_to_dict(Config().replace(classify={"positive_threshold": 0.2, "senescent_rule": "positive"},
                                          illumination={"method": "none"}))
    paragraphs, refs = methods_text({"config": cfg, "sabgal_version": "9.9"}, images)
    text = " ".join(paragraphs)
    assert "sabgal 9.9" in text and "Of 2 images, 2 were analysed (2 in plain brightfield)." in text
    assert "exceeded 0.200 OD; the threshold was set in the configuration" in text
    assert "SA-β-gal positive (regardless of size)" in text and "1 of 2 images was flagged" in text
    assert "Gaussian mixture" not in text  # not learnt: not described
    assert refs[0].startswith("Dimri GP") and len(refs) == len(set(refs))


def test_report_command(tmp_path):
    from sabgal.cli import main

    out = synthetic_results(tmp_path / "r", n_rows=1, n_cols=3, fields=1)
    assert main(["report", str(out), "--quiet"]) == 0
    assert (out / "report.html").exists()
    assert main(["report", str(out), "-o", str(tmp_path / "x.html"), "--plate-format", "384", "-q"]) == 0
    assert "384-well layout" in (tmp_path / "x.html").read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nothing"), "-q"]) == 2


def _write_plate_images(src: Path) -> Path:
    import imageio.v3 as iio
    from test_qc import make_field

    src.mkdir(parents=True)
    rows = []
    for i, (well, cond, role) in enumerate([("A01", "DMSO", "negative_control"), ("A02", "doxorubicin", "sample"),
                                            ("B01", "DMSO", "negative_control"), ("B02", "doxorubicin", "sample")]):
        iio.imwrite(src / f"{well}_f1.png", make_field(100 + i, shape=(160, 200), n_cells=12))
        rows.append({"well": well, "condition": cond, "dose": 0.0 if role != "sample" else 1.0, "role": role})
    pd.DataFrame(rows).to_csv(src.parent / "map.csv", index=False)
    return src


def test_run_writes_overlays_and_report(tmp_path):
    from PIL import Image

    from sabgal.cli import main

    src = _write_plate_images(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["run", str(src), "--out", str(out), "--platemap", str(tmp_path / "map.csv"), "--workers", "1", "-q"])
    assert rc == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "96-well layout" in _section(html, "plates") and "<img" in _section(html, "conditions")
    overlays = sorted(p.name for p in (out / "qc").glob("*.png"))
    assert overlays == ["A01_f1.png", "A02_f1.png", "B01_f1.png", "B02_f1.png"]
    with Image.open(out / "qc" / "A01_f1.png") as im:
        assert im.size[0] >= 640  # small images are enlarged for viewing
    images = pd.read_csv(out / "images.csv")
    assert images["qc_pass"].dtype == bool

    out2 = tmp_path / "out2"
    assert main(["run", str(src), "--out", str(out2), "--workers", "1", "-q", "--no-overlays", "--no-report"]) == 0
    assert not (out2 / "qc").exists() and not (out2 / "report.html").exists()
    assert not list((out2 / ".sabgal").glob("*.overlay.npz"))


def test_report_renders_in_headless_chromium(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from check_report_render import find_chromium
    finally:
        sys.path.pop(0)
    if find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); scripts/check_report_render.py "
                    "is the same check by hand")
    out = synthetic_results(tmp_path / "r")
    write_report(out)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_report_render.py"), str(out),
                           "--screenshot", str(shot)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert shot.stat().st_size > 10_000


def test_report_from_tables_in_memory_and_from_parquet(tmp_path):
    out = synthetic_results(tmp_path / "r", n_rows=1, n_cols=4, fields=1)
    tables = read_run(out)
    html = build_report(RunTables(images=tables.images), title="in memory")  # no folder: no thumbnails
    assert "SA-β-gal report — in memory" in html and "(no overlay)" in _section(html, "qc")
    pytest.importorskip("pyarrow")
    pq = tmp_path / "pq"
    pq.mkdir()
    for name in ("images", "cells"):
        pd.read_csv(out / f"{name}.csv").to_parquet(pq / f"{name}.parquet")
    (pq / "run.json").write_text((out / "run.json").read_text())
    assert "96-well layout" in build_report(read_run(pq))


@pytest.mark.parametrize("image", ["A01_f1.tif", "plate1/A01_f1.tif", "a.b/c.d.png", "noext", "x\\y.png"])
def test_report_finds_overlays_by_the_batch_key(image):
    from sabgal.batch import image_key
    from sabgal.report import _overlay_key

    assert _overlay_key(image) == image_key(image)


def test_area_panel_follows_the_enlargement_rule(tmp_path, monkeypatch):
    import sabgal.report as rep

    out = synthetic_results(tmp_path / "r", n_rows=1, n_cols=3, fields=1)
    seen = []
    monkeypatch.setattr(rep, "_png", lambda fig: seen.append([ax.get_xlabel() for ax in fig.axes]) or "")
    tables = read_run(out)
    rep.fig_distributions(RunTables(images=tables.images, cells=tables.cells, run=tables.run))
    assert "relative" not in seen[-1][1] and "image's SA-β-gal-negative" in seen[-1][1]
    cells = tables.cells.assign(area_um2=tables.cells["area_px"] * 0.4)
    run = json.loads(json.dumps(tables.run))
    run["config"]["classify"]["enlarged_threshold_um2"] = 500.0
    rep.fig_distributions(RunTables(images=tables.images, cells=cells, run=run))
    assert seen[-1][1] == "cell area (µm²)"
    images = tables.images.assign(enlarged_threshold_px=2000.0)
    rep.fig_distributions(RunTables(images=images, cells=tables.cells, run=tables.run))
    assert seen[-1][1] == "cell area (px)"


def test_relative_area_uses_the_reference_the_run_recorded():
    # the panel's "area / reference" is the one the calls used (images.csv's
    # enlarged_reference_area_px); results without it fall back to what the run
    # would have recorded (classify.reference_area: with under 8 negative
    # non-border cells, all negatives; under 3, the smallest half of the cells)
    from sabgal.report import _reference_area

    cells = pd.DataFrame({"image": ["a"] * 5 + ["b"] * 3, "area_px": [100, 200, 300, 900, 50, 400, 600, 800],
                          "sabgal_positive": [False, False, False, True, False, False, False, True],
                          "touches_border": [False, False, False, False, True, False, False, False]})
    images = pd.DataFrame({"image": ["a", "b"], "enlarged_reference_area_px": [150.0, np.nan]})
    ref = _reference_area(cells, images)
    assert ref.tolist() == [150.0] * 5 + [400.0] * 3
    assert _reference_area(cells).tolist() == [150.0] * 5 + [400.0] * 3


def test_methods_text_describes_the_anchored_per_image_threshold():
    # images.csv says which threshold each image used: the anchored one
    # (per image) or the set's (here a mixture crossing); both are described,
    # and the floor as it was applied (half of it for anchored thresholds)
    images = pd.DataFrame({"image": ["a", "b"], "status": ["ok", "ok"], "setup": ["counterstain"] * 2,
                           "positive_threshold_od": [0.021, 0.05],
                           "positive_threshold_source": ["learnt per image", "learnt"], "qc_pass": [True, True]})
    cfg = config_to_dict(Config())
    text = " ".join(methods_text({"config": cfg, "sabgal_version": "9.9"}, images)[0])
    assert "anchored just above the image's own unstained cells" in text
    assert "Gaussian mixture" in text and "for images without an unstained population of their own" in text
    assert "never below 0.015 OD (below 0.03 OD only where" in text
    assert "band half a nucleus diameter wide around the cell's nucleus" in text
