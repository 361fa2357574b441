"""QC overlays: the image with every cell outlined in the colour of its call.

:func:`render_overlay` is pure: arrays and a table in, an ``(H, W, 3)`` uint8
picture out. It

* resizes the image for viewing: big images down to ``max_px`` on the long
  side (area averaging; labels by nearest neighbour), small ones up by an
  integer factor to at least ``min_px``;
* outlines each cell in the colour of its call (:data:`CALL_COLOURS`);
  senescent cells get a double-width outline so that they stand out even
  for colour-blind readers;
* marks nuclei with a thin white outline;
* adds a panel under the image with the title, the QC verdict, the counts and
  the legend.

Runs write one PNG per image (``DIR/qc/<key>.png``). Because the calls are
made when a run's tables are rebuilt (thresholds are learnt from the whole
run), the batch stores a small *overlay base* per image while analysing it
(:func:`save_overlay_base`: the resized image as JPEG and the resized labels)
and :func:`write_overlays` renders the PNGs once the calls are known.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io as _bytesio
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sabgal import io as sio

log = logging.getLogger(__name__)

__all__ = [
    "CALL_COLOURS",
    "CALL_LABELS",
    "OverlayBase",
    "cell_categories",
    "render_overlay",
    "resize_for_display",
    "write_overlay",
    "save_overlay_base",
    "load_overlay_base",
    "write_overlays",
    "overlay_summary_lines",
]

#: call category -> RGB outline colour
CALL_COLOURS: dict[str, tuple[int, int, int]] = {
    "negative": (0, 190, 120),  # green
    "enlarged": (0, 200, 255),  # cyan: enlarged, SA-β-gal negative
    "positive": (255, 150, 0),  # orange: SA-β-gal positive, not senescent
    "senescent": (255, 0, 200),  # magenta, double width
    "unclassified": (160, 160, 160),
}
CALL_LABELS: dict[str, str] = {
    "negative": "negative",
    "enlarged": "enlarged, SA-β-gal−",
    "positive": "SA-β-gal+",
    "senescent": "senescent",
    "unclassified": "not classified",
}
NUCLEUS_COLOUR = (255, 255, 255)
_CATEGORY_CODES = {"unclassified": 0, "negative": 1, "enlarged": 2, "positive": 3, "senescent": 4}
_CODE_NAMES = {v: k for k, v in _CATEGORY_CODES.items()}
_BASE_SUFFIX = ".overlay.npz"


@dataclass(frozen=True)
class OverlayBase:
    """An image and its labels already resized for display.

    rgb: (H, W, 3) uint8; cells / nuclei: (H, W) uint32 labels;
    scale: display pixels per image pixel; shape: the original (rows, cols).
    """

    rgb: np.ndarray
    cells: np.ndarray
    nuclei: np.ndarray
    scale: float
    shape: tuple[int, int]


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb must have shape (rows, cols, 3); got {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint8:
        return rgb
    if np.issubdtype(rgb.dtype, np.integer):
        top = float(np.percentile(rgb[::4, ::4], 99.9)) or 1.0
        return np.clip(rgb.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    x = rgb.astype(np.float32)  # a fresh copy: scaled in place below
    np.fmax(x, 0, out=x)  # fmax/fmin, unlike clip, send NaN to 0 (as nan_to_num did)
    np.fmin(x, 1, out=x)
    x *= 255
    x += 0.5
    return x.astype(np.uint8)


def _check_labels(name: str, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise ValueError(f"{name} must have the image's shape {shape}; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image; got dtype {labels.dtype}")
    return labels


def resize_for_display(rgb: np.ndarray, cell_labels: np.ndarray, nucleus_labels: np.ndarray, *,
                       max_px: int = 1024, min_px: int = 640) -> OverlayBase:
    """Resize an image and its label images for viewing.

    Parameters
    ----------
    rgb : (M, N, 3) ndarray
        uint8, uint16 (scaled by its 99.9th percentile) or float in [0, 1].
    cell_labels, nucleus_labels : (M, N) int ndarray
    max_px : int
        Longest side of the result for big images (area-averaged).
    min_px : int
        Small images are enlarged by an integer factor (pixel replication)
        until the long side reaches this.

    Returns
    -------
    OverlayBase
    """
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb must have shape (rows, cols, 3); got {rgb.shape}")
    shape = rgb.shape[:2]
    cells = _check_labels("cell_labels", cell_labels, shape)
    nuclei = _check_labels("nucleus_labels", nucleus_labels, shape)
    if max_px < 64 or min_px < 1:
        raise ValueError(f"max_px must be >= 64 and min_px >= 1; got {max_px}, {min_px}")
    long_side = max(shape)
    if long_side > max_px:
        scale = max_px / long_side
        size = (max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale)))  # PIL: (w, h)
        if np.issubdtype(rgb.dtype, np.floating):
            # area-averaged before the conversion to 8 bits (a float image is
            # most of the batch's: converting the full-size one cost more
            # than the shrink)
            import cv2

            small = cv2.resize(np.ascontiguousarray(rgb[..., :3], dtype=np.float32), size,
                               interpolation=cv2.INTER_AREA)
            out_rgb = _to_uint8(small)
        else:
            out_rgb = np.asarray(Image.fromarray(_to_uint8(rgb)).resize(size, Image.Resampling.BOX))
        rows = np.minimum(((np.arange(size[1]) + 0.5) / scale).astype(np.int64), shape[0] - 1)
        cols = np.minimum(((np.arange(size[0]) + 0.5) / scale).astype(np.int64), shape[1] - 1)
        out_cells = cells[np.ix_(rows, cols)]
        out_nuclei = nuclei[np.ix_(rows, cols)]
    else:
        k = max(1, -(-min_px // long_side)) if long_side < min_px else 1
        scale = float(k)
        rgb8 = _to_uint8(rgb)
        if k > 1:
            out_rgb = np.repeat(np.repeat(rgb8, k, axis=0), k, axis=1)
            out_cells = np.repeat(np.repeat(cells, k, axis=0), k, axis=1)
            out_nuclei = np.repeat(np.repeat(nuclei, k, axis=0), k, axis=1)
        else:
            out_rgb, out_cells, out_nuclei = rgb8, cells, nuclei
    return OverlayBase(np.ascontiguousarray(out_rgb), out_cells.astype(np.uint32, copy=False),
                       out_nuclei.astype(np.uint32, copy=False), float(scale), (int(shape[0]), int(shape[1])))


def _inner_boundary(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a label within ``width`` px (4-connected steps) of another label."""
    b = np.zeros(labels.shape, dtype=bool)
    for w in range(1, width + 1):
        d = labels[w:, :] != labels[:-w, :]
        b[w:, :] |= d
        b[:-w, :] |= d
        d = labels[:, w:] != labels[:, :-w]
        b[:, w:] |= d
        b[:, :-w] |= d
    return b & (labels > 0)


def cell_categories(calls: pd.DataFrame | None) -> dict[int, str]:
    """cell_id -> call category (``negative``, ``enlarged``, ``positive``, ``senescent``).

    >>> t = pd.DataFrame({"cell_id": [1, 2, 3, 4], "sabgal_positive": [0, 1, 1, 0],
    ...                   "enlarged": [0, 0, 1, 1], "senescent": [0, 0, 1, 0]})
    >>> cell_categories(t)
    {1: 'negative', 2: 'positive', 3: 'senescent', 4: 'enlarged'}
    """
    if calls is None or len(calls) == 0 or "sabgal_positive" not in calls:
        return {}
    ids = calls["cell_id"].to_numpy(dtype=np.int64)
    pos = calls["sabgal_positive"].to_numpy(dtype=bool)
    enl = calls["enlarged"].to_numpy(dtype=bool) if "enlarged" in calls else np.zeros(len(ids), bool)
    sen = calls["senescent"].to_numpy(dtype=bool) if "senescent" in calls else pos & enl
    cat = np.where(sen, "senescent", np.where(pos, "positive", np.where(enl, "enlarged", "negative")))
    return dict(zip(ids.tolist(), cat.tolist()))


_FONTS = threading.local()  # FreeType faces are not shared between rendering threads


def _font(size: int):
    """DejaVu Sans (ships with matplotlib; has β and µ) or PIL's default font; cached per thread."""
    cache = _FONTS.__dict__.setdefault("by_size", {})
    if size not in cache:
        cache[size] = _load_font(size)
    return cache[size]


def _load_font(size: int):
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.exists():
            return ImageFont.truetype(str(path), size), True
    return ImageFont.load_default(size=size), False


def _ascii(text: str) -> str:
    return text.replace("β", "b").replace("µ", "u").replace("−", "-").replace("·", "|").replace("≥", ">=")


def overlay_summary_lines(summary: Mapping[str, Any] | None) -> list[str]:
    """The counts line(s) printed under an overlay, from an ``images.csv`` row.

    >>> overlay_summary_lines({"n_cells": 20, "n_sabgal_positive": 5, "n_enlarged": 2,
    ...                        "n_senescent": 1})
    ['20 cells · SA-β-gal+ 5 (25%) · enlarged 2 (10%) · senescent 1 (5%)']
    """
    if not summary:
        return []
    n = int(summary.get("n_cells", 0) or 0)

    def part(label: str, key: str) -> str:
        k = int(summary.get(key, 0) or 0)
        return f"{label} {k} ({100 * k / n:.0f}%)" if n else f"{label} {k}"

    line = " · ".join([f"{n} cells", part("SA-β-gal+", "n_sabgal_positive"), part("enlarged", "n_enlarged"),
                       part("senescent", "n_senescent")])
    out = [line]
    th = summary.get("positive_threshold_od")
    if th is not None and np.isfinite(float(th)):
        src = summary.get("positive_threshold_source")
        src = f" ({src})" if isinstance(src, str) and src else ""
        out.append(f"SA-β-gal+ = X-gal OD above {float(th):.3f}{src}")
    return out


def render_overlay(rgb: np.ndarray, cell_labels: np.ndarray, nucleus_labels: np.ndarray,
                   calls: pd.DataFrame | None = None, *, title: str = "",
                   summary: Mapping[str, Any] | None = None, qc_pass: bool | None = None,
                   qc_reasons: str = "", pixel_size_um: float | None = None,
                   max_px: int = 1024, min_px: int = 640) -> np.ndarray:
    """Render the QC overlay of one image.

    Parameters
    ----------
    rgb : (M, N, 3) ndarray
        The image (uint8, uint16, or float in [0, 1]).
    cell_labels, nucleus_labels : (M, N) int ndarray
        Label images; a cell's label is its ``cell_id``.
    calls : DataFrame, optional
        Per-cell calls: ``cell_id``, ``sabgal_positive``, ``enlarged``,
        ``senescent`` (as in ``cells.csv``). Without it every cell is drawn
        as "not classified".
    title : str
        First line of the panel (usually the image's name).
    summary : mapping, optional
        The image's row of ``images.csv`` (counts, threshold) for the panel;
        counted from ``calls`` when omitted.
    qc_pass, qc_reasons
        The QC verdict to print (omitted when ``qc_pass`` is None).
    pixel_size_um : float, optional
        Adds a scale bar.
    max_px, min_px : int
        See :func:`resize_for_display`.

    Returns
    -------
    (H, W, 3) uint8 ndarray

    Examples
    --------
    >>> rgb = np.full((64, 80, 3), 230, np.uint8)
    >>> cells = np.zeros((64, 80), np.uint32); cells[10:30, 10:30] = 1; cells[35:60, 40:75] = 2
    >>> calls = pd.DataFrame({"cell_id": [1, 2], "sabgal_positive": [False, True],
    ...                       "enlarged": [False, True], "senescent": [False, True]})
    >>> out = render_overlay(rgb, cells, np.zeros_like(cells), calls, title="demo", min_px=80)
    >>> out.shape[1], out.dtype.name
    (80, 'uint8')
    """
    base = resize_for_display(rgb, cell_labels, nucleus_labels, max_px=max_px, min_px=min_px)
    return _render(base, calls, title=title, summary=summary, qc_pass=qc_pass, qc_reasons=qc_reasons,
                   pixel_size_um=pixel_size_um)


def _render(base: OverlayBase, calls: pd.DataFrame | None, *, title: str, summary: Mapping[str, Any] | None,
            qc_pass: bool | None, qc_reasons: str, pixel_size_um: float | None) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = base.rgb.copy()
    cells = base.cells
    cats = cell_categories(calls)
    n_lab = int(cells.max()) if cells.size else 0
    lut = np.zeros(n_lab + 1, dtype=np.uint8)
    for cid, cat in cats.items():
        if 0 < cid <= n_lab:
            lut[cid] = _CATEGORY_CODES[cat]
    code = lut[cells]
    edge1 = _inner_boundary(cells, 1)
    thick = _inner_boundary(cells, 2) & (code == _CATEGORY_CODES["senescent"])
    nuc_edge = _inner_boundary(base.nuclei, 1)
    img[nuc_edge] = (0.35 * img[nuc_edge] + 0.65 * np.array(NUCLEUS_COLOUR)).astype(np.uint8)
    palette = np.array([CALL_COLOURS[_CODE_NAMES[i]] for i in range(len(_CODE_NAMES))], dtype=np.uint8)
    mask = edge1 | thick
    img[mask] = palette[code[mask]]

    if summary is None and calls is not None and "sabgal_positive" in calls:
        summary = {"n_cells": len(calls), "n_sabgal_positive": int(calls["sabgal_positive"].sum()),
                   "n_enlarged": int(calls["enlarged"].sum()) if "enlarged" in calls else 0,
                   "n_senescent": int(calls["senescent"].sum()) if "senescent" in calls else 0}
    h, w = img.shape[:2]
    fs = int(np.clip(round(w / 55), 13, 22))
    font, unicode_ok = _font(fs)
    small, _ = _font(max(10, fs - 2))
    fix = (lambda s: s) if unicode_ok else _ascii
    pad = max(4, fs // 2)
    line_h = int(fs * 1.35)

    # legend items (only categories that occur, plus the nucleus mark)
    present = [c for c in ("negative", "enlarged", "positive", "senescent", "unclassified")
               if c in set(cats.values()) or (c == "unclassified" and not cats and n_lab)]
    if not present:
        present = ["negative", "positive", "senescent"]
    legend = [(CALL_LABELS[c], CALL_COLOURS[c], c == "senescent") for c in present]
    legend.append(("nucleus", NUCLEUS_COLOUR, False))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw = fs  # swatch size
    rows_legend: list[list[tuple[str, tuple[int, int, int], bool, int]]] = [[]]
    x = pad
    for text, col, bold in legend:
        tw = int(measure.textlength(fix(text), font=small))
        item_w = sw + 4 + tw + 2 * pad
        if x + item_w > w - pad and rows_legend[-1]:
            rows_legend.append([])
            x = pad
        rows_legend[-1].append((text, col, bold, x))
        x += item_w

    text_lines: list[tuple[str, tuple[int, int, int], Any]] = []
    if title:
        text_lines.append((title, (20, 20, 20), font))
    if qc_pass is not None:
        verdict = "QC: pass" if qc_pass else f"QC: FLAGGED — {qc_reasons}" if qc_reasons else "QC: FLAGGED"
        text_lines.append((verdict, (0, 120, 60) if qc_pass else (200, 0, 0), small))
    for line in overlay_summary_lines(summary):
        text_lines.append((line, (40, 40, 40), small))
    # wrap long lines by characters (monospace-free approximation by measuring)
    wrapped: list[tuple[str, tuple[int, int, int], Any]] = []
    for text, col, f in text_lines:
        text = fix(text)
        while text:
            if measure.textlength(text, font=f) <= w - 2 * pad:
                wrapped.append((text, col, f))
                break
            cut = len(text)
            while cut > 1 and measure.textlength(text[:cut], font=f) > w - 2 * pad:
                cut = int(cut * 0.9)
            space = text.rfind(" ", 0, cut)
            cut = space if space > cut // 2 else cut
            wrapped.append((text[:cut], col, f))
            text = text[cut:].lstrip()
    panel_h = pad + line_h * (len(wrapped) + len(rows_legend)) + pad
    canvas = Image.new("RGB", (w, h + panel_h), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    d = ImageDraw.Draw(canvas)
    y = h + pad
    for text, col, f in wrapped:
        d.text((pad, y), text, font=f, fill=col)
        y += line_h
    for row in rows_legend:
        for text, col, bold, x0 in row:
            box = (x0, y + (line_h - sw) // 2, x0 + sw, y + (line_h - sw) // 2 + sw)
            d.rectangle(box, outline=col, width=4 if bold else 2,
                        fill=(60, 60, 60) if col == NUCLEUS_COLOUR else None)
            d.text((x0 + sw + 4, y + (line_h - fs) // 2), fix(text), font=small, fill=(40, 40, 40))
        y += line_h
    if pixel_size_um and pixel_size_um > 0:
        _scale_bar(d, w, h, base.scale, pixel_size_um, small, fix)
    return np.asarray(canvas)


def _scale_bar(d: Any, w: int, h: int, scale: float, pixel_size_um: float, font: Any, fix: Any) -> None:
    um_per_display_px = pixel_size_um / scale
    target = 0.2 * w * um_per_display_px
    nice = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000]
    length_um = max([v for v in nice if v <= target] or [nice[0]])
    length_px = int(round(length_um / um_per_display_px))
    if length_px < 4:
        return
    margin = max(8, w // 60)
    thick = max(3, w // 250)
    x1, y1 = w - margin, h - margin
    x0 = x1 - length_px
    d.rectangle((x0 - 2, y1 - thick - 2, x1 + 2, y1 + 2), fill=(255, 255, 255))
    d.rectangle((x0, y1 - thick, x1, y1), fill=(0, 0, 0))
    label = fix(f"{length_um:g} µm")
    tw = d.textlength(label, font=font)
    ty = y1 - thick - 4 - font.size
    d.rectangle((x1 - tw - 4, ty - 2, x1 + 2, ty + font.size + 2), fill=(255, 255, 255))
    d.text((x1 - tw - 2, ty), label, font=font, fill=(0, 0, 0))


def write_overlay(path: str | os.PathLike[str], overlay: np.ndarray, *,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Write an overlay as PNG, atomically (``metadata`` goes into tEXt chunks,
    iTXt where a value is not Latin-1).

    Encoded by OpenCV's libpng with the "up" filter on every row at deflate
    level 1: half the time of Pillow's encoder (which tries all five PNG
    filters on every row) for a file no larger; the pixels are the same.
    """
    import cv2

    arr = np.ascontiguousarray(np.asarray(overlay, dtype=np.uint8)[..., ::-1])  # OpenCV takes BGR
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                         cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    data = buf.tobytes()
    # text chunks go right after the header chunk (8-byte signature + 25-byte IHDR)
    chunks = b"".join(_png_text_chunk(k, v) for k, v in (metadata or {}).items())
    with sio.atomic_path(path) as tmp:
        Path(tmp).write_bytes(data[:33] + chunks + data[33:])


def _png_text_chunk(key: str, value: str) -> bytes:
    """A PNG tEXt chunk (iTXt, UTF-8, where ``value`` is not Latin-1).

    >>> _png_text_chunk("k", "v")[4:8]
    b'tEXt'
    """
    import struct
    import zlib

    try:
        kind, body = b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        # keyword, no compression, no language tag or translated keyword
        kind, body = b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def save_overlay_base(path: str | os.PathLike[str], rgb: np.ndarray, cell_labels: np.ndarray,
                      nucleus_labels: np.ndarray, *, max_px: int = 1024, min_px: int = 640) -> None:
    """Store the resized image (JPEG, quality 92) and labels for a later :func:`write_overlays`."""
    import cv2

    base = resize_for_display(rgb, cell_labels, nucleus_labels, max_px=max_px, min_px=1)
    # (OpenCV's libjpeg: the bytes Pillow writes at the same quality, without
    # holding the GIL, which Pillow's encoder does in a worker thread)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(base.rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise ValueError(f"{path}: JPEG encoding failed")
    with sio.atomic_path(path) as tmp:
        _savez_fast(tmp, jpeg=jpeg.ravel(), cells=_narrow(base.cells),
                    nuclei=_narrow(base.nuclei), scale=np.float64(base.scale),
                    shape=np.array(base.shape, dtype=np.int64), min_px=np.int64(min_px))


def _narrow(labels: np.ndarray) -> np.ndarray:
    """A label image as uint16 where its labels fit (half the bytes to
    compress; :func:`load_overlay_base` widens it back to uint32)."""
    return labels.astype(np.uint16) if labels.size and int(labels.max()) < 2 ** 16 else labels


def _savez_fast(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` at deflate level 1 (numpy's default level is
    several times slower on label images); ``np.load`` reads it the same."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def load_overlay_base(path: str | os.PathLike[str]) -> OverlayBase:
    """Read what :func:`save_overlay_base` wrote, enlarged to its ``min_px``."""
    from PIL import Image

    z = sio.load_arrays(path)  # (overlays are drawn on threads)
    rgb = np.asarray(Image.open(_bytesio.BytesIO(z["jpeg"].tobytes())).convert("RGB"))
    cells, nuclei = z["cells"].astype(np.uint32), z["nuclei"].astype(np.uint32)
    scale, shape, min_px = float(z["scale"]), tuple(int(v) for v in z["shape"]), int(z["min_px"])
    long_side = max(rgb.shape[:2])
    if long_side < min_px:
        k = max(1, -(-min_px // long_side))
        rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
        cells = np.repeat(np.repeat(cells, k, axis=0), k, axis=1)
        nuclei = np.repeat(np.repeat(nuclei, k, axis=0), k, axis=1)
        scale *= k
    return OverlayBase(rgb, cells, nuclei, scale, (shape[0], shape[1]))


def base_path(state_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the batch keeps an image's overlay base."""
    return Path(state_dir) / f"{key}{_BASE_SUFFIX}"


def _digest(base_file: Path, calls: pd.DataFrame, panel: dict[str, Any]) -> str:
    st = base_file.stat()
    h = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode())
    cols = [c for c in ("cell_id", "sabgal_positive", "enlarged", "senescent") if c in calls]
    h.update(np.ascontiguousarray(calls[cols].to_numpy(dtype=np.int64)).tobytes())
    h.update(json.dumps(panel, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _plain(v: Any) -> Any:
    """A table value as plain JSON: NaN, None and "" alike are None (CSV round trips change them)."""
    if v is None or (isinstance(v, str) and v == ""):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return None if not np.isfinite(float(v)) else float(v)
    return str(v)


def _existing_digest(png: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(png) as im:
            return im.info.get("sabgal-digest")
    except (OSError, ValueError):
        return None


def write_overlays(out_dir: str | os.PathLike[str], image_sets: Iterable[Any], images: pd.DataFrame,
                   cells: pd.DataFrame, *, state_dir: str = ".sabgal", workers: int = 1) -> int:
    """Render ``DIR/qc/<key>.png`` for every image that has an overlay base.

    Parameters
    ----------
    out_dir : path
        The run's output folder.
    image_sets : iterable
        Objects with ``.key`` and ``.image`` (:class:`sabgal.batch.ImageSet`).
    images, cells : DataFrame
        The run's tables (``images.csv`` with the QC columns, ``cells.csv``
        with the calls).
    workers : int
        Threads used for rendering (PNG encoding releases the GIL).

    Returns
    -------
    int
        Number of overlays written (up-to-date ones are skipped).
    """
    out = Path(out_dir)
    state = out / state_dir
    rows = {r["image"]: r for r in images.to_dict("records")} if len(images) else {}
    by_image = dict(tuple(cells.groupby("image", sort=False))) if len(cells) else {}
    jobs = []
    for s in image_sets:
        bp = base_path(state, s.key)
        row = rows.get(s.image)
        if row is None or row.get("status") != "ok" or not bp.exists():
            continue
        jobs.append((s, bp, row))
    if not jobs:
        return 0

    def one(job: tuple[Any, Path, dict[str, Any]]) -> bool:
        s, bp, row = job
        calls = by_image.get(s.image, cells.iloc[:0])
        panel = {k: _plain(row.get(k)) for k in ("n_cells", "n_sabgal_positive", "n_enlarged", "n_senescent",
                                                  "positive_threshold_od", "positive_threshold_source",
                                                  "qc_pass", "qc_reasons", "pixel_size_um")}
        png = out / "qc" / f"{s.key}.png"
        digest = _digest(bp, calls, panel)
        if png.exists() and _existing_digest(png) == digest:
            return False
        try:
            base = load_overlay_base(bp)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: overlay base unreadable (%s); no overlay written", bp, exc)
            return False
        qc_pass = panel["qc_pass"]
        arr = _render(base, calls, title=s.image, summary=row,
                      qc_pass=None if qc_pass is None else bool(qc_pass),
                      qc_reasons=panel["qc_reasons"] or "", pixel_size_um=panel["pixel_size_um"])
        write_overlay(png, arr, metadata={"sabgal-digest": digest, "sabgal-image": s.image})
        return True

    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as ex:
            done = list(ex.map(one, jobs))
    else:
        done = [one(j) for j in jobs]
    return int(sum(done))
