"""Plate-scale batch runs: resume after SIGKILL, error isolation, plate maps,
control-calibrated thresholds, flat fields, formats, and Dask == process pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from conftest import paint_field

from sabgal import batch
from sabgal.cli import main
from sabgal.config import Config

SHAPE = (160, 200)


def _field(rng: np.random.Generator, frac_pos: float, *, n: int = 6, lamp=(0.92, 0.86, 0.95)) -> np.ndarray:
    cells = []
    for _ in range(n):
        pos = rng.random() < frac_pos
        r = rng.uniform(20, 26) if pos else rng.uniform(13, 17)
        cells.append((rng.uniform(25, SHAPE[0] - 25), rng.uniform(25, SHAPE[1] - 25), r, 5,
                      rng.uniform(0.3, 0.5) if pos else 0.0))
    rgb, _, _ = paint_field(SHAPE, cells, seed=int(rng.integers(1 << 30)), lamp=lamp)
    return rgb


def _write_plate(folder: Path, wells: dict[str, float], *, fields: int = 1, plate: str = "P1",
                 seed: int = 0) -> list[Path]:
    """Write ``<plate>_<well>_f<k>.png`` for each well (value: fraction of positive cells)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for well, frac in wells.items():
        for f in range(1, fields + 1):
            p = folder / f"{plate}_{well}_f{f}.png"
            iio.imwrite(p, _field(rng, frac))
            paths.append(p)
    return paths


def _platemap(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    text = "well,condition,dose,role\n" + "".join(f"{w},{c},{d},{r}\n" for w, c, d, r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def _records(out: Path) -> dict[str, Path]:
    return {p.name: p for p in (out / batch.STATE_DIR).glob("*.json")}


# --- resume after a hard kill -------------------------------------------------------------
def test_sigkill_then_rerun_processes_every_image_exactly_once(tmp_path):
    wells = {f"{r}{c:02d}": 0.3 for r in "AB" for c in range(1, 9)}  # 16 images
    _write_plate(tmp_path / "in", wells)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sabgal", "run", str(tmp_path / "in"), "--out", str(out), "-j", "2", "-q"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_records(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job: main process, pool and workers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()
    before = {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in _records(out).items()}
    assert 3 <= len(before) < len(wells)
    assert not (out / "images.csv").exists()

    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-j", "1", "-q"]) == 0
    images = pd.read_csv(out / "images.csv")
    assert sorted(images["image"]) == sorted(f"P1_{w}_f1.png" for w in wells)
    assert images["image"].is_unique and (images["status"] == "ok").all()
    cells = pd.read_csv(out / "cells.csv")
    assert not cells.duplicated(["image", "cell_id"]).any()
    assert set(cells["image"]) == set(images["image"])
    after = _records(out)
    for name, (mtime, content) in before.items():  # finished results were not recomputed
        assert after[name].stat().st_mtime_ns == mtime and after[name].read_bytes() == content
    run = json.loads((out / "run.json").read_text())
    assert run["timings"]["images_skipped"] == len(before)
    assert run["timings"]["images_processed"] == len(wells) - len(before)


def _finished_two_well_run(tmp_path: Path) -> tuple[Path, Config, list[batch.ImageSet]]:
    """A finished ``sabgal run`` of two wells: (output folder, config, image sets)."""
    _write_plate(tmp_path / "in", {"A01": 0.3, "A02": 0.3})
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-j", "1", "-q"]) == 0
    config = Config()
    return out, config, batch.discover_images([tmp_path / "in"], config, exclude=[out])


def test_rerun_skips_finished_and_force_redoes(tmp_path):
    out, config, sets = _finished_two_well_run(tmp_path)
    done, todo = batch.pending_images(sets, config, out)
    assert len(done) == 2 and todo == []
    recs = list(batch.run_batch(sets, config, out))
    assert all(r.get("skipped") for r in recs)
    recs = list(batch.run_batch(sets, config, out, force=True))
    assert not any(r.get("skipped") for r in recs) and len(recs) == 2


def test_a_damaged_per_image_result_is_an_error_row_not_a_crash(tmp_path):
    out, config, sets = _finished_two_well_run(tmp_path)
    batch.state_paths(out, sets[0].key)[1].write_bytes(b"not a zip")
    images, cells = batch.rebuild_tables(sets, config, out)
    bad = images.set_index("image").loc[sets[0].image]
    assert bad["status"] == "error" and "per-image result unreadable" in bad["error"]
    assert set(cells["image"]) == {sets[1].image}

# --- error isolation ---------------------------------------------------------------------------
def test_five_percent_corrupt_files_do_not_stop_the_run(tmp_path, capsys):
    wells = {f"{r}{c:02d}": 0.3 for r in "ABCD" for c in range(1, 11)}  # 40 images
    paths = _write_plate(tmp_path / "in", wells)
    truncated, empty = paths[7], paths[23]  # 2 of 40 = 5 %
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty.write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["run", str(tmp_path / "in"), "--out", str(out), "-j", "2", "-q"])
    assert rc == 1
    images = pd.read_csv(out / "images.csv", keep_default_na=False)
    assert len(images) == 40
    bad = images[images["status"] != "ok"].set_index("image")
    assert sorted(bad.index) == sorted([truncated.name, empty.name])
    assert "truncated or corrupt" in bad.loc[truncated.name, "error"]
    assert "file is empty" in bad.loc[empty.name, "error"]
    assert all("\n" not in e for e in bad["error"])
    ok = images[images["status"] == "ok"]
    assert len(ok) == 38 and (ok["n_cells"] > 0).all()
    err = capsys.readouterr().err
    assert "2 of 40 image(s) failed" in err and truncated.name in err and empty.name in err


def _poison_process_image(image_set, *args, **kwargs):
    if "poison" in image_set.image:
        os._exit(1)  # a worker killed mid-image (out of memory, a crash in C code)
    return _REAL_PROCESS_IMAGE(image_set, *args, **kwargs)


_REAL_PROCESS_IMAGE = batch.process_image


def test_a_worker_dying_fails_only_its_own_image(tmp_path, monkeypatch):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    paths = _write_plate(tmp_path / "in", {"A01": 0.3, "A02": 0.3, "A03": 0.3, "A04": 0.3})
    paths[1].rename(paths[1].with_name("poison_A02_f1.png"))
    monkeypatch.setattr(batch, "process_image", _poison_process_image)
    ctx = multiprocessing.get_context("fork")
    config = Config().replace(batch={"overlays": False})
    sets = batch.discover_images([tmp_path / "in"], config)
    recs = list(batch.run_batch(sets, config, tmp_path / "out", workers=2,
                                executor_factory=lambda n: ProcessPoolExecutor(n, mp_context=ctx)))
    by_image = {r["image"]: r for r in recs}
    assert len(recs) == 4 and set(by_image) == {s.image for s in sets}
    assert by_image["poison_A02_f1.png"]["status"] == "error"
    assert "worker process died" in by_image["poison_A02_f1.png"]["error"]
    assert all(r["status"] == "ok" for k, r in by_image.items() if "poison" not in k)


# --- plate maps ------------------------------------------------------------------------------
def test_platemap_columns_are_joined_onto_every_table(tmp_path):
    _write_plate(tmp_path / "in", {"A01": 0.0, "A02": 0.0, "B01": 0.7, "B02": 0.7}, fields=2)
    pm = _platemap(tmp_path / "map.csv", [("A1", "DMSO", "0", "negative_control"),
                                          ("A2", "DMSO", "0", "negative_control"),
                                          ("B1", "dox", "1", "sample"), ("B2", "dox", "2", "sample")])
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-j", "1", "-q", "--platemap", str(pm)]) == 0
    images = pd.read_csv(out / "images.csv", keep_default_na=False)
    cells = pd.read_csv(out / "cells.csv", keep_default_na=False)
    for table in (images, cells):
        assert list(table.columns[:11]) == ["image", "plate", "well", "row", "column", "field", "channel",
                                            "condition", "dose", "replicate", "role"]
    row = images.set_index("image").loc["P1_B01_f2.png"]
    assert (row["plate"], row["well"], row["row"], row["column"], row["field"]) == ("P1", "B01", "B", 1, 2)
    assert (row["condition"], row["dose"], row["role"]) == ("dox", 1.0, "sample")
    merged = cells.merge(images[["image", "well", "condition", "role"]], on="image", suffixes=("", "_img"))
    assert (merged["well"] == merged["well_img"]).all() and (merged["role"] == merged["role_img"]).all()
    wells = pd.read_csv(out / "wells.csv", keep_default_na=False).set_index("well")
    assert list(wells.index) == ["A01", "A02", "B01", "B02"]
    assert (wells["n_images"] == 2).all()
    assert wells.loc["B01", "n_cells"] == images.loc[images["well"] == "B01", "n_cells"].sum()
    cond = pd.read_csv(out / "conditions.csv", keep_default_na=False)
    assert cond["condition"].tolist() == ["DMSO", "dox", "dox"]
    assert cond.loc[0, "fold_change_sabgal_positive"] in ("", 1.0) or np.isclose(
        float(cond.loc[0, "fold_change_sabgal_positive"]), 1.0)
    cp_image = pd.read_csv(out / "cellprofiler" / "Image.csv", keep_default_na=False)
    cp_cells = pd.read_csv(out / "cellprofiler" / "Cells.csv")
    assert cp_image["Metadata_Well"].tolist() == images["well"].tolist()
    assert len(cp_cells) == len(cells) and cp_cells["ImageNumber"].min() == 1


def test_missing_well_in_platemap_fails_before_any_work(tmp_path, capsys):
    _write_plate(tmp_path / "in", {"A01": 0.0, "C07": 0.0})
    pm = _platemap(tmp_path / "map.csv", [("A1", "DMSO", "0", "negative_control")])
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-q", "--platemap", str(pm)]) == 2
    assert "P1_C07_f1.png: well C07 is not in the plate map" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_lists_image_sets_and_writes_nothing(tmp_path, capsys):
    _write_plate(tmp_path / "in", {"A01": 0.0, "B01": 0.5}, fields=2)
    pm = _platemap(tmp_path / "map.csv", [("A1", "DMSO", "0", "neg"), ("B1", "dox", "1", "sample")])
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "--dry-run", "--platemap", str(pm)]) == 0
    text = capsys.readouterr().out
    assert "P1_B01_f2.png" in text and "negative_control" in text and "dox" in text
    assert "4 image(s), 1 plate(s), 2 well(s)" in text
    assert not out.exists()


def test_ome_tiff_plate_metadata_is_used(tmp_path):
    import tifffile

    from test_plate import OME

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "scan_0001.ome.tif", _field(np.random.default_rng(0), 0.3),
                     description=OME, photometric="rgb")
    meta = batch.collect_metadata(batch.discover_images([folder], Config()), Config())
    assert meta.loc[0, ["plate", "well"]].tolist() == ["Screen-3", "H12"]
    assert meta.loc[0, "field"] == 2


# --- control-calibrated thresholds -------------------------------------------------------------
def _synthetic_cells(rng, plate, n_ctrl, n_sample, *, mu, sigma, area_mu, frac_pos_sample=0.4):
    """Cells of a plate: control X-gal scores ~ lognormal(mu, sigma), areas ~ lognormal(area_mu, 0.25)."""
    score = np.r_[rng.lognormal(mu, sigma, n_ctrl),
                  np.where(rng.random(n_sample) < frac_pos_sample, rng.lognormal(mu + 2.0, 0.3, n_sample),
                           rng.lognormal(mu, sigma, n_sample))]
    area = rng.lognormal(area_mu, 0.25, n_ctrl + n_sample)
    return pd.DataFrame({
        "image": [f"{plate}_img{i // 50}" for i in range(n_ctrl + n_sample)],
        "plate": plate,
        "role": ["negative_control"] * n_ctrl + ["sample"] * n_sample,
        "xgal_od_core_p60": score, "xgal_od_perinuclear_p60": score, "xgal_od_p90": score * 1.5, "xgal_od_mean": score / 2,
        "area_px": np.round(area).astype(np.int64), "area_um2": np.nan,
        "touches_border": False,
    })


def test_control_thresholds_recover_the_known_threshold_per_plate():
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    # two plates stained differently: controls at different OD scales and cell sizes
    plates = {"P1": dict(mu=np.log(0.05), sigma=0.35, area_mu=np.log(900.0)),
              "P2": dict(mu=np.log(0.12), sigma=0.25, area_mu=np.log(1500.0))}
    cells = pd.concat([_synthetic_cells(rng, p, 6000, 3000, **kw) for p, kw in plates.items()],
                      ignore_index=True)
    config = Config().replace(batch={"control_percentile": 95.0})
    result = batch.plate_thresholds(cells, config)
    for p, kw in plates.items():
        th, details = result[p]
        known = float(np.exp(kw["mu"] + norm.ppf(0.95) * kw["sigma"]))
        assert th.positive_source == "controls"
        assert th.positive == pytest.approx(known, rel=0.05)
        assert details["n_control_cells"] == 6000
        # enlarged: 1.8 x the median area of control cells (areas independent of score here)
        assert th.enlarged_area_px == pytest.approx(1.8 * np.exp(kw["area_mu"]), rel=0.03)
        assert th.enlarged_source.startswith("controls")
    # a different percentile moves the threshold where the distribution says
    th90 = batch.plate_thresholds(cells, Config().replace(batch={"control_percentile": 90.0}))["P1"][0]
    known90 = float(np.exp(plates["P1"]["mu"] + norm.ppf(0.90) * plates["P1"]["sigma"]))
    assert th90.positive == pytest.approx(known90, rel=0.05)


def test_plates_without_controls_fall_back_to_config_or_learnt():
    rng = np.random.default_rng(3)
    cells = _synthetic_cells(rng, "P1", 0, 2000, mu=np.log(0.03), sigma=0.3, area_mu=np.log(900.0))
    learnt = batch.plate_thresholds(cells, Config())["P1"][0]
    assert learnt.positive_source in ("learnt", "default") and learnt.enlarged_area_px is None
    fixed = batch.plate_thresholds(cells, Config().replace(classify={"positive_threshold": 0.25}))["P1"][0]
    assert (fixed.positive, fixed.positive_source) == (0.25, "config")
    # controls present but calibration switched off
    ctrl = _synthetic_cells(rng, "P1", 500, 500, mu=np.log(0.03), sigma=0.3, area_mu=np.log(900.0))
    off = batch.plate_thresholds(ctrl, Config().replace(batch={"calibrate_from_controls": False}))["P1"][0]
    assert off.positive_source != "controls"
    # too few control cells to trust a 95th percentile
    few = _synthetic_cells(rng, "P1", 15, 500, mu=np.log(0.03), sigma=0.3, area_mu=np.log(900.0))
    assert batch.plate_thresholds(few, Config())["P1"][0].positive_source != "controls"


def test_calibrated_threshold_is_recorded_per_image_and_matches_control_cells(tmp_path):
    _write_plate(tmp_path / "in", {"A01": 0.0, "A02": 0.0, "A03": 0.0, "B01": 0.6}, fields=3, seed=5)
    pm = _platemap(tmp_path / "map.csv", [("A1", "DMSO", "0", "neg"), ("A2", "DMSO", "0", "neg"),
                                          ("A3", "DMSO", "0", "neg"), ("B1", "dox", "1", "sample")])
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-j", "2", "-q", "--platemap", str(pm)]) == 0
    images = pd.read_csv(out / "images.csv")
    cells = pd.read_csv(out / "cells.csv")
    ctrl = cells[cells["role"] == "negative_control"]
    assert len(ctrl) >= batch.MIN_CONTROL_CELLS
    measure = Config().classify.positive_measure
    expected = max(float(np.percentile(ctrl[measure], 95)), Config().classify.min_positive_threshold)
    assert (images["positive_threshold_source"] == "controls").all()
    assert np.allclose(images["positive_threshold_od"], expected)
    assert (cells["sabgal_positive"] == (cells[measure] > expected)).all()
    run = json.loads((out / "run.json").read_text())
    assert run["thresholds_by_plate"]["P1"]["positive"] == pytest.approx(expected)


# --- flat field ---------------------------------------------------------------------------------
def test_flat_field_from_blank_wells_is_the_plate_median(tmp_path):
    folder = tmp_path / "in"
    _write_plate(folder, {"A01": 0.3, "A02": 0.3})
    blank = np.full(SHAPE + (3,), 0.9)
    for k, w in enumerate(["H11", "H12"]):
        img = blank.copy()
        img[20 + 60 * k: 40 + 60 * k, 30:60] = 0.3  # debris in one blank only: the median rejects it
        iio.imwrite(folder / f"P1_{w}_f1.png", (img * 255).astype(np.uint8))
    iio.imwrite(folder / "P1_H10_f1.png", (blank * 255).astype(np.uint8))
    pm = _platemap(tmp_path / "map.csv", [("A1", "x", "0", "sample"), ("A2", "x", "0", "sample"),
                                          ("H10", "", "", "blank"), ("H11", "", "", "blank"),
                                          ("H12", "", "", "blank")])
    out = tmp_path / "out"
    assert main(["run", str(folder), "--out", str(out), "-j", "1", "-q", "--platemap", str(pm),
                 "--flat-field", "blanks"]) == 0
    flat = np.load(next((out / batch.STATE_DIR / "flat_field").glob("*.npy")))
    assert flat.shape == SHAPE + (3,)
    np.testing.assert_allclose(flat, 0.9 * 255 // 1 / 255, atol=0.01)  # no debris left
    images = pd.read_csv(out / "images.csv")
    assert (images["lamp_method"] == "flat_field").all()
    recs = [json.loads(p.read_text()) for p in (out / batch.STATE_DIR).glob("*.json")]
    digests = {r["flat_field_digest"] for r in recs}
    assert len(digests) == 1 and None not in digests
    # a different flat field invalidates the finished images
    config = Config().replace(illumination={"method": "flat_field", "flat_field_path": "blanks"})
    sets = batch.discover_images([folder], config, exclude=[out])
    meta = batch.collect_metadata(sets, config, platemap=pm)
    refs = batch.prepare_flat_fields(sets, config, out, metadata=meta)
    assert batch.pending_images(sets, config, out, flat_fields=refs)[1] == []
    (folder / "P1_H10_f1.png").write_bytes(iio.imwrite("<bytes>", (blank * 200).astype(np.uint8),
                                                       extension=".png"))
    refs = batch.prepare_flat_fields(sets, config, out, metadata=meta)
    assert len(batch.pending_images(sets, config, out, flat_fields=refs)[1]) == len(sets)


def test_flat_field_blanks_without_blank_wells_fails(tmp_path, capsys):
    _write_plate(tmp_path / "in", {"A01": 0.3})
    pm = _platemap(tmp_path / "map.csv", [("A1", "x", "0", "sample")])
    rc = main(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-q", "--platemap", str(pm),
               "--flat-field", "blanks"])
    assert rc == 2 and "needs a plate map with role = blank wells" in capsys.readouterr().err


# --- formats --------------------------------------------------------------------------------------
def test_parquet_format_replaces_csv_and_matches_it(tmp_path):
    pytest.importorskip("pyarrow")
    _write_plate(tmp_path / "in", {"A01": 0.3, "A02": 0.5})
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-q", "-j", "1", "--format", "both"]) == 0
    for name in ("images", "cells", "wells", "conditions", "cellprofiler/Image", "cellprofiler/Cells"):
        assert (out / f"{name}.csv").exists() and (out / f"{name}.parquet").exists()
    cells_pq = pd.read_parquet(out / "cells.parquet")
    cells_csv = pd.read_csv(out / "cells.csv")
    np.testing.assert_allclose(cells_pq["xgal_od_p90"], cells_csv["xgal_od_p90"])
    assert main(["run", str(tmp_path / "in"), "--out", str(out), "-q", "-j", "1", "--format", "parquet"]) == 0
    assert not (out / "cells.csv").exists() and (out / "cells.parquet").exists()
    assert pd.read_parquet(out / "images.parquet")["well"].tolist() == ["A01", "A02"]


# --- Dask ------------------------------------------------------------------------------------------
def _comparable(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    images = pd.read_csv(out / "images.csv").drop(columns=["elapsed_s"])
    cells = pd.read_csv(out / "cells.csv")
    return images, cells


def _assert_same_results(a: Path, b: Path) -> None:
    """Two runs' image, cell, well and condition tables are equal (timings aside)."""
    a_images, a_cells = _comparable(a)
    b_images, b_cells = _comparable(b)
    pd.testing.assert_frame_equal(a_images, b_images)
    pd.testing.assert_frame_equal(a_cells, b_cells)
    for name in ("wells.csv", "conditions.csv"):
        assert (a / name).read_text() == (b / name).read_text()


def test_dask_cluster_gives_the_same_results_as_the_process_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    _write_plate(tmp_path / "in", {"A01": 0.0, "A02": 0.3, "B01": 0.6, "B02": 0.6}, fields=2, seed=11)
    pm = _platemap(tmp_path / "map.csv", [("A1", "DMSO", "0", "neg"), ("A2", "DMSO", "0", "neg"),
                                          ("B1", "dox", "1", "sample"), ("B2", "dox", "2", "sample")])
    common = [str(tmp_path / "in"), "-q", "--platemap", str(pm)]
    assert main(["run", *common, "--out", str(tmp_path / "pool"), "-j", "2"]) == 0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        assert main(["run", *common, "--out", str(tmp_path / "dask"),
                     "--dask-scheduler", cluster.scheduler_address]) == 0
    _assert_same_results(tmp_path / "pool", tmp_path / "dask")
    run = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert run["timings"]["dask_scheduler"].startswith("tcp://")


def test_threads_give_the_same_results_as_processes(tmp_path):
    # `--threads`: the workers are threads of one process, sharing its memory
    _write_plate(tmp_path / "in", {"A01": 0.0, "A02": 0.3, "B01": 0.6, "B02": 0.6}, fields=2, seed=5)
    common = [str(tmp_path / "in"), "-q", "-j", "2"]
    assert main(["run", *common, "--out", str(tmp_path / "pool")]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "threads"), "--threads"]) == 0
    _assert_same_results(tmp_path / "pool", tmp_path / "threads")
    run = json.loads((tmp_path / "threads" / "run.json").read_text())
    assert run["config"]["batch"]["executor"] == "threads"
    for lab in sorted((tmp_path / "pool" / "labels").iterdir()):
        assert lab.read_bytes() == (tmp_path / "threads" / "labels" / lab.name).read_bytes()


def test_thread_pool_puts_the_callers_blas_threads_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
    with batch._ThreadPool(2) as ex:
        during = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()]
        assert ex.submit(lambda: 1).result() == 1
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info()] == before
    assert all(n == 1 for n in during)


def test_unreachable_dask_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(batch, "DASK_CONNECT_TIMEOUT", "1s")
    _write_plate(tmp_path / "in", {"A01": 0.3})
    config = Config().replace(batch={"dask_scheduler": "tcp://127.0.0.1:9"})
    sets = batch.discover_images([tmp_path / "in"], config)
    with pytest.raises(batch.InputError, match="cannot connect to the Dask scheduler tcp://127.0.0.1:9"):
        list(batch.run_batch(sets, config, tmp_path / "out"))


def test_a_folder_of_links_to_images_elsewhere_names_them_by_the_links(tmp_path):
    """Images linked into the input folder (a common way to assemble a set)
    are discovered, paired with their linked companions and named relative
    to the folder given, not to where the links point."""
    store, folder = tmp_path / "store", tmp_path / "in"
    store.mkdir()
    folder.mkdir()
    rgb = np.full((32, 32, 3), 200, dtype=np.uint8)
    iio.imwrite(store / "A01_f1.png", rgb)
    iio.imwrite(store / "A01_f1_dapi.png", rgb[..., 0])
    for name in ("A01_f1.png", "A01_f1_dapi.png"):
        os.symlink(store / name, folder / name)
    sets = batch.discover_images([folder], Config())
    assert [(s.image, Path(s.companion).name if s.companion else None) for s in sets] == [("A01_f1.png", "A01_f1_dapi.png")]


def test_nuclear_images_named_by_channel_token_pair_with_their_rgb_image(tmp_path):
    # plate readers name channels inside the file name (ImageXpress: _w1 / _w2)
    import tifffile

    from sabgal.config import ConfigError

    folder = tmp_path / "plate"
    folder.mkdir()
    rgb = np.full((40, 50, 3), 200, np.uint8)
    dapi = np.zeros((40, 50), np.uint16)
    for well in ("A01", "A02"):
        tifffile.imwrite(folder / f"P1_{well}_s1_w1.tif", rgb)
        tifffile.imwrite(folder / f"P1_{well}_s1_w2.tif", dapi)
    config = Config().replace(setup={"companion_channels": [["_w1", "_w2"]]})
    sets = batch.discover_images([folder], config)
    assert [(s.image, Path(s.companion).name) for s in sets] == [
        ("P1_A01_s1_w1.tif", "P1_A01_s1_w2.tif"), ("P1_A02_s1_w1.tif", "P1_A02_s1_w2.tif")]
    # a file named on the command line finds its companion too
    one = batch.discover_images([folder / "P1_A02_s1_w1.tif"], config)
    assert Path(one[0].companion).name == "P1_A02_s1_w2.tif"
    # without the setting both channels are separate images
    assert len(batch.discover_images([folder], Config())) == 4
    # a nuclear channel without its RGB image is an error naming the file
    (folder / "P1_A01_s1_w1.tif").unlink()
    with pytest.raises(batch.InputError, match="P1_A01_s1_w2.tif: nuclear companion"):
        batch.discover_images([folder], config)
    with pytest.raises(ConfigError, match="companion_channels"):
        Config().replace(setup={"companion_channels": [["_w1"]]})


def test_plate_nucleus_hints_are_per_plate_and_need_three_agreeing_checked_fields():
    from sabgal.batch import plate_nucleus_hints

    r = pd.DataFrame({
        "key": ["p1a", "p1b", "p1c", "p1d", "p1e", "p2a", "p2b", "p2c", "p2d"],
        "plate": ["P1"] * 5 + ["P2"] * 4,
        "nucleus_diameter_px": [16.0, 15.0, 17.0, 40.0, 20.0, 30.0, 31.0, 29.0, 15.0],
        "nucleus_size_source": ["blobs_checked", "holes", "blobs_corrected", "blobs_unchecked",
                                "blobs_unchecked", "blobs_checked", "blobs_checked", "nuclear_stain",
                                "blobs_unchecked"]})
    # P1: 40 px is off its plate's 16, 20 px within 1.4x; P2 has two checked fields only
    assert plate_nucleus_hints(r) == {"p1d": 16.0}
    r.loc[r["key"] == "p2c", "nucleus_size_source"] = "holes"
    assert plate_nucleus_hints(r) == {"p1d": 16.0, "p2d": 30.0}
    assert plate_nucleus_hints(r.iloc[:0]) == {}
    # checked sizes that disagree (fields at several magnifications): no plate size
    r.loc[r["key"] == "p1c", "nucleus_diameter_px"] = 30.0
    r.loc[r["key"] == "p1b", "nucleus_diameter_px"] = 9.0
    assert plate_nucleus_hints(r) == {"p2d": 30.0}


def test_a_plate_of_negative_controls_takes_its_unchecked_fields_consensus():
    from sabgal.batch import plate_nucleus_hints

    # no stained cell anywhere: no field's size was checked by holes; six
    # agree on ~15.5 px, one settled on whole cells (37 px), one on nucleoli
    sizes = [15.0, 16.0, 15.5, 14.8, 16.4, 15.2, 37.0, 7.0]
    r = pd.DataFrame({"key": list("abcdefgh"), "plate": ["P"] * 8, "nucleus_diameter_px": sizes,
                      "nucleus_size_source": ["blobs_unchecked"] * 5 + ["blobs_within_cells"] * 3})
    ref = float(np.median(sizes))
    assert plate_nucleus_hints(r) == {"g": ref, "h": ref}
    # four fields are too few to outvote a wrong one ...
    assert plate_nucleus_hints(r.iloc[[0, 1, 2, 6]]) == {}
    # ... and fields that disagree (several magnifications) have no size to lend
    wide = r.assign(nucleus_diameter_px=[8.0, 9.0, 15.0, 16.0, 30.0, 31.0, 37.0, 7.0])
    assert plate_nucleus_hints(wide) == {}
