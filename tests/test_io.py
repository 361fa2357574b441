import numpy as np
import pandas as pd
import pytest
import tifffile
import imageio.v3 as iio

from sabgal import io as sio


@pytest.fixture
def rgb8():
    rng = np.random.default_rng(0)
    return rng.integers(100, 255, (64, 80, 3), dtype=np.uint8)


def test_reads_png_jpeg_and_tiff_8_and_16_bit(tmp_path, rgb8):
    iio.imwrite(tmp_path / "a.png", rgb8)
    iio.imwrite(tmp_path / "a.jpg", rgb8)
    tifffile.imwrite(tmp_path / "a.tif", rgb8)
    tifffile.imwrite(tmp_path / "b.tif", rgb8.astype(np.uint16) * 257)
    for name in ("a.png", "a.jpg", "a.tif", "b.tif"):
        d = sio.read_rgb(tmp_path / name)
        assert d.pixels.shape == (64, 80, 3) and d.pixels.dtype == np.float32
        assert 0 <= d.pixels.min() and d.pixels.max() <= 1
    assert sio.read_rgb(tmp_path / "b.tif").bit_depth == 16
    assert sio.read_rgb(tmp_path / "a.jpg").lossy


@pytest.mark.parametrize("compression, lossy", [("lzw", False), ("zlib", False), ("zstd", False),
                                                ("jpeg", True)])
def test_reads_compressed_tiff(tmp_path, rgb8, compression, lossy):
    # microscope software often writes LZW, some cameras JPEG inside the TIFF
    p = tmp_path / f"{compression}.tif"
    tifffile.imwrite(p, rgb8, photometric="rgb", compression=compression)
    d = sio.read_rgb(p)
    assert d.pixels.shape == (64, 80, 3) and d.lossy is lossy
    if not lossy:
        assert np.array_equal(np.round(d.pixels * 255).astype(np.uint8), rgb8)


def test_16_bit_colour_png_keeps_its_16_bits(tmp_path):
    import cv2

    rgb16 = np.random.default_rng(1).integers(0, 65536, (64, 80, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), rgb16[..., ::-1])  # (Pillow cannot write 16-bit colour)
    d = sio.read_rgb(tmp_path / "a.png")
    assert d.bit_depth == 16
    assert np.array_equal(np.round(d.pixels.astype(np.float64) * 65535).astype(np.uint16), rgb16)


def test_grey_png_with_alpha_is_refused_as_greyscale(tmp_path, rgb8):
    from PIL import Image

    Image.fromarray(rgb8).convert("LA").save(tmp_path / "la.png")
    with pytest.raises(sio.ImageReadError, match="greyscale"):
        sio.read_rgb(tmp_path / "la.png")


def test_rgba_drops_alpha(tmp_path, rgb8):
    rgba = np.concatenate([rgb8, np.full((64, 80, 1), 255, np.uint8)], axis=-1)
    iio.imwrite(tmp_path / "a.png", rgba)
    assert sio.read_rgb(tmp_path / "a.png").pixels.shape == (64, 80, 3)


def test_12_bit_data_in_16_bit_words_is_scaled_to_its_range(tmp_path):
    arr = np.full((40, 40, 3), 4000, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    assert sio.read_rgb(tmp_path / "a.tif").pixels.max() == pytest.approx(4000 / 4095)


def test_pixel_size_from_tiff_and_ome(tmp_path, rgb8):
    tifffile.imwrite(tmp_path / "ij.tif", rgb8, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": "um"})
    assert sio.read_rgb(tmp_path / "ij.tif").pixel_size_um == pytest.approx(0.65, rel=1e-3)
    tifffile.imwrite(tmp_path / "o.ome.tif", rgb8, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm"})
    assert sio.read_rgb(tmp_path / "o.ome.tif").pixel_size_um == pytest.approx(0.325)
    iio.imwrite(tmp_path / "p.png", rgb8)
    assert sio.read_rgb(tmp_path / "p.png").pixel_size_um is None


@pytest.mark.parametrize("case, match", [
    ("empty", "empty"),
    ("truncated", "cannot decode"),
    ("tiny", "need at least"),
    ("grey", "greyscale"),
    ("float_nan", "NaN"),
    ("float_range", "floating-point"),
    ("missing", "not found"),
    ("channels", "expected"),
    ("cmyk_jpeg", "CMYK"),
    ("cmyk_tiff", "CMYK"),
    ("palette_tiff", "palette"),
])
def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path, rgb8, case, match):
    p = tmp_path / f"{case}.tif"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        iio.imwrite(tmp_path / "x.png", rgb8)
        p = tmp_path / f"{case}.png"
        p.write_bytes((tmp_path / "x.png").read_bytes()[:200])
    elif case == "tiny":
        tifffile.imwrite(p, np.zeros((1, 1, 3), np.uint8))
    elif case == "grey":
        tifffile.imwrite(p, rgb8[..., 0])
    elif case == "float_nan":
        a = rgb8.astype(np.float32) / 255
        a[0, 0, 0] = np.nan
        tifffile.imwrite(p, a, photometric="rgb")
    elif case == "float_range":
        tifffile.imwrite(p, rgb8.astype(np.float32), photometric="rgb")
    elif case == "channels":
        tifffile.imwrite(p, np.zeros((64, 80, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    elif case == "cmyk_jpeg":
        # (read as RGBA, its C, M, Y channels passed for red, green, blue)
        from PIL import Image

        p = tmp_path / f"{case}.jpg"
        Image.fromarray(rgb8).convert("CMYK").save(p)
    elif case == "cmyk_tiff":
        tifffile.imwrite(p, np.concatenate([rgb8, rgb8[..., :1]], axis=-1), photometric="separated")
    elif case == "palette_tiff":
        tifffile.imwrite(p, rgb8[..., 0], photometric="palette",
                         colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    with pytest.raises(sio.ImageReadError, match=match) as err:
        sio.read_rgb(p)
    msg = str(err.value)
    assert str(p) in msg and "\n" not in msg


def test_float_in_unit_range_is_accepted(tmp_path, rgb8):
    tifffile.imwrite(tmp_path / "f.tif", rgb8.astype(np.float32) / 255, photometric="rgb")
    assert sio.read_rgb(tmp_path / "f.tif").bit_depth == 32


def test_nuclear_image_reads_single_channel(tmp_path):
    tifffile.imwrite(tmp_path / "d.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert sio.read_nuclear(tmp_path / "d.tif").pixels.shape == (64, 64)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with sio.atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_labels_round_trip(tmp_path):
    lab = np.arange(100, dtype=np.uint32).reshape(10, 10)
    sio.write_labels(tmp_path / "l.tif", lab)
    assert np.array_equal(sio.read_labels(tmp_path / "l.tif"), lab)


def test_columns_round_trip_exactly(tmp_path):
    t = pd.DataFrame({"cell_id": np.arange(5, dtype=np.int64), "area_um2": [1.5, np.nan, 1 / 3, 2e-9, 7.0],
                      "sabgal_positive": [True, False, True, False, False], "image": list("abcde")})
    sio.write_columns(tmp_path / "t.npz", t)
    back = sio.read_columns(tmp_path / "t.npz")
    assert list(back.columns) == list(t.columns)
    pd.testing.assert_frame_equal(back, t)



def test_the_encoding_a_file_declares_is_read(tmp_path):
    """sRGB declared by a PNG chunk (sRGB, or gAMA 1/2.2), a JPEG's EXIF
    ColorSpace or an embedded ICC profile is recorded; a plain write (what
    image libraries and scientific cameras' raw exports give) declares
    nothing, nor does a PNG gAMA of 1 (linear)."""
    from PIL import Image, PngImagePlugin

    a = np.full((40, 48, 3), 200, np.uint8)
    im = Image.fromarray(a)
    cases = {}
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")
    im.save(tmp_path / "srgb.png", pnginfo=info)
    cases["srgb.png"] = "srgb"
    for name, g in (("gamma045.png", 45455), ("gamma1.png", 100000)):
        info = PngImagePlugin.PngInfo()
        info.add(b"gAMA", g.to_bytes(4, "big"))
        im.save(tmp_path / name, pnginfo=info)
    cases["gamma045.png"], cases["gamma1.png"] = "srgb", None
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA001] = 1
    im.save(tmp_path / "exif.jpg", exif=exif)
    cases["exif.jpg"] = "srgb"
    im.save(tmp_path / "plain.jpg")
    im.save(tmp_path / "plain.png")
    cases["plain.jpg"] = cases["plain.png"] = None
    tifffile.imwrite(tmp_path / "icc.tif", a, extratags=[(34675, 7, 4, b"icc\x00")])
    tifffile.imwrite(tmp_path / "plain.tif", a)
    cases["icc.tif"], cases["plain.tif"] = "srgb", None
    for name, expected in cases.items():
        assert sio.read_rgb(tmp_path / name).encoding == expected, name
