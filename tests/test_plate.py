"""File-name metadata, OME-XML plate metadata, plate maps and their join."""

from __future__ import annotations

import pandas as pd
import pytest

from sabgal import plate
from sabgal.plate import MetadataError


# --- wells ----------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("A1", "A01"), ("a1", "A01"), ("A01", "A01"), ("H12", "H12"), ("p24", "P24"), (" B 7 ", "B07"),
    ("A001", "A01"), ("AF48", "AF48"),
])
def test_normalize_well_pads_column_and_uppercases(raw, expected):
    assert plate.normalize_well(raw) == expected


@pytest.mark.parametrize("raw", ["", "1A", "A", "A0", "A49", "AG1", "BA1", "well3", "A1B"])
def test_impossible_wells_are_rejected(raw):
    with pytest.raises(MetadataError, match="well|row|column"):
        plate.normalize_well(raw)


def test_well_from_numeric_row_and_column():
    assert plate.well_from_row_column(1, 1) == "A01"
    assert plate.well_from_row_column("16", "24") == "P24"
    assert plate.well_from_row_column(27, 3) == "AA03"


def test_normalize_well_is_idempotent_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(st.integers(1, 32), st.integers(1, 48))
    def check(r, c):
        w = plate.well_from_row_column(r, c)
        assert plate.normalize_well(w) == w
        letters, col = plate.split_well(w)
        assert col == c and plate.well_from_row_column(letters, col) == w

    check()


# --- file names -----------------------------------------------------------------------
CASES = [
    ("imagexpress", "MyPlate_B03_s2_w1.tif", "MyPlate", "B03", 2, "1"),
    ("imagexpress", "A01_s1_w2.TIF", None, "A01", 1, "2"),
    ("imagexpress", "P_2_H12_s4_w1A1B2C3D4-1111-2222-3333-444455556666.tif", "P_2", "H12", 4, "1"),
    ("operetta", "r01c01f01p01-ch1sk1fk1fl1.tiff", None, "A01", 1, "1"),
    ("operetta", "r16c24f112p01-ch2sk1fk1fl1.tiff", None, "P24", 112, "2"),
    ("cytation", "A1_01_1_1_Bright Field_001.tif", None, "A01", 1, "Bright Field"),
    ("cytation", "Plate 1_B12_02_1_3_Phase Contrast_001.tif", "Plate 1", "B12", 3, "Phase Contrast"),
    ("incucyte", "VID1234_A1_1_2021y05m03d_10h30m.tif", "VID1234", "A01", 1, None),
    ("incucyte", "Exp1_phase_B2_3_00d04h00m.tif", "Exp1", "B02", 3, "phase"),
    ("generic", "A01_f1.tif", None, "A01", 1, None),
    ("generic", "A1-field2.png", None, "A01", 2, None),
    ("generic", "plate1_B03_f2.tif", "plate1", "B03", 2, None),
    ("generic", "P1_A01_f3.png", "P1", "A01", 3, None),
    ("generic", "C4.jpg", None, "C04", None, None),
]


@pytest.mark.parametrize("preset, name, plate_, well, field, channel", CASES)
def test_presets_parse_instrument_names(preset, name, plate_, well, field, channel):
    meta = plate.parse_filename(name, plate.compile_pattern(preset))
    assert meta is not None
    assert (meta["plate"], meta["well"], meta["field"], meta["channel"]) == (plate_, well, field, channel)


def test_imagexpress_thumbnails_do_not_match():
    assert plate.parse_filename("A01_s1_w1_thumb.tif", plate.compile_pattern("imagexpress")) is None


@pytest.mark.parametrize("preset", ["imagexpress", "operetta", "cytation", "incucyte"])
def test_auto_picks_the_instrument_preset_over_generic(preset):
    names = [name for p, name, *_ in CASES if p == preset]
    chosen, n = plate.choose_preset(names)
    assert chosen == preset and n == len(names)


def test_auto_with_unparseable_names_gives_no_wells_and_folder_plates():
    meta, used = plate.filename_metadata(["run1/img_0001.tif", "run2/img_0002.tif", "x.png"])
    assert used is None
    assert meta["well"].tolist() == ["", "", ""]
    assert meta["plate"].tolist() == ["run1", "run2", ""]
    assert meta["field"].isna().all()


def test_plate_defaults_to_folder_so_two_folders_never_share_a_well():
    meta, used = plate.filename_metadata(["p1/A01_f1.tif", "p2/A01_f1.tif"])
    assert used == "generic"
    assert meta["plate"].tolist() == ["p1", "p2"]


def test_custom_regex_with_named_groups_and_relative_path():
    rx = r"(?P<plate>[^/]+)/TimePoint_1/(?P<well>[A-P]\d+)_s(?P<field>\d+)"
    meta, _ = plate.filename_metadata(["PL9/TimePoint_1/B3_s2_w1.tif"], rx)
    assert meta.loc[0, ["plate", "well"]].tolist() == ["PL9", "B03"]
    assert meta.loc[0, "field"] == 2


def test_custom_regex_needs_a_well_group():
    with pytest.raises(MetadataError, match=r"needs a named group \(\?P<well>"):
        plate.compile_pattern(r"(?P<plate>\w+)_(?P<site>\d+)")


def test_invalid_regex_names_the_presets():
    with pytest.raises(MetadataError, match="neither a preset"):
        plate.compile_pattern("(?P<well>[A-P")


def test_explicit_pattern_that_misses_a_file_fails_naming_it():
    with pytest.raises(MetadataError, match=r"odd\.tif: file name does not match"):
        plate.filename_metadata(["A01_f1.tif", "odd.tif"], "generic")


def test_ome_fills_in_for_names_without_wells():
    meta, _ = plate.filename_metadata(
        ["scan_0001.ome.tif"], "auto",
        ome={"scan_0001.ome.tif": {"plate": "P7", "well": "C05", "row": "C", "column": 5, "field": 2}})
    assert meta.loc[0, ["plate", "well", "row"]].tolist() == ["P7", "C05", "C"]
    assert meta.loc[0, "field"] == 2


OME = ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
       '<Plate ID="Plate:0" Name="Screen-3"><Well ID="Well:0" Row="0" Column="0">'
       '<WellSample ID="WS:0" Index="0"><ImageRef ID="Image:0"/></WellSample></Well>'
       '<Well ID="Well:1" Row="7" Column="11">'
       '<WellSample ID="WS:1" Index="1"><ImageRef ID="Image:1"/></WellSample>'
       '<WellSample ID="WS:2" Index="2"><ImageRef ID="Image:2"/></WellSample></Well></Plate>'
       '<Image ID="Image:2" Name="x"/></OME>')


def test_parse_ome_plate_finds_the_sample_of_the_image():
    assert plate.parse_ome_plate(OME) == {"plate": "Screen-3", "well": "H12", "row": "H", "column": 12,
                                          "field": 2}
    assert plate.parse_ome_plate(OME, image_id="Image:0")["well"] == "A01"
    assert plate.parse_ome_plate("<OME/>") == {}
    assert plate.parse_ome_plate("not xml") == {}


# --- plate maps -----------------------------------------------------------------------
def _grid(name, values):
    rows = [[name] + [str(c) for c in range(1, 13)]]
    for r, letter in enumerate("ABCDEFGH"):
        rows.append([letter] + [values.get(f"{letter}{c:02d}", "") for c in range(1, 13)])
    return rows


def test_long_platemap_normalises_wells_roles_and_doses():
    rows = [["Plate", "Well", "Condition", "Dose", "Replicate", "Role", "cell_line"],
            ["P1", "a1", "DMSO", "0", "1", "neg", "IMR90"],
            ["P1", "A2", "dox", "0.5", "1", "Sample", "IMR90"],
            ["P1", "H12", "", "", "", "blank", ""]]
    pm = plate.platemap_from_rows([("", rows)], source="map.csv")
    assert pm["well"].tolist() == ["A01", "A02", "H12"]
    assert pm["role"].tolist() == ["negative_control", "sample", "blank"]
    assert pm["dose"].tolist()[:2] == [0.0, 0.5]
    assert pm["cell_line"].tolist()[0] == "IMR90"
    assert pm.attrs["has_plate"]


def test_grid_platemap_reads_several_named_blocks():
    cond = _grid("condition", {"A01": "DMSO", "A02": "DMSO", "B01": "dox", "B02": "dox"})
    role = _grid("role", {"A01": "negative control", "A02": "negative_control", "H12": "blank"})
    dose = _grid("dose", {"B01": "1", "B02": "2"})
    rows = cond + [[""]] + role + [[""]] + dose
    pm = plate.platemap_from_rows([("", rows)], source="grid.csv").set_index("well")
    assert set(pm.index) == {"A01", "A02", "B01", "B02", "H12"}
    assert pm.loc["A01", "role"] == "negative_control" and pm.loc["B01", "role"] == "sample"
    assert pm.loc["B02", "dose"] == 2.0 and pm.loc["H12", "role"] == "blank"
    assert not pm.attrs["has_plate"]


def test_grid_384_with_name_on_the_line_above():
    header = [""] + [str(c) for c in range(1, 25)]
    rows = [["condition"], header]
    for r in range(16):
        letter = chr(ord("A") + r)
        rows.append([letter] + ["x" if (letter, c) == ("P", 24) else "" for c in range(1, 25)])
    pm = plate.platemap_from_rows([("", rows)])
    assert pm["well"].tolist() == ["P24"] and pm["condition"].tolist() == ["x"]


def test_grid_platemap_from_xlsx(tmp_path):
    pytest.importorskip("openpyxl")
    path = tmp_path / "map.xlsx"
    with pd.ExcelWriter(path) as xl:
        pd.DataFrame(_grid("", {"A01": "DMSO", "C03": "dox"})).to_excel(xl, sheet_name="condition",
                                                                        header=False, index=False)
        pd.DataFrame(_grid("", {"A01": "neg"})).to_excel(xl, sheet_name="role", header=False, index=False)
    pm = plate.read_platemap(path).set_index("well")
    assert pm.loc["A01", ["condition", "role"]].tolist() == ["DMSO", "negative_control"]
    assert pm.loc["C03", ["condition", "role"]].tolist() == ["dox", "sample"]


def test_long_csv_file_round_trip(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("well,condition,role\nA1,DMSO,negative_control\nA2,dox,sample\n", encoding="utf-8")
    pm = plate.read_platemap(path)
    assert pm["well"].tolist() == ["A01", "A02"]


@pytest.mark.parametrize("rows, message", [
    ([["well", "role"], ["A1", "maybe"]], r"line 2: unknown role 'maybe'"),
    ([["well", "dose"], ["A1", "10 uM"]], r"line 2: dose '10 uM' is not a number"),
    ([["well", "condition"], ["A1", "x"], ["a01", "y"]], r"well A01 is listed more than once"),
    ([["well", "condition"], ["A99", "x"]], r"line 2: 'A99': column 99 outside"),
    ([["well", "condition"], ["", "x"]], r"line 2: empty well"),
    ([["plate", "well"], ["", "A1"]], r"line 2: empty plate"),
    ([["nothing", "here"], ["1", "2"]], r"no 'well' column and no 8x12"),
    ([], r"plate map is empty"),
])
def test_bad_platemaps_fail_loudly_naming_the_place(rows, message):
    with pytest.raises(MetadataError, match=message):
        plate.platemap_from_rows([("", rows)], source="map.csv")


def test_grid_with_a_missing_row_letter_fails():
    rows = _grid("condition", {"A01": "x"})
    rows[3][0] = "X"  # row C mislabelled
    with pytest.raises(MetadataError, match="expected row 'C', found 'X'"):
        plate.platemap_from_rows([("", rows)], source="grid.csv")


def test_missing_platemap_file(tmp_path):
    with pytest.raises(MetadataError, match="plate map not found"):
        plate.read_platemap(tmp_path / "nope.csv")


# --- join -----------------------------------------------------------------------------
def _meta(images, pattern="auto"):
    return plate.filename_metadata(images, pattern)[0]


def test_join_adds_platemap_columns_to_every_image():
    pm = plate.platemap_from_rows([("", [["well", "condition", "dose", "role"], ["A1", "DMSO", "0", "neg"],
                                         ["B1", "dox", "1", "sample"]])])
    meta = plate.join_platemap(_meta(["P1_A01_f1.tif", "P1_A01_f2.tif", "P1_B01_f1.tif"]), pm)
    assert meta["condition"].tolist() == ["DMSO", "DMSO", "dox"]
    assert meta["role"].tolist() == ["negative_control", "negative_control", "sample"]
    assert meta["dose"].tolist() == [0.0, 0.0, 1.0]


def test_map_without_plates_applies_to_every_plate():
    pm = plate.platemap_from_rows([("", [["well", "condition"], ["A1", "DMSO"]])])
    meta = plate.join_platemap(_meta(["P1_A01_f1.tif", "P2_A01_f1.tif"]), pm)
    assert meta["plate"].tolist() == ["P1", "P2"] and meta["condition"].tolist() == ["DMSO", "DMSO"]


def test_map_with_plates_joins_on_plate_and_well():
    pm = plate.platemap_from_rows([("", [["plate", "well", "condition"], ["P1", "A1", "a"],
                                         ["P2", "A1", "b"]])])
    meta = plate.join_platemap(_meta(["P1_A01_f1.tif", "P2_A01_f1.tif"]), pm)
    assert meta["condition"].tolist() == ["a", "b"]


def test_image_in_a_well_missing_from_the_map_fails_naming_the_image():
    pm = plate.platemap_from_rows([("", [["well", "condition"], ["A1", "DMSO"]])], source="map.csv")
    with pytest.raises(MetadataError, match=r"P1_B02_f1.tif: well B02 is not in the plate map map.csv"):
        plate.join_platemap(_meta(["P1_A01_f1.tif", "P1_B02_f1.tif"]), pm)


def test_image_on_a_plate_missing_from_the_map_fails():
    pm = plate.platemap_from_rows([("", [["plate", "well", "condition"], ["P1", "A1", "a"]])], source="m.csv")
    with pytest.raises(MetadataError, match=r"no entry for plate\(s\) \['P9'\]"):
        plate.join_platemap(_meta(["P9_A01_f1.tif"]), pm)


def test_image_without_a_well_cannot_take_a_platemap():
    pm = plate.platemap_from_rows([("", [["well", "condition"], ["A1", "DMSO"]])])
    with pytest.raises(MetadataError, match=r"img_7.tif: no well in the file name"):
        plate.join_platemap(_meta(["img_7.tif"]), pm)


def test_no_platemap_gives_empty_columns_with_schema():
    meta = plate.join_platemap(_meta(["A01_f1.tif"]), None)
    assert meta.loc[0, ["condition", "replicate", "role"]].tolist() == ["", "", ""]
    assert meta["dose"].dtype == "float64" and meta["dose"].isna().all()


def test_coerce_metadata_restores_types_after_csv(tmp_path):
    pm = plate.platemap_from_rows([("", [["well", "condition", "dose"], ["A1", "DMSO", "0"]])])
    meta = plate.join_platemap(_meta(["A01_f1.tif"]), pm)
    path = tmp_path / "m.csv"
    meta.to_csv(path, index=False)
    back = plate.coerce_metadata(pd.read_csv(path, dtype=str, keep_default_na=False))
    pd.testing.assert_frame_equal(back, meta)
