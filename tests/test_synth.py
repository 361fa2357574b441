"""Tests for the synthetic field renderer (sabgal.synth)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from sabgal import synth
from sabgal.synth import (
    FORMATS,
    SETUPS,
    TRUTH_COLUMNS,
    FieldParams,
    SynthField,
    generate_dataset,
    random_params,
    render_field,
    synth_main,
    write_field,
)

SHAPE = (256, 320)


def _render(seed: int, **kwargs) -> SynthField:
    params = random_params(np.random.default_rng(seed), shape=kwargs.pop("shape", SHAPE), **kwargs)
    return render_field(params, np.random.default_rng(params.seed))


@pytest.fixture(scope="module", params=SETUPS)
def field(request) -> SynthField:
    return _render(3, setup=request.param, senescent_fraction=0.4)


# --- parameters -------------------------------------------------------------


def test_params_are_json_serialisable_and_round_trip():
    p = random_params(np.random.default_rng(0), shape=SHAPE)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert FieldParams.from_dict(json.loads(json.dumps(d))) == p


def test_params_respect_requests():
    rng = np.random.default_rng(1)
    p = random_params(rng, setup="brightfield", shape=SHAPE, senescent_fraction=0.25, jpeg=True)
    assert (p.setup, p.counterstain, p.counterstain_vector) == ("brightfield", "none", None)
    assert p.senescent_fraction == 0.25
    assert (p.file_format, p.bit_depth) == ("jpg", 8)
    assert 70 <= p.jpeg_quality <= 95
    p = random_params(rng, setup="counterstain", shape=SHAPE, jpeg=False, counterstain="eosin")
    assert p.counterstain == "eosin" and p.file_format in ("tif", "png")
    p = random_params(rng, shape=SHAPE, formats=("png",))
    assert (p.file_format, p.bit_depth) == ("png", 8)


def test_params_vary_widely_within_physical_ranges():
    ps = [random_params(np.random.default_rng(s)) for s in range(60)]
    d = np.array([p.nucleus_diameter_px for p in ps])
    assert 8 <= d.min() and d.max() <= 22 and d.max() - d.min() > 8
    n = np.array([p.n_cells for p in ps])
    assert n.min() < 80 and n.max() > 300
    assert {p.setup for p in ps} == set(SETUPS)
    assert {p.lamp_tint for p in ps} >= {"white", "lilac", "pink", "yellow"}
    assert {p.file_format for p in ps} == set(FORMATS) and {p.bit_depth for p in ps} == {8, 16}
    level = np.array([p.background_level for p in ps])
    assert 0.55 <= level.min() and level.max() <= 0.97
    for p in ps:
        x = np.asarray(p.xgal_vector)
        assert np.isclose(np.linalg.norm(x), 1) and x[2] < x[0]  # blue: absorbs red more than blue
        assert 0.5 <= p.blur_sigma_px <= 2.0 and 0 <= p.vignetting <= 0.35
        assert 5000 <= p.full_well_e <= 40000
        assert p.counterstain_vector is None or p.setup != "brightfield"
    sen = np.array([p.senescent_fraction for p in ps])
    assert 0 <= sen.min() < 0.1 and 0.6 < sen.max() <= 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"setup": "phase"}, "setup must be one of"),
        ({"shape": (16, 320)}, "shape"),
        ({"senescent_fraction": 1.5}, "senescent_fraction"),
        ({"formats": ("bmp",)}, "formats"),
        ({"jpeg": True, "formats": ("tif",)}, "jpeg=True"),
        ({"counterstain": "dab"}, "counterstain"),
    ],
)
def test_random_params_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_params(np.random.default_rng(0), **kwargs)


def test_field_params_validates():
    p = random_params(np.random.default_rng(0), shape=SHAPE, jpeg=False)
    with pytest.raises(ValueError, match="16-bit"):
        dataclasses.replace(p, file_format="png", bit_depth=16)
    with pytest.raises(ValueError, match="counterstain_vector"):
        dataclasses.replace(p, counterstain="eosin", counterstain_vector=None)


# --- rendering ----------------------------------------------------------------


def test_same_seed_gives_identical_fields():
    a = _render(11, setup="fluorescence")
    b = _render(11, setup="fluorescence")
    for name in ("rgb", "nuclear", "cell_labels", "nucleus_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    pd.testing.assert_frame_equal(a.truth, b.truth)


def test_different_seeds_give_different_fields():
    a, b = _render(11), _render(12)
    assert a.params != b.params
    assert a.rgb.shape != b.rgb.shape or not np.array_equal(a.rgb, b.rgb)


def test_rendering_does_not_touch_global_random_state():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    _render(5)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_outputs_have_documented_types_and_shapes(field):
    p = field.params
    assert field.rgb.shape == (*SHAPE, 3)
    assert field.rgb.dtype == (np.uint8 if p.bit_depth == 8 else np.uint16)
    if p.bit_depth == 16:
        assert field.rgb.max() <= 4095  # 12-bit data in 16-bit words
    for lab in (field.cell_labels, field.nucleus_labels):
        assert lab.shape == SHAPE and lab.dtype == np.uint32
    if p.setup == "fluorescence":
        assert field.nuclear is not None
        assert field.nuclear.shape == SHAPE and field.nuclear.dtype == np.uint16
    else:
        assert field.nuclear is None
    assert list(field.truth.columns) == list(TRUTH_COLUMNS)


def test_counterstain_only_where_the_setup_uses_one(field):
    p = field.params
    if p.setup == "counterstain":
        assert p.counterstain in synth.COUNTERSTAIN_VECTORS
    elif p.setup == "brightfield":
        assert p.counterstain == "none"


def test_truth_rows_match_labels(field):
    t, lab, nuc = field.truth, field.cell_labels, field.nucleus_labels
    n = len(t)
    assert n > 0
    np.testing.assert_array_equal(t["cell_id"], np.arange(1, n + 1))
    ids = np.unique(lab)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    nids = np.unique(nuc)
    np.testing.assert_array_equal(nids[nids > 0], np.arange(1, n + 1))  # one nucleus per cell
    np.testing.assert_array_equal(t["area_px"], np.bincount(lab.ravel(), minlength=n + 1)[1:])
    np.testing.assert_array_equal(t["nucleus_area_px"], np.bincount(nuc.ravel(), minlength=n + 1)[1:])
    cy, cx = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, np.arange(1, n + 1))).T
    np.testing.assert_allclose(t["centroid_y"], cy)
    np.testing.assert_allclose(t["centroid_x"], cx)


def test_each_nucleus_lies_inside_its_own_cell(field):
    nuc, lab = field.nucleus_labels, field.cell_labels
    inside = nuc > 0
    np.testing.assert_array_equal(nuc[inside], lab[inside])
    assert (field.truth["nucleus_area_px"] < field.truth["area_px"]).all()


def test_cells_and_nuclei_are_connected(field):
    for lab in (field.cell_labels, field.nucleus_labels):
        for i, sl in enumerate(ndi.find_objects(lab)):
            _, k = ndi.label(lab[sl] == i + 1)
            assert k == 1, f"label {i + 1} has {k} pieces"


def test_border_flags_match_labels(field):
    lab = field.cell_labels
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    expected = np.isin(field.truth["cell_id"], edge[edge > 0])
    np.testing.assert_array_equal(field.truth["touches_border"], expected)


def test_class_flags_are_consistent_and_separated(field):
    t = field.truth
    np.testing.assert_array_equal(t["senescent"], t["sabgal_positive"] & t["enlarged"])
    pos = t["sabgal_positive"]
    assert (t.loc[pos, "xgal_od_peak"] >= 0.15).all()
    assert (t.loc[pos, "xgal_od_p90_true"] >= 0.08 - 1e-6).all()
    assert (t.loc[~pos, "xgal_od_peak"] <= 0.03 + 1e-9).all()
    assert (t["xgal_od_mean_true"] <= t["xgal_od_peak"] + 1e-9).all()
    interior = ~t["touches_border"]
    med = t.loc[interior & ~t["enlarged"], "area_px"].median()
    assert (t.loc[interior & t["enlarged"], "area_px"] >= 2.0 * med).all()
    assert (t.loc[interior & ~t["enlarged"], "area_px"] <= 1.5 * med).all()
    assert (t.loc[t["enlarged"], "thickness"].mean() < t.loc[~t["enlarged"], "thickness"].mean())


def test_senescent_fraction_is_honoured():
    f = _render(21, shape=(512, 640), senescent_fraction=0.5)
    assert abs(f.truth["senescent"].mean() - 0.5) < 0.12
    f = _render(21, shape=(512, 640), senescent_fraction=0.0)
    assert not f.truth["senescent"].any()


def _xgal_od(field: SynthField) -> np.ndarray:
    """X-gal OD by Beer–Lambert against the known lamp, unmixed with the field's vectors."""
    p = field.params
    img = field.rgb.astype(np.float64) / (255.0 if p.bit_depth == 8 else 4095.0)
    if p.gamma != 1.0:
        img = img ** (1.0 / p.gamma)
    od = -np.log10(np.clip(img, 1e-3, None) / synth.illumination(p))
    v1 = np.asarray(p.xgal_vector)
    v2 = np.asarray(p.counterstain_vector if p.counterstain_vector else p.scatter_vector)
    v3 = np.cross(v1, v2)
    m = np.linalg.inv(np.stack([v1, v2, v3 / np.linalg.norm(v3)], axis=1))
    return (od @ m.T)[..., 0]


@pytest.mark.parametrize("setup", SETUPS)
def test_positive_cells_carry_more_xgal_than_negatives(setup):
    f = _render(8, setup=setup, shape=(384, 480), senescent_fraction=0.45)
    t, lab = f.truth, f.cell_labels
    assert t["sabgal_positive"].any() and (~t["sabgal_positive"]).any()
    x = _xgal_od(f)
    p90 = np.array([np.percentile(x[sl][lab[sl] == i + 1], 90) for i, sl in enumerate(ndi.find_objects(lab))])
    pos = t["sabgal_positive"].to_numpy()
    assert np.median(p90[pos]) > np.median(p90[~pos]) + 0.05
    assert np.percentile(p90[pos], 10) > np.percentile(p90[~pos], 90)


def test_background_sits_in_the_drawn_exposure_range(field):
    p = field.params
    full = 255.0 if p.bit_depth == 8 else 4095.0
    bg = ndi.binary_erosion(field.cell_labels == 0, iterations=3)
    if bg.sum() < 100:
        pytest.skip("confluent field: too little background")
    level = np.median(field.rgb[bg].max(axis=-1)) / full
    if p.gamma != 1.0:
        level = level ** (1 / p.gamma)
    assert abs(level - p.background_level) < 0.1


def test_fluorescence_nuclei_are_brighter_than_background():
    f = _render(4, setup="fluorescence")
    dapi, nuc = f.nuclear.astype(float), f.nucleus_labels
    inner = ndi.binary_erosion(nuc > 0, iterations=2)
    outer = ~ndi.binary_dilation(nuc > 0, iterations=6)
    assert np.median(dapi[inner]) > np.median(dapi[outer]) + 5 * dapi[outer].std() ** 0.5
    assert dapi.min() >= 0 and dapi.max() <= f.params.dapi_full_scale


@pytest.mark.parametrize("setup", SETUPS)
def test_empty_field_has_full_truth_schema(setup):
    p = dataclasses.replace(random_params(np.random.default_rng(0), setup=setup, shape=(96, 128)), n_cells=0)
    f = render_field(p, np.random.default_rng(0))
    assert f.truth.empty and list(f.truth.columns) == list(TRUTH_COLUMNS)
    assert f.truth["sabgal_positive"].dtype == bool and f.truth["area_px"].dtype == np.int64
    assert not f.cell_labels.any() and not f.nucleus_labels.any()


def test_blank_field_matches_the_known_lamp():
    p = dataclasses.replace(random_params(np.random.default_rng(6), setup="brightfield", shape=(128, 160), jpeg=False),
                            n_cells=0, n_debris=0, n_crystals=0, n_dust=0, xgal_background_od=0.0, gamma=1.0)
    f = render_field(p, np.random.default_rng(0))
    full = 255.0 if p.bit_depth == 8 else 4095.0
    ratio = f.rgb / full / synth.illumination(p)
    assert abs(np.median(ratio) - 1.0) < 0.01


def test_render_rejects_non_params():
    with pytest.raises(TypeError, match="FieldParams"):
        render_field({"seed": 1}, np.random.default_rng(0))


# --- files --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "bits", "setup"),
    [("tif", 8, "fluorescence"), ("tif", 16, "brightfield"), ("png", 8, "counterstain"), ("jpg", 8, "counterstain")],
)
def test_write_field_round_trips(tmp_path, fmt, bits, setup):
    from sabgal.io import read_labels, read_nuclear, read_rgb

    p = random_params(np.random.default_rng(2), setup=setup, shape=SHAPE, jpeg=fmt == "jpg")
    p = dataclasses.replace(p, file_format=fmt, bit_depth=bits,
                            jpeg_quality=p.jpeg_quality if fmt == "jpg" else None)
    f = render_field(p, np.random.default_rng(p.seed))
    paths = write_field(f, tmp_path / "img", "field", truth_dir=tmp_path / "truth")
    assert paths["image"].endswith(f"field.{fmt}")
    img = read_rgb(paths["image"])
    if fmt == "jpg":
        assert np.abs(img.pixels * 255 - f.rgb).mean() < 2.0  # same quality: near-idempotent
    else:
        np.testing.assert_allclose(img.pixels * (255.0 if bits == 8 else 4095.0), f.rgb, atol=1e-3)
    np.testing.assert_array_equal(read_labels(paths["cells_true"]), f.cell_labels)
    np.testing.assert_array_equal(read_labels(paths["nuclei_true"]), f.nucleus_labels)
    t = pd.read_csv(paths["truth"])
    assert list(t.columns) == list(TRUTH_COLUMNS) and len(t) == len(f.truth)
    np.testing.assert_allclose(t["xgal_od_peak"], f.truth["xgal_od_peak"])
    if setup == "fluorescence":
        assert paths["dapi"].endswith("field_dapi.tif")
        assert read_nuclear(paths["dapi"]).pixels.shape == SHAPE
    else:
        assert "dapi" not in paths
    # image and companion in out_dir, truth apart
    assert {p.name for p in (tmp_path / "img").iterdir()} == {
        f"field.{fmt}", *(["field_dapi.tif"] if setup == "fluorescence" else [])}


def test_write_field_rejects_bad_stem(tmp_path):
    f = _render(1)
    with pytest.raises(ValueError, match="stem"):
        write_field(f, tmp_path, "a/b")


def test_generate_dataset_writes_manifest_and_cycles_setups(tmp_path):
    m = generate_dataset(tmp_path, n=4, seed=3, shape=(128, 160))
    assert list(m["setup"]) == ["counterstain", "brightfield", "fluorescence", "counterstain"]
    on_disk = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False)
    assert list(on_disk.columns) == list(synth.MANIFEST_COLUMNS) and len(on_disk) == 4
    for _, row in m.iterrows():
        assert (tmp_path / row["image"]).exists()
        assert (tmp_path / row["truth"]).exists()
        assert row["truth"].startswith("truth")
        assert (row["dapi"] != "") == (row["setup"] == "fluorescence")
        t = pd.read_csv(tmp_path / row["truth"])
        assert row["n_cells"] == len(t)
        assert row["fraction_positive"] == pytest.approx(t["sabgal_positive"].mean())
        p = FieldParams.from_dict(json.loads(row["params"]))
        assert p.setup == row["setup"]
    # image i does not depend on n
    m2 = generate_dataset(tmp_path / "again", n=2, seed=3, shape=(128, 160))
    assert list(m2["params"]) == list(m["params"][:2])


def test_negative_controls_are_the_same_fields_with_no_cell_stained(tmp_path):
    """``negative``: each field's draw is kept (cells, lamp, format) but no
    cell is senescent or positive; the unstained cells' haze stays under the
    negative peak."""
    pos = generate_dataset(tmp_path / "pos", n=3, seed=5, shape=(160, 200), setups=("brightfield",))
    neg = generate_dataset(tmp_path / "neg", n=3, seed=5, shape=(160, 200), setups=("brightfield",), negative=True)
    assert (neg["fraction_positive"] == 0).all() and (neg["fraction_senescent"] == 0).all()
    for a, b in zip(pos["params"], neg["params"]):
        pa, pb = json.loads(a), json.loads(b)
        assert pb["senescent_fraction"] == pb["positive_only_fraction"] == 0
        assert {k: v for k, v in pa.items() if "fraction" not in k} == {
            k: v for k, v in pb.items() if "fraction" not in k}
    for _, row in neg.iterrows():
        t = pd.read_csv(tmp_path / "neg" / row["truth"])
        assert not t["sabgal_positive"].any()
        assert (t["xgal_od_peak"] <= synth._NEGATIVE_MAX_PEAK + 1e-6).all()
    assert synth_main([str(tmp_path / "cli"), "--n", "1", "--shape", "96", "128", "--negative"]) == 0
    assert pd.read_csv(tmp_path / "cli" / "manifest.csv")["fraction_positive"].eq(0).all()


def test_synth_main_cli(tmp_path):
    rc = synth_main([str(tmp_path), "--n", "2", "--seed", "1", "--shape", "96", "128", "--setup", "brightfield",
                     "--formats", "png"])
    assert rc == 0
    m = pd.read_csv(tmp_path / "manifest.csv")
    assert set(m["setup"]) == {"brightfield"} and set(m["file_format"]) == {"png"}
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(m["image"])


def test_committed_sample_data_matches_the_renderer():
    """sample_data/ is what make_sample_data.py renders with the current code."""
    import importlib.util
    from pathlib import Path

    from sabgal.io import read_labels

    root = Path(__file__).resolve().parents[1] / "sample_data"
    script = root / "make_sample_data.py"
    if not script.exists():
        pytest.skip("no sample_data in this checkout")
    spec = importlib.util.spec_from_file_location("make_sample_data", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    manifest = pd.read_csv(root.parent / "tests" / "data" / "sample_truth" / "manifest.csv",
                           keep_default_na=False)
    assert list(manifest["stem"]) == [s[0] for s in mod.SAMPLES]
    for name in manifest["image"]:
        assert (root / name).exists() and "/" not in name  # inputs at the top level only
    i = 2  # one sample is enough (rendering ~0.2 s)
    params = mod.sample_params(i)
    assert params.to_dict() == json.loads(manifest.loc[i, "params"])
    f = render_field(params, np.random.default_rng(params.seed))
    committed = read_labels(root / manifest.loc[i, "cells_true"])
    assert committed.shape == f.cell_labels.shape
    assert np.mean(committed == f.cell_labels) > 0.995  # tolerate last-ulp float differences across CPUs
    assert len(pd.read_csv(root / manifest.loc[i, "truth"])) == len(f.truth)


def test_pale_xgal_keeps_each_fields_hue_at_the_asked_angle_from_grey(tmp_path):
    """``xgal_grey_angle_deg``: the same draws with X-gal turned to within
    the asked angle of neutral grey, its hue (direction round grey) kept."""
    from sabgal.stains import GREY, angle_deg

    plain = generate_dataset(tmp_path / "plain", n=3, seed=5, shape=(160, 200), setups=("brightfield",))
    pale = generate_dataset(tmp_path / "pale", n=3, seed=5, shape=(160, 200), setups=("brightfield",),
                            xgal_grey_angle_deg=(4.0, 6.0))
    for a, b in zip(plain["params"], pale["params"]):
        pa, pb = json.loads(a), json.loads(b)
        va, vb = np.array(pa.pop("xgal_vector")), np.array(pb.pop("xgal_vector"))
        assert pa == pb
        assert 4.0 - 1e-6 <= angle_deg(vb, GREY) <= 6.0 + 1e-6
        ha, hb = va - (va @ GREY) * GREY, vb - (vb @ GREY) * GREY
        assert angle_deg(ha, hb) < 1e-3
    with pytest.raises(ValueError, match="angle from grey"):
        generate_dataset(tmp_path / "bad", n=1, seed=5, shape=(160, 200), xgal_grey_angle_deg=(6.0, 4.0))


def test_the_magnified_benchmark_enlarges_images_and_truth_alike(tmp_path, magnify_dataset):
    """benchmarks/accuracy.py --magnify: every file of a rendered set (RGB,
    DAPI, true labels) is enlarged by the same factor, labels keeping their
    ids, so the truth still lies on its cells."""
    import tifffile

    from sabgal import io as sio
    from sabgal.synth import generate_dataset

    images = tmp_path / "images"
    manifest = generate_dataset(images, n=3, seed=7, shape=(96, 128), truth_dir=str(tmp_path / "truth"),
                                formats=("tif", "png"))
    before = {r["stem"]: (sio.read_rgb(images / r["image"]).pixels,
                          tifffile.imread(images / r["cells_true"])) for r in manifest.to_dict("records")}
    magnify_dataset(images, manifest, 2)
    for r in manifest.to_dict("records"):
        rgb0, lab0 = before[r["stem"]]
        rgb, lab = sio.read_rgb(images / r["image"]).pixels, tifffile.imread(images / r["cells_true"])
        assert rgb.shape == (192, 256, 3) and lab.shape == (192, 256)
        assert np.array_equal(lab[::2, ::2], lab0)  # (nearest: every label where it was)
        assert abs(float(rgb.mean()) - float(rgb0.mean())) < 0.01
        if r["dapi"]:
            assert tifffile.imread(images / r["dapi"]).shape == (192, 256)


def test_an_srgb_camera_encodes_light_with_the_srgb_curve():
    """The same field through a linear camera and an sRGB one: decoded with
    the inverse curve, the second gives the first's light back (to 8-bit
    quantisation)."""
    from sabgal.illumination import decode

    p = synth.random_params(np.random.default_rng(5), setup="brightfield", shape=(96, 128), formats=("png",))
    p = dataclasses.replace(p, gamma=1.0)
    linear = synth.render_field(p, np.random.default_rng(p.seed)).rgb / 255.0
    encoded = synth.render_field(dataclasses.replace(p, srgb_camera=True), np.random.default_rng(p.seed)).rgb / 255.0
    assert encoded.mean() > linear.mean() + 0.05  # (display encoding brightens the mid-tones)
    np.testing.assert_allclose(decode(encoded, "srgb"), linear, atol=0.01)


def test_generate_dataset_renders_through_an_srgb_camera(tmp_path):
    man = synth.generate_dataset(tmp_path, n=2, seed=1, shape=(64, 80), camera_encoding="srgb")
    assert all(json.loads(p)["srgb_camera"] for p in man["params"])
    man = synth.generate_dataset(tmp_path / "g", n=1, seed=1, shape=(64, 80), camera_encoding=2.2)
    assert abs(json.loads(man["params"][0])["gamma"] - 1 / 2.2) < 1e-9


def test_synth_cli_renders_through_an_srgb_camera_and_rejects_a_bad_encoding(tmp_path):
    assert synth_main([str(tmp_path / "a"), "--n", "1", "--shape", "64", "80", "--camera-encoding", "srgb"]) == 0
    man = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert json.loads(man["params"][0])["srgb_camera"] is True
    assert synth_main([str(tmp_path / "b"), "--n", "1", "--shape", "64", "80", "--camera-encoding", "9"]) == 2


def test_generate_dataset_overexposes_the_glass_on_request(tmp_path):
    from sabgal import io as sio

    man = synth.generate_dataset(tmp_path, n=2, seed=3, shape=(96, 128), formats=("png",), glass_level=1.1)
    for _, row in man.iterrows():
        assert json.loads(row["params"])["background_level"] == 1.1
        rgb = sio.read_rgb(tmp_path / row["image"]).pixels
        brightest = int(np.argmax(json.loads(row["params"])["lamp_rgb"]))
        assert (rgb[..., brightest] >= 1.0).mean() > 0.2  # its glass clipped
    with pytest.raises(ValueError, match="glass_level"):
        synth.generate_dataset(tmp_path / "bad", n=1, seed=1, glass_level=3.0)
    assert synth_main([str(tmp_path / "c"), "--n", "1", "--shape", "64", "80", "--glass-level", "2"]) == 2
