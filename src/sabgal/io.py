"""Reading and writing files: the only module that knows image and table formats.

Every reader error is an :class:`ImageReadError` whose message is one line
naming the file and what is wrong with it. Writers go through a temporary file
in the destination folder and an atomic rename, so a crash never leaves a
half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "ImageReadError",
    "ImageData",
    "read_rgb",
    "read_nuclear",
    "read_labels",
    "write_labels",
    "write_table",
    "write_json",
    "atomic_path",
    "IMAGE_EXTENSIONS",
    "MIN_SIZE_PX",
]

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MIN_SIZE_PX = 32


class ImageReadError(ValueError):
    """An input image cannot be used; ``str(err)`` is one line naming the file."""


@dataclass(frozen=True)
class ImageData:
    """A decoded image.

    pixels: (M, N, 3) float32 RGB in [0, 1] of the file's full scale, or (M, N)
    float32 for a nuclear image. pixel_size_um: µm per pixel from the file's
    metadata, else None. bit_depth: 8 or 16 (the container's). saturated_fraction:
    share of pixels with any channel at the container's maximum.
    """

    path: str
    pixels: np.ndarray
    bit_depth: int
    pixel_size_um: float | None
    saturated_fraction: float
    lossy: bool
    # "srgb" where the file declares its values sRGB-encoded (PNG sRGB or
    # gAMA ~1/2.2 chunk, JPEG EXIF ColorSpace = sRGB, an embedded ICC
    # profile), else None: nothing said (illumination.encoding = "auto" then
    # reads it as linear)
    encoding: str | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_raw(path: Path, *, encoding: bool = True) -> tuple[np.ndarray, float | None, bool, str | None]:
    """(pixels, µm per pixel or None, whether the file's compression is lossy,
    the encoding the file declares: :func:`_declared_encoding`, or None
    without ``encoding`` -- a nuclear image is not decoded, and its PNG or
    JPEG header need not be opened). With ``encoding`` (the RGB image) a
    colour model other than RGB is refused (:func:`_check_colour_model`)."""
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    ext = path.suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if encoding:
                    _check_colour_model(path, _TIFF_COLOUR_MODELS.get(getattr(tif.pages[0].photometric,
                                                                              "name", "")))
                arr = tif.asarray()
                pixel_size = _tiff_pixel_size(tif)
                lossy = _lossy_tiff(tif)
                declared = _declared_encoding(tif=tif) if encoding else None
            return np.asarray(arr), pixel_size, lossy, declared
        data = path.read_bytes()
        declared = None
        if encoding:
            # (Pillow reads the header only: its colour mode and declared encoding)
            mode, declared = _pil_header(data)
            _check_colour_model(path, _PIL_COLOUR_MODELS.get(mode))
        if ext == ".png":
            return _read_png(data), None, False, declared
        if ext in (".jpg", ".jpeg"):
            arr = _read_whole_jpeg(data)
            if arr is not None:
                return arr, None, True, declared
        import imageio.v3 as iio

        return np.asarray(iio.imread(path)), None, ext in (".jpg", ".jpeg"), declared
    except ImageReadError:
        raise
    except Exception as exc:  # decoder errors come in many types; report them as one line
        raise ImageReadError(
            f"{path}: cannot decode {ext or 'file'} (truncated or corrupt?): {_one_line(exc)}"
        ) from None


def _imdecode(data: bytes) -> np.ndarray | None:
    """OpenCV's decoding of an encoded image, as stored (bit depth kept, a
    palette expanded), colour channels in RGB(A) order; None where it
    cannot decode it."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        return None
    if arr.ndim == 3:
        arr = arr[..., 2::-1] if arr.shape[-1] == 3 else arr[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(arr)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(data: bytes) -> np.ndarray:
    """A PNG's pixels by OpenCV's decoder (:func:`_imdecode`): 16-bit colour
    PNGs keep their 16 bits (Pillow, under imageio, reduces them to 8), and
    it is faster. Grey (+ alpha) comes back as one channel, so it is refused
    as greyscale, not read as colour."""
    if data.rfind(b"IEND") < 0:
        # (OpenCV would decode what is there and warn on stderr)
        raise ValueError("no IEND chunk: the file stops before the end of the image")
    arr = _imdecode(data)
    if arr is None:
        raise ValueError("not a readable PNG")
    # IHDR colour type (byte 25): 0 grey, 4 grey + alpha (OpenCV repeats the grey)
    if arr.ndim == 3 and data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[25] in (0, 4):
        return np.ascontiguousarray(arr[..., 0])
    return arr


def _read_whole_jpeg(data: bytes) -> np.ndarray | None:
    """A JPEG's RGB (or grey) pixels by OpenCV's decoder -- the values
    Pillow gives (the same libjpeg-turbo decoding: identical on 300 test
    files), in half the time and without holding Python's lock -- where the
    file ends with its end-of-image marker; else None (Pillow, under
    imageio, then decodes it and names a truncated file, which OpenCV would
    decode in part with a warning)."""
    if len(data) < 4 or data[-2:] != b"\xff\xd9":
        return None
    arr = _imdecode(data)
    if arr is None or (arr.ndim == 3 and arr.shape[-1] != 3):
        return None
    return arr


def _pil_header(data: bytes) -> tuple[str | None, str | None]:
    """(Pillow's colour mode, :func:`_declared_encoding`) from a PNG or JPEG
    header; (None, None) where Pillow cannot open it (the decoder reports
    what is wrong)."""
    import io as _io

    from PIL import Image

    try:
        with Image.open(_io.BytesIO(data)) as im:
            return im.mode, _declared_encoding(im=im)
    except Exception:
        return None, None


# Colour models whose numbers are not the light each camera channel took:
# a print separation (CMYK: read as RGBA it gave C, M, Y as red, green, blue),
# an indexed palette (the indices read as a greyscale image), a Lab encoding.
# (A PNG palette is expanded to RGB by the decoder and passes.)
_TIFF_COLOUR_MODELS = {"SEPARATED": "CMYK (print separation)", "PALETTE": "indexed (palette)",
                       "CIELAB": "L*a*b*", "ICCLAB": "L*a*b*", "ITULAB": "L*a*b*"}
_PIL_COLOUR_MODELS = {"CMYK": "CMYK (print separation)", "LAB": "L*a*b*", "HSV": "HSV"}


def _check_colour_model(path: Path, what: str | None) -> None:
    """Raise :class:`ImageReadError` for a colour image not stored as RGB
    (``what``: its model, from ``_TIFF_COLOUR_MODELS`` or
    ``_PIL_COLOUR_MODELS``; None for RGB): optical density is read from the
    light each RGB channel took, which a conversion made for print or
    display (its ink model and profile unknown) does not give back."""
    if what:
        raise ImageReadError(f"{path}: {what} colour image; sabgal reads optical density from RGB "
                             "brightfield images -- export the microscope camera's RGB image")


# A PNG gAMA chunk this close to 1/2.2 (0.45455 as written) declares a
# gamma-encoded (sRGB-like) image.
DECLARED_GAMMA_TOLERANCE = 0.05


def _declared_encoding(*, tif: Any = None, im: Any = None) -> str | None:
    """``"srgb"`` where the file declares its values encoded for display: a
    PNG ``sRGB`` chunk or a ``gAMA`` of ~1/2.2, a JPEG's EXIF ColorSpace =
    sRGB, or an embedded ICC colour profile (RGB profiles' tone curves are
    sRGB's or a 1.8-2.2 power, far closer to sRGB than to linear); else None.
    Scientific cameras' raw exports and image libraries' plain writes
    declare nothing. Metadata is advisory: an unreadable tag is None.
    ``tif``: an open ``tifffile.TiffFile``; ``im``: an open Pillow image."""
    try:
        if tif is not None:
            return "srgb" if "InterColorProfile" in tif.pages[0].tags else None
        info = im.info
        if "srgb" in info or info.get("icc_profile"):
            return "srgb"
        gamma = info.get("gamma")
        if gamma is not None and abs(float(gamma) - 1 / 2.2) < DECLARED_GAMMA_TOLERANCE:
            return "srgb"
        if "exif" in info and im.getexif().get_ifd(0x8769).get(0xA001) == 1:
            return "srgb"
    except Exception:
        return None
    return None


def _lossy_tiff(tif: Any) -> bool:
    """Whether the TIFF's first image is stored with a lossy codec (JPEG in
    TIFF, as some microscope cameras write; WebP; JPEG 2000 / XL, lossy as
    usually written). Decoding any of them, and LZW or Zstandard, needs
    ``imagecodecs``, a core dependency."""
    name = getattr(tif.pages[0].compression, "name", "")
    return "JPEG" in name or "WEBP" in name


def _tiff_pixel_size(tif: Any) -> float | None:
    """µm per pixel from OME-XML, ImageJ metadata or the TIFF resolution tags."""
    try:
        if tif.ome_metadata:
            root = ET.fromstring(tif.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
                    size = float(el.attrib["PhysicalSizeX"])
                    unit = el.attrib.get("PhysicalSizeXUnit", "µm")
                    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
                    if scale and size > 0:
                        return size * scale
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags:
            return None
        num, den = tags["XResolution"].value
        if not num or not den:
            return None
        px_per_unit = num / den
        ij = tif.imagej_metadata or {}
        unit = str(ij.get("unit", "")).lower()
        if unit in ("micron", "um", "µm", "\\u00b5m"):
            return 1.0 / px_per_unit
        res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        if res_unit == 3:  # centimetre
            size = 1e4 / px_per_unit
        elif res_unit == 2 and px_per_unit > 1000:  # inch; desktop dpi (72, 300) is not a microscope
            size = 25400.0 / px_per_unit
        else:
            return None
        return size if 0.01 < size < 100 else None
    except Exception:  # metadata is advisory: a broken tag must not fail the read
        return None


def _to_float(arr: np.ndarray, path: Path) -> tuple[np.ndarray, int, float]:
    """Scale to [0, 1] float32; returns (pixels, bit_depth, saturated_fraction)."""
    if arr.dtype == np.bool_:
        raise ImageReadError(f"{path}: binary (1-bit) image; sabgal needs 8- or 16-bit brightfield")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageReadError(f"{path}: floating-point image contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise ImageReadError(
                f"{path}: floating-point image with values in [{lo:.3g}, {hi:.3g}]; "
                "expected 8/16-bit integers or floats in [0, 1]")
        sat = float(np.mean(_any_channel(arr >= 1.0))) if arr.ndim == 3 else float(np.mean(arr >= 1.0))
        return arr.astype(np.float32), 32, sat
    if arr.dtype == np.uint8:
        full, depth = 255.0, 8
    elif arr.dtype in (np.uint16, np.int16):
        full, depth = 65535.0, 16
        if arr.dtype == np.int16:
            arr = arr.astype(np.int32)
            if arr.min() < 0:
                raise ImageReadError(f"{path}: signed 16-bit image with negative values")
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize == 4:
        full, depth = float(max(int(arr.max()), 1)), 32
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}; need uint8 or uint16")
    maxv = int(arr.max()) if arr.size else 0
    if depth == 16 and 0 < maxv <= 4095:
        full = 4095.0  # 12-bit camera data stored in 16-bit words
    elif depth == 16 and 4095 < maxv <= 16383:
        full = 16383.0  # 14-bit
    sat_level = maxv if maxv >= full * 0.999 else full
    if arr.ndim == 3:
        sat = float(np.mean(_any_channel(arr >= sat_level)))
    else:
        sat = float(np.mean(arr >= sat_level))
    return (arr.astype(np.float32) / np.float32(full)), depth, sat


def _any_channel(mask: np.ndarray) -> np.ndarray:
    """``mask.any(axis=-1)`` for a few channels, as whole-plane ORs (a reduction
    over a short last axis is slow in numpy)."""
    out = mask[..., 0].copy()
    for c in range(1, mask.shape[-1]):
        out |= mask[..., c]
    return out


def _squeeze_pages(arr: np.ndarray) -> np.ndarray:
    # Drop singleton leading axes (T, Z, C of 1) that TIFF writers like to add.
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def read_rgb(path: str | os.PathLike[str]) -> ImageData:
    """Read an RGB brightfield image (TIFF/OME-TIFF, PNG, JPEG; 8/16-bit; RGB or RGBA).

    Raises
    ------
    ImageReadError
        One line naming the file: missing, empty, truncated/corrupt, too small,
        greyscale, wrong number of channels, float out of range or NaN.
    """
    p = Path(path)
    arr, pixel_size, lossy, declared = _read_raw(p)
    arr = _squeeze_pages(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, M, N) TIFF
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        raise ImageReadError(
            f"{p}: greyscale image {arr.shape[:2]}; sabgal needs an RGB colour brightfield image "
            "(a nuclear image pairs with one via setup.companion_suffixes)")
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageReadError(f"{p}: image of shape {arr.shape}; expected (rows, cols, 3) RGB or RGBA")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]  # alpha carries no optical density
    if min(arr.shape[:2]) < MIN_SIZE_PX:
        raise ImageReadError(
            f"{p}: image is {arr.shape[0]}x{arr.shape[1]} px; need at least {MIN_SIZE_PX}x{MIN_SIZE_PX}")
    pixels, depth, sat = _to_float(arr, p)
    return ImageData(str(p), np.ascontiguousarray(pixels), depth, pixel_size, sat,
                     lossy=lossy, encoding=declared)


def read_nuclear(path: str | os.PathLike[str]) -> ImageData:
    """Read a nuclear fluorescence image (DAPI/Hoechst) as (M, N) float32.

    RGB files are accepted (a false-coloured export): the brightest channel is used.
    """
    p = Path(path)
    arr, pixel_size, lossy, _ = _read_raw(p, encoding=False)
    arr = _squeeze_pages(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].max(axis=-1)
    elif arr.ndim == 3 and arr.shape[0] in (2, 3, 4):
        arr = arr.max(axis=0)
    if arr.ndim != 2:
        raise ImageReadError(f"{p}: nuclear image of shape {arr.shape}; expected a single-channel (rows, cols) image")
    if min(arr.shape) < MIN_SIZE_PX:
        raise ImageReadError(f"{p}: image is {arr.shape[0]}x{arr.shape[1]} px; need at least {MIN_SIZE_PX}x{MIN_SIZE_PX}")
    pixels, depth, sat = _to_float(arr, p)
    return ImageData(str(p), np.ascontiguousarray(pixels), depth, pixel_size, sat,
                     lossy=lossy)


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a labels TIFF written by :func:`write_labels`."""
    import tifffile

    return np.asarray(tifffile.imread(path))


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; outputs are meant to be shared like any other file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_labels(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """Write a uint32 label image as a compressed TIFF, atomically.

    Deflate at level 1: a third of the time of the default level for label
    images, files about 1.8x larger; any TIFF reader decodes either.
    """
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(labels, dtype=np.uint32), compression="zlib",
                         compressionargs={"level": 1})


def write_table(path: str | os.PathLike[str], table: Any) -> None:
    """Write a pandas DataFrame as CSV or Parquet (by extension), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def write_columns(path: str | os.PathLike[str], table: Any) -> None:
    """Write a DataFrame of numeric, boolean and string columns as an
    uncompressed ``.npz`` (one array per column, in order), atomically.

    For the batch's per-image measurements (``DIR/.sabgal/<key>.cells.npz``):
    exact values, and ~15x faster than CSV, whose float formatting holds
    Python's lock and so stalled the other worker threads.
    """
    cols = {str(c): _column_array(table[c]) for c in table.columns}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **cols)


def _column_array(col: Any) -> np.ndarray:
    a = col.to_numpy()
    return a.astype(str) if a.dtype == object else a


# numpy parses every .npy header with ast.literal_eval, and CPython 3.11 and
# 3.12 keep the AST constructor's recursion count per interpreter, not per
# thread (python/cpython#106905): two threads reading arrays at once can fail
# with "SystemError: AST constructor recursion depth mismatch" (seen once in
# a batch's overlay step, 60 images on 2 threads). Every array read goes
# through the two functions below, one at a time.
_NPY_READ = threading.Lock()


def load_array(path: str | os.PathLike[str]) -> np.ndarray:
    """``np.load`` of one ``.npy`` array (no pickled objects), safe from threads."""
    with _NPY_READ:
        return np.load(path, allow_pickle=False)


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by name (no pickled objects), safe from threads."""
    with _NPY_READ, np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_columns(path: str | os.PathLike[str]) -> Any:
    """The DataFrame :func:`write_columns` wrote (no pickled objects are loaded)."""
    import pandas as pd

    return pd.DataFrame(load_arrays(path))


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON (indented, keys in order given), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
