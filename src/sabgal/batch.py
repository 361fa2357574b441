"""Batch runs: discover images, analyse each (in parallel, locally or on a Dask
cluster), commit each result atomically, then rebuild the run's tables from the
per-image results, with plate metadata and control-calibrated thresholds.

Layout of an output folder::

    DIR/images.csv  DIR/cells.csv  DIR/wells.csv  DIR/conditions.csv  DIR/run.json
    DIR/cellprofiler/Image.csv  DIR/cellprofiler/Cells.csv
    DIR/labels/<key>_cells.tif  DIR/labels/<key>_nuclei.tif
    DIR/.sabgal/<key>.cells.npz   per-image measurements (no calls; sabgal.io.read_columns)
    DIR/.sabgal/<key>.json        per-image record, written last: its presence
                                  means the image is finished
    DIR/.sabgal/metadata.csv      plate / well / field / plate-map columns per image
    DIR/.sabgal/flat_field/*.npy  flat fields (blank image or median of blank wells)

A rerun skips images whose record matches the same input file, config and flat
field (``force=True`` redoes them), so a crash, SIGKILL or Ctrl-C loses nothing
but the images in flight. Calls (positive / enlarged / senescent) are made when
the tables are rebuilt: per plate, with thresholds calibrated on the plate's
negative-control wells when it has them (:func:`plate_thresholds`), else from
the config or learnt from the plate's cells.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import traceback
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sabgal import __version__, classify
from sabgal import io as sio
from sabgal import plate as splate
from sabgal import summaries
from sabgal.config import Config, config_from_dict, config_to_dict
from sabgal.corrections import apply_corrections, load_corrections
from sabgal.measure import CELL_COLUMNS, empty_cells_table

log = logging.getLogger(__name__)

__all__ = [
    "ImageSet",
    "FlatFieldRef",
    "InputError",
    "discover_images",
    "collect_metadata",
    "image_key",
    "prepare_flat_fields",
    "pending_images",
    "process_image",
    "run_batch",
    "plate_thresholds",
    "rebuild_tables",
    "config_digest",
    "STATE_DIR",
    "OutputFormat",
]

STATE_DIR = ".sabgal"
OutputFormat = Literal["csv", "parquet"]
BLANKS = "blanks"  # illumination.flat_field_path value: median of the plate's blank wells
# Negative-control calibration needs enough control cells that the chosen
# percentile is set by more than one cell: at least 2 / (1 - q) cells
# (40 for the 95th percentile), never fewer than 20.
MIN_CONTROL_CELLS = 20
# Cells needed for a median control area (matches classify's per-image reference).
MIN_CONTROL_NEGATIVE_CELLS = 8
DASK_CONNECT_TIMEOUT = "30s"


class InputError(ValueError):
    """The inputs of a run cannot be used (nothing found, orphan companions...)."""


@dataclass(frozen=True)
class ImageSet:
    """One field: the RGB image, its nuclear companion, and how it is named."""

    path: str
    image: str  # path relative to the input root, '/'-separated
    key: str  # file-system-safe unique stem for outputs
    companion: str | None = None


@dataclass(frozen=True)
class FlatFieldRef:
    """A flat field saved in the run's state folder: its path and content digest."""

    path: str
    digest: str


def image_key(rel: str) -> str:
    """Unique, file-system-safe stem for a relative image path.

    >>> image_key("plate1/A01_f1.tif")
    'plate1__A01_f1'
    """
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return stem.replace("/", "__").replace("\\", "__")


def _swap_last(stem: str, old: str, new: str) -> str | None:
    """``stem`` with its last ``old`` replaced by ``new``; None without one."""
    i = stem.rfind(old)
    return stem[:i] + new + stem[i + len(old):] if i >= 0 else None


def _companion_of(path: Path, suffixes: tuple[str, ...],
                  channels: tuple[tuple[str, str], ...] = ()) -> tuple[str, str] | None:
    """(stem of its RGB image, marker) if ``path`` is a nuclear companion by name:
    ``<stem><suffix>``, or ``<stem>`` with its last RGB channel token
    replaced by the nuclear one (``config.setup.companion_channels``)."""
    stem = path.stem
    for suf in suffixes:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)], suf
    for rgb_token, nuc_token in channels:
        rgb_stem = _swap_last(stem, nuc_token, rgb_token)
        if rgb_stem is not None:
            return rgb_stem, nuc_token
    return None


def _companion_names(stem: str, suffixes: tuple[str, ...], channels: tuple[tuple[str, str], ...]) -> list[str]:
    """Stems a nuclear companion of the RGB image ``stem`` may have."""
    swapped = (_swap_last(stem, rgb_token, nuc_token) for rgb_token, nuc_token in channels)
    return [f"{stem}{suf}" for suf in suffixes] + [name for name in swapped if name is not None]


def _abs(path: Path) -> Path:
    """Absolute and normalised, symbolic links kept: an input folder of links
    to images elsewhere names its images by the links."""
    return Path(os.path.abspath(path))


def _inside(path: Path, folders: list[Path]) -> bool:
    rp = path.resolve()
    return any(rp == f or f in rp.parents for f in folders)


def discover_images(inputs: Iterable[str | os.PathLike[str]], config: Config, *,
                    exclude: Iterable[str | os.PathLike[str]] = ()) -> list[ImageSet]:
    """Find images in folders (recursively), globs and files; pair companions.

    Files named ``<stem><suffix>.<ext>`` for a suffix in
    ``config.setup.companion_suffixes`` are nuclear companions of
    ``<stem>.<ext2>`` in the same folder; so are files whose name holds a
    nuclear channel token of ``config.setup.companion_channels`` (of the
    file named with the RGB token instead). Hidden files and folders, and
    anything under ``exclude`` (the output folder), are skipped.

    Raises
    ------
    InputError
        When an input does not exist, nothing is found, or a companion has no
        RGB image beside it.
    """
    skip = [Path(e).resolve() for e in exclude]
    files: list[tuple[Path, Path]] = []  # (file, root)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in sio.IMAGE_EXTENSIONS and not any(
                        part.startswith(".") for part in f.relative_to(p).parts) and not _inside(f, skip):
                    files.append((f, p))
        elif p.is_file():
            files.append((p, p.parent))
        else:
            matches = sorted(Path().glob(str(item))) if any(c in str(item) for c in "*?[") else []
            if not matches:
                raise InputError(f"{item}: no such file or folder")
            files.extend((m, m.parent) for m in matches if m.is_file() and not _inside(m, skip))
    if not files:
        raise InputError("no images found (looked for " + ", ".join(sio.IMAGE_EXTENSIONS) + ")")
    roots = {_abs(r) for _, r in files}
    common = Path(os.path.commonpath([str(r) for r in roots])) if len(roots) > 1 else next(iter(roots))

    suffixes = tuple(config.setup.companion_suffixes)
    channels = tuple(config.setup.companion_channels)
    companions: dict[tuple[Path, str], Path] = {}
    mains: list[Path] = []
    seen: set[Path] = set()
    for f, _ in files:
        rf = f.resolve()
        if rf in seen:
            continue
        seen.add(rf)
        comp = _companion_of(f, suffixes, channels)
        if comp is not None:
            companions[(_abs(f).parent, comp[0])] = f
        else:
            mains.append(f)
    main_index = {(_abs(m).parent, m.stem): m for m in mains}
    orphans = [str(c) for k, c in companions.items() if k not in main_index]
    if orphans:
        raise InputError(f"{orphans[0]}: nuclear companion image with no RGB image of the same name"
                         + (f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    sets = []
    for m in mains:
        rm = _abs(m)
        rel = rm.relative_to(common).as_posix()
        comp = companions.get((rm.parent, m.stem))
        if comp is None:
            # a file named on the command line still finds its companion beside it
            comp = next((c for name in _companion_names(m.stem, suffixes, channels) for ext in sio.IMAGE_EXTENSIONS
                         for c in (m.with_name(f"{name}{ext}"),) if c.is_file()), None)
        sets.append(ImageSet(str(m), rel, image_key(rel), str(comp) if comp else None))
    keys = [s.key for s in sets]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"two images map to the same output name {dup!r} (same name, different extension?)")
    return sorted(sets, key=lambda s: s.image)


# --- metadata ---------------------------------------------------------------------------
def _read_ome_xml(path: str) -> str | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.ome_metadata
    except Exception:  # metadata is advisory: an unreadable file fails later, with its own message
        return None


def collect_metadata(sets: list[ImageSet], config: Config, *,
                     platemap: str | os.PathLike[str] | pd.DataFrame | None = None,
                     pattern: str | None = None) -> pd.DataFrame:
    """Plate / well / field / channel of every image, joined with the plate map.

    File names are parsed with ``pattern`` (default
    ``config.batch.filename_pattern``: ``"auto"``, a preset or a regex, see
    :mod:`sabgal.plate`); OME-TIFF ``Plate/Well/WellSample`` metadata fills in
    for ``*.ome.tif`` files and for TIFFs whose names give no well.

    Returns
    -------
    DataFrame
        One row per image set (same order): ``image``, ``plate``, ``well``,
        ``row``, ``column``, ``field``, ``channel``, ``condition``, ``dose``,
        ``replicate``, ``role`` and any extra plate-map columns.

    Raises
    ------
    InputError
        With one line naming the file: bad pattern, a name the explicit
        pattern does not match, an impossible well, a plate map that is
        unreadable or that does not list an image's well.
    """
    pattern = pattern or config.batch.filename_pattern
    images = [s.image for s in sets]
    try:
        if pattern == "auto":
            name, _ = splate.choose_preset(images)
            rx = splate.compile_pattern(name) if name else None
        else:
            rx = splate.compile_pattern(pattern)
        ome: dict[str, dict[str, Any]] = {}
        for s in sets:
            lower = s.image.lower()
            if not lower.endswith((".tif", ".tiff")):
                continue
            named = rx is not None and splate.parse_filename(s.image, rx) is not None
            if named and not lower.endswith((".ome.tif", ".ome.tiff")):
                continue
            xml = _read_ome_xml(s.path)
            if xml:
                found = splate.parse_ome_plate(xml)
                if found:
                    ome[s.image] = found
        meta, used = splate.filename_metadata(images, pattern, ome=ome)
        pm = None
        if isinstance(platemap, pd.DataFrame):
            pm = platemap
        elif platemap is not None:
            pm = splate.read_platemap(platemap)
        meta = splate.join_platemap(meta, pm)
    except splate.MetadataError as exc:
        raise InputError(str(exc)) from None
    meta.attrs["filename_pattern"] = used
    return meta


def _metadata_path(out: Path) -> Path:
    return out / STATE_DIR / "metadata.csv"


def _load_metadata(sets: list[ImageSet], config: Config, out: Path) -> pd.DataFrame:
    """Metadata saved by the run, or file-name metadata alone when there is none."""
    p = _metadata_path(out)
    if p.exists():
        try:
            table = splate.coerce_metadata(pd.read_csv(p, dtype=str, keep_default_na=False))
            if set(s.image for s in sets) <= set(table["image"]):
                return table.set_index("image").loc[[s.image for s in sets]].reset_index()
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
            log.warning("%s: unreadable (%s); metadata re-derived from file names", p, exc)
    return collect_metadata(sets, config)


# --- flat fields ------------------------------------------------------------------------
def _median_flat(paths: list[str]) -> np.ndarray:
    """Pixel-wise median of blank images (rejects debris present in a minority).

    Medians are taken on block means (block = shortest side / 256 px) and
    expanded back, so memory stays at one full-size image plus small copies;
    :func:`sabgal.illumination.lamp_from_blank` smooths far coarser anyway.
    """
    from sabgal.illumination import block_reduce_mean

    small, shape, factor = [], None, 1
    for p in paths:
        try:
            img = sio.read_rgb(p).pixels
        except sio.ImageReadError as exc:
            raise InputError(f"flat field: {exc}") from None
        if shape is None:
            shape = img.shape
            factor = max(1, min(shape[:2]) // 256)
        elif img.shape != shape:
            raise InputError(f"{p}: blank image is {img.shape[0]}x{img.shape[1]}, "
                             f"the first blank {shape[0]}x{shape[1]}; flat fields need one size")
        small.append(block_reduce_mean(img, factor))
    med = np.median(np.stack(small), axis=0).astype(np.float32)
    full = np.repeat(np.repeat(med, factor, axis=0), factor, axis=1)
    pad = ((0, shape[0] - full.shape[0]), (0, shape[1] - full.shape[1]), (0, 0))
    return np.pad(full, pad, mode="edge")


def _save_flat(out: Path, name: str, flat: np.ndarray) -> FlatFieldRef:
    digest = hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()[:16]
    path = out / STATE_DIR / "flat_field" / f"{image_key(name) or 'all'}.npy"
    with sio.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, flat)
    return FlatFieldRef(str(path.resolve()), digest)


def prepare_flat_fields(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
                        metadata: pd.DataFrame | None = None,
                        flat_field: np.ndarray | None = None) -> dict[str, FlatFieldRef]:
    """The flat field of every image (key -> reference), saved in ``DIR/.sabgal/flat_field/``.

    With ``illumination.method = "flat_field"``, ``illumination.flat_field_path``
    is a blank image, a folder of blank images (their median), or ``"blanks"``:
    per plate, the median of the images of the plate's ``role = blank`` wells.
    An explicit ``flat_field`` array applies to every image. Otherwise no image
    has one (empty dict).

    Raises
    ------
    InputError
        When the blank images are missing, unreadable or of different sizes,
        or ``"blanks"`` is asked for without blank wells on a plate.
    """
    out = Path(out_dir)
    if flat_field is not None:
        ref = _save_flat(out, "given", np.asarray(flat_field, dtype=np.float32))
        return {s.key: ref for s in sets}
    ill = config.illumination
    if ill.method != "flat_field":
        return {}
    src = str(ill.flat_field_path)
    if src == BLANKS:
        if metadata is None or "role" not in metadata or not (metadata["role"] == "blank").any():
            raise InputError("flat field 'blanks' needs a plate map with role = blank wells (--platemap)")
        by_image = {s.image: s for s in sets}
        refs: dict[str, FlatFieldRef] = {}
        for plate_name, rows in metadata.groupby("plate", sort=False):
            blanks = [by_image[i].path for i in rows.loc[rows["role"] == "blank", "image"]]
            if not blanks:
                raise InputError(f"plate {plate_name!r}: no image in a blank well, so no flat field for it "
                                 "(flat field 'blanks')")
            log.info("plate %r: flat field = median of %d blank image(s)", plate_name, len(blanks))
            ref = _save_flat(out, f"plate_{plate_name}", _median_flat(blanks))
            for i in rows["image"]:
                refs[by_image[i].key] = ref
        return refs
    p = Path(src)
    if p.is_dir():
        paths = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in sio.IMAGE_EXTENSIONS)
        if not paths:
            raise InputError(f"{p}: flat-field folder holds no images")
    elif p.is_file():
        paths = [str(p)]
    else:
        raise InputError(f"{p}: flat-field image not found (a blank image, a folder of them, or 'blanks')")
    ref = _save_flat(out, "flat_field", _median_flat(paths))
    return {s.key: ref for s in sets}


@functools.lru_cache(maxsize=4)
def _load_flat(path: str, digest: str) -> np.ndarray:
    return sio.load_array(path)


# --- per-image work ---------------------------------------------------------------------
def config_digest(config: Config) -> str:
    """Short hash of the analysis-relevant config (batch execution settings excluded)."""
    d = config_to_dict(config)
    d.pop("batch", None)
    d.pop("qc", None)
    d.pop("classify", None)  # calls are re-made at rebuild; measurements do not depend on them
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _file_signature(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def state_paths(out_dir: Path, key: str) -> tuple[Path, Path]:
    """An image's record and measurements under ``DIR/.sabgal/``."""
    state = out_dir / STATE_DIR
    return state / f"{key}.json", state / f"{key}.cells.npz"


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)


def process_image(image_set: ImageSet, config_dict: dict[str, Any], out_dir: str,
                  flat_field: np.ndarray | FlatFieldRef | None = None,
                  nucleus_hint_px: float | None = None) -> dict[str, Any]:
    """Analyse one image set and commit its result; never raises for bad input.
    ``nucleus_hint_px``: the plate's nucleus size (:func:`refine_nucleus_sizes`).

    Returns the per-image record (also written to ``DIR/.sabgal/<key>.json``).
    Runs in worker processes (local pool or Dask): takes only picklable
    arguments; a :class:`FlatFieldRef` is loaded (and cached) in the worker.
    """
    from sabgal import overlay as _overlay
    from sabgal.pipeline import analyze_image

    config = config_from_dict(config_dict)
    out = Path(out_dir)
    t0 = time.perf_counter()
    c0 = time.process_time()
    record: dict[str, Any] = {
        "image": image_set.image,
        "key": image_set.key,
        "path": image_set.path,
        "nuclear_image": image_set.companion,
        "config_digest": config_digest(config),
        "flat_field_digest": flat_field.digest if isinstance(flat_field, FlatFieldRef) else None,
        "sabgal_version": __version__,
    }
    try:
        record["source"] = _file_signature(image_set.path)
        img = sio.read_rgb(image_set.path)
        nuclear = None
        if image_set.companion:
            nuc = sio.read_nuclear(image_set.companion)
            if nuc.pixels.shape != img.pixels.shape[:2]:
                raise sio.ImageReadError(
                    f"{image_set.companion}: nuclear image is {nuc.pixels.shape[0]}x{nuc.pixels.shape[1]}, "
                    f"its RGB image {img.pixels.shape[0]}x{img.pixels.shape[1]}")
            nuclear = nuc.pixels
        flat = _load_flat(flat_field.path, flat_field.digest) if isinstance(flat_field, FlatFieldRef) else flat_field
        res = analyze_image(img.pixels, nuclear=nuclear, config=config,
                            pixel_size_um=img.pixel_size_um, flat_field=flat, classify_cells=False,
                            nucleus_hint_px=nucleus_hint_px, encoding=img.encoding)
        info = res.info
        info["qc"]["saturated_fraction"] = img.saturated_fraction
        info["bit_depth"] = img.bit_depth
        info["lossy_compression"] = img.lossy
        state_json, state_cells = state_paths(out, image_set.key)
        if config.batch.write_labels:
            sio.write_labels(out / "labels" / f"{image_set.key}_cells.tif", res.cell_labels)
            sio.write_labels(out / "labels" / f"{image_set.key}_nuclei.tif", res.nucleus_labels)
        sio.write_columns(state_cells, res.cells)
        if config.batch.overlays:
            _overlay.save_overlay_base(_overlay.base_path(out / STATE_DIR, image_set.key), img.pixels,
                                       res.cell_labels, res.nucleus_labels, max_px=config.qc.overlay_max_px)
        record.update(status="ok", error="", info=info)
    except sio.ImageReadError as exc:
        record.update(status="error", error=str(exc), info={})
    except (ValueError, MemoryError) as exc:
        record.update(status="error", error=f"{image_set.path}: {type(exc).__name__}: {exc}", info={})
    except Exception as exc:  # keep the batch going; the message names the file
        log.debug("unexpected failure on %s\n%s", image_set.path, traceback.format_exc())
        record.update(status="error",
                      error=f"{image_set.path}: internal error {type(exc).__name__}: {exc}", info={})
    record["elapsed_s"] = round(time.perf_counter() - t0, 4)
    record["cpu_s"] = round(time.process_time() - c0, 4)  # < elapsed_s when the CPU is shared
    record["peak_rss_mb"] = _peak_rss_mb()
    state_json, _ = state_paths(out, image_set.key)
    sio.write_json(state_json, record)
    return record


def _read_record(state_json: Path) -> dict[str, Any] | None:
    """A finished image's record (``DIR/.sabgal/<key>.json``), or None where
    there is none or it cannot be read (an interrupted write never leaves a
    partial one: :func:`sabgal.io.atomic_path`)."""
    try:
        rec = json.loads(state_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # (json.JSONDecodeError is a ValueError)
        return None
    return rec if isinstance(rec, dict) else None


def _is_done(out_dir: Path, s: ImageSet, digest: str, flat_digest: str | None) -> bool:
    state_json, state_cells = state_paths(out_dir, s.key)
    rec = _read_record(state_json)
    if rec is None:
        return False
    if rec.get("status") != "ok" or rec.get("config_digest") != digest:
        return False
    if rec.get("flat_field_digest") != flat_digest:
        return False
    try:
        if rec.get("source") != _file_signature(s.path):
            return False
    except OSError:
        return False
    return state_cells.exists()


def pending_images(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
                   force: bool = False, flat_fields: dict[str, FlatFieldRef] | None = None
                   ) -> tuple[list[ImageSet], list[ImageSet]]:
    """Split image sets into (finished, to do): finished ones have a record for
    the same file, config and flat field (never, with ``force``)."""
    out = Path(out_dir)
    digest = config_digest(config)
    flat_fields = flat_fields or {}
    done, todo = [], []
    for s in sets:
        ref = flat_fields.get(s.key)
        if not force and _is_done(out, s, digest, ref.digest if ref else None):
            done.append(s)
        else:
            todo.append(s)
    return done, todo


def _absolute(s: ImageSet) -> ImageSet:
    # Workers (other processes, other machines) must not depend on our cwd.
    return dataclasses.replace(s, path=os.path.abspath(s.path),
                               companion=os.path.abspath(s.companion) if s.companion else None)


def _died(s: ImageSet, out: Path, why: str) -> dict[str, Any]:
    rec = {"image": s.image, "key": s.key, "path": s.path, "nuclear_image": s.companion,
           "status": "error", "info": {}, "error": f"{s.path}: {why}"}
    sio.write_json(state_paths(out, s.key)[0], rec)
    return rec


def _default_pool(n: int) -> ProcessPoolExecutor:
    # fork is fast and needs no `if __name__ == "__main__"` guard in user
    # scripts, but forking a process that runs threads (a Dask client, a
    # notebook kernel) can deadlock: then workers come from a forkserver.
    # Either way the workers start with the pipeline already imported.
    import threading

    import sabgal.pipeline  # noqa: F401  (imported once here, inherited by forked workers)

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        ctx = multiprocessing.get_context("fork")
    elif "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sabgal.pipeline"])
    else:  # Windows, macOS defaults: spawn
        ctx = multiprocessing.get_context()
    return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=single_threaded_libraries)


class _ThreadPool(ThreadPoolExecutor):
    """Worker threads of this process, with one BLAS thread each while the pool lives.

    The heavy work (numpy, scipy.ndimage, OpenCV, zlib) releases the GIL: two
    threads run 1024x1360 images 1.8-1.9x as fast as one (benchmarks/speed.py),
    with one copy of the libraries in memory. The caller's BLAS thread limits
    are put back once every worker has stopped (never while one may still be
    inside a BLAS call).
    """

    def __init__(self, n: int):
        import sabgal.pipeline  # noqa: F401  (loaded once, before the threads start)

        super().__init__(max_workers=n, thread_name_prefix="sabgal-worker")
        self._limits = single_threaded_libraries()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait and self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None


def single_threaded_libraries() -> Any:
    """One BLAS thread in this process (each worker is one thread; OpenCV is
    set to one thread when :mod:`sabgal.filters` loads).

    ``sabgal run`` sets ``OPENBLAS_NUM_THREADS=1`` (and friends) before numpy
    loads; when a caller imported numpy first, threadpoolctl (if installed)
    limits the already-loaded libraries instead. Returns the threadpoolctl
    limiter (its ``restore_original_limits()`` undoes the change), or None.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1)


def _run_pool(todo: list[ImageSet], cfg: dict[str, Any], out: Path, refs: dict[str, FlatFieldRef],
              workers: int, factory: Callable[[int], Any]) -> Iterator[dict[str, Any]]:
    """Worker pool (processes, or threads) with at most 2 tasks per worker in flight (bounded memory).

    When a worker dies (out of memory, a crash in a C library) every image in
    flight is retried alone in a fresh one-worker pool; the one that kills it
    again is recorded as failed, the others finish normally.
    """
    queue = deque(todo)
    suspects: deque[ImageSet] = deque()
    while queue or suspects:
        if suspects:
            s = suspects.popleft()
            try:
                with factory(1) as ex:
                    rec = ex.submit(process_image, s, cfg, str(out), refs.get(s.key)).result()
            except BrokenProcessPool:
                rec = _died(s, out, "worker process died while analysing this image (out of memory?)")
            yield rec
            continue
        in_flight: dict[Any, ImageSet] = {}
        current: ImageSet | None = None
        ex = factory(workers)
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:
                    s = queue.popleft()
                    in_flight[ex.submit(process_image, s, cfg, str(out), refs.get(s.key))] = s
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    current = in_flight.pop(fut)
                    rec = fut.result()
                    current = None
                    yield rec
            ex.shutdown(wait=True)
        except BrokenProcessPool:
            ex.shutdown(wait=False, cancel_futures=True)
            if current is not None:
                suspects.append(current)
            for fut, s in in_flight.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    yield fut.result()
                else:
                    suspects.append(s)
            log.warning("a worker process died; retrying %d image(s) one at a time", len(suspects))
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def _dask_client(scheduler: Any) -> tuple[Any, bool]:
    try:
        from distributed import Client
    except ImportError:
        raise InputError("a Dask scheduler was given but dask.distributed is not installed "
                         "(pip install 'sabgal[dask]')") from None
    if isinstance(scheduler, str):
        try:
            return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT), True
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler {scheduler}: {exc}") from None
    return scheduler, False


def _run_dask(todo: list[ImageSet], cfg: dict[str, Any], out: Path, refs: dict[str, FlatFieldRef],
              scheduler: Any) -> Iterator[dict[str, Any]]:
    """The same per-image function on a Dask cluster; at most 2 tasks per worker thread in flight.

    Workers must see the input and output folders at the same paths (a shared
    file system) and have sabgal installed.
    """
    from distributed import as_completed

    client, owned = _dask_client(scheduler)
    try:
        nthreads = max(1, sum(client.nthreads().values()))
        limit = max(2, 2 * nthreads)
        queue = deque(todo)
        futures: dict[Any, ImageSet] = {}
        ac = as_completed()

        def submit(s: ImageSet) -> None:
            fut = client.submit(process_image, s, cfg, str(out), refs.get(s.key), pure=False,
                                key=f"sabgal-{s.key}-{os.urandom(4).hex()}")
            futures[fut] = s
            ac.add(fut)

        while queue and len(futures) < limit:
            submit(queue.popleft())
        for fut in ac:
            s = futures.pop(fut)
            try:
                rec = fut.result()
            except Exception as exc:  # KilledWorker, lost connection...: record and go on
                rec = _died(s, out, f"Dask task failed: {type(exc).__name__}: {exc}")
            yield rec
            if queue:
                submit(queue.popleft())
    finally:
        if owned:
            client.close()


def run_batch(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
              workers: int = 1, force: bool = False, flat_field: np.ndarray | None = None,
              executor_factory: Callable[[int], Any] | None = None,
              metadata: pd.DataFrame | None = None,
              flat_fields: dict[str, FlatFieldRef] | None = None,
              dask_scheduler: Any = None) -> Iterator[dict[str, Any]]:
    """Process image sets, yielding each record as it is committed.

    Parameters
    ----------
    sets : list of ImageSet
    config : Config
    out_dir : path
    workers : int
        Local workers (1 = in this process): processes, or threads of this
        process with ``config.batch.executor = "threads"``. Ignored with Dask.
    force : bool
        Redo finished images (otherwise they are yielded with ``skipped=True``).
    flat_field : (M, N, 3) ndarray, optional
        A blank image for every image (else from the config, see
        :func:`prepare_flat_fields`).
    executor_factory : callable, optional
        ``n -> concurrent.futures.Executor`` replacing the process (or thread) pool.
    metadata : DataFrame, optional
        From :func:`collect_metadata`; needed for per-plate flat fields.
    flat_fields : dict, optional
        From :func:`prepare_flat_fields`, when already made.
    dask_scheduler : str or distributed.Client, optional
        Run on a Dask cluster (default ``config.batch.dask_scheduler``).

    Yields
    ------
    dict
        Per-image records (see :func:`process_image`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = flat_fields if flat_fields is not None else prepare_flat_fields(
        sets, config, out, metadata=metadata, flat_field=flat_field)
    done, todo = pending_images(sets, config, out, force=force, flat_fields=refs)
    for s in done:
        yield {"image": s.image, "key": s.key, "status": "ok", "skipped": True}
    if not todo:
        return
    cfg = config_to_dict(config)
    todo = [_absolute(s) for s in todo]
    scheduler = dask_scheduler if dask_scheduler is not None else config.batch.dask_scheduler
    if scheduler:
        yield from _run_dask(todo, cfg, out, refs, scheduler)
    elif workers <= 1 and executor_factory is None:
        for s in todo:
            yield process_image(s, cfg, str(out), refs.get(s.key))
    else:
        default = _ThreadPool if config.batch.executor == "threads" else _default_pool
        yield from _run_pool(todo, cfg, out, refs, workers, executor_factory or default)


# Nucleus sizes a plain-brightfield field may take from its plate: those its
# stained cells' nuclear holes checked (pipeline.brightfield_nucleus_size).
CHECKED_NUCLEUS_SOURCES = ("blobs_checked", "blobs_checked_at_scale", "blobs_corrected", "holes")
# (sizes no stained cell's hole checked: the plate's size may replace them)
UNCHECKED_NUCLEUS_SOURCES = ("blobs_unchecked", "blobs_within_cells", "blobs_around_nucleoli")
# A plate's nucleus size is the median of at least this many checked fields ...
MIN_CHECKED_FIELDS = 3
# ... whose sizes agree: interquartile range at most this fraction of the
# median. One magnification gives nuclei within ~1.35x in diameter (normal to
# senescent); a folder of fields taken at several magnifications, or rendered
# at random ones, spreads far wider and has no one size to lend.
PLATE_NUCLEUS_MAX_SPREAD = 0.25
# A plate with fewer checked fields than that (all negative controls: no
# stained cell, no hole) takes its size from its unchecked fields instead,
# when at least this many agree as closely: the median of many fields at one
# magnification is right where a few of them settled on another scale (whole
# cells, nucleoli).
MIN_CONSENSUS_FIELDS = 5


def plate_nucleus_hints(records: pd.DataFrame) -> dict[str, float]:
    """Per image key, the nucleus diameter (px) of its plate, for the
    plain-brightfield fields whose own size nothing checked and lies outside
    ``pipeline.PLATE_NUCLEUS_RANGE`` of it.

    ``records``: one row per finished image, columns ``key``, ``plate``,
    ``nucleus_diameter_px`` and ``nucleus_size_source``. A plate's size is
    the median over its fields whose size the stained cells' holes checked
    (:data:`CHECKED_NUCLEUS_SOURCES`, at least :data:`MIN_CHECKED_FIELDS`,
    their interquartile range at most :data:`PLATE_NUCLEUS_MAX_SPREAD` of
    it): the magnification is the same in every well, and a field with few
    stained cells (a negative control) has no holes of its own. A plate with
    fewer checked fields (negative controls only) takes the median over its
    unchecked fields instead, when at least :data:`MIN_CONSENSUS_FIELDS`
    of them agree as closely. Images with no plate in their names or plate
    map form one group, held to the same agreement.

    >>> r = pd.DataFrame({"key": list("abcde"), "plate": [""] * 5,
    ...                   "nucleus_diameter_px": [16.0, 17.0, 15.0, 7.0, 16.5],
    ...                   "nucleus_size_source": ["holes", "blobs_checked", "blobs_checked",
    ...                                           "blobs_unchecked", "blobs_unchecked"]})
    >>> plate_nucleus_hints(r)
    {'d': 16.0}
    >>> negatives = pd.DataFrame({"key": list("abcdef"), "plate": [""] * 6,
    ...                           "nucleus_size_source": ["blobs_unchecked"] * 6,
    ...                           "nucleus_diameter_px": [16.0, 17.0, 15.0, 37.0, 16.5, 15.5]})
    >>> plate_nucleus_hints(negatives)  # (a field that settled on whole cells)
    {'d': 16.25}
    """
    from sabgal.pipeline import PLATE_NUCLEUS_RANGE

    hints: dict[str, float] = {}
    if not len(records):
        return hints
    lo, hi = PLATE_NUCLEUS_RANGE
    for _, grp in records.groupby("plate", sort=False, dropna=False):
        d = pd.to_numeric(grp["nucleus_diameter_px"], errors="coerce")
        unchecked = grp["nucleus_size_source"].isin(UNCHECKED_NUCLEUS_SOURCES)
        checked = d[grp["nucleus_size_source"].isin(CHECKED_NUCLEUS_SOURCES) & d.notna()]
        if len(checked) < MIN_CHECKED_FIELDS:
            # (negative controls only: the unchecked fields' own consensus)
            checked = d[unchecked & d.notna()]
            if len(checked) < MIN_CONSENSUS_FIELDS:
                continue
        ref = float(np.median(checked))
        q25, q75 = np.percentile(checked, [25, 75])
        if q75 - q25 > PLATE_NUCLEUS_MAX_SPREAD * ref:
            continue
        off = unchecked & ~d.between(lo * ref, hi * ref)
        hints.update((k, ref) for k in grp.loc[off, "key"])
    return hints


def refine_nucleus_sizes(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
                         metadata: pd.DataFrame | None = None, workers: int = 1,
                         flat_fields: dict[str, FlatFieldRef] | None = None) -> list[dict[str, Any]]:
    """Analyse again, with their plate's nucleus size, the plain-brightfield
    fields whose own size nothing checked and that disagree with it
    (:func:`plate_nucleus_hints`); ``sabgal run`` calls it after the images'
    first pass. Returns the new records. Their config digest is the run's,
    so a resumed run counts them as finished. A field whose second analysis
    fails is analysed again as before (its finished result is never lost)."""
    out = Path(out_dir)
    plates: dict[str, str] = {}
    if metadata is not None and {"image", "plate"} <= set(metadata.columns):
        plates = dict(zip(metadata["image"], metadata["plate"].astype(str)))
    rows = []
    for s in sets:
        rec = _read_record(state_paths(out, s.key)[0])
        if rec is None:
            continue
        info = rec.get("info") or {}
        if rec.get("status") != "ok" or info.get("setup") != "brightfield":
            continue
        rows.append({"key": s.key, "plate": plates.get(s.image, ""),
                     "nucleus_diameter_px": info.get("nucleus_diameter_px"),
                     "nucleus_size_source": info.get("nucleus_size_source", "")})
    hints = plate_nucleus_hints(pd.DataFrame(rows))
    todo = [_absolute(s) for s in sets if s.key in hints]
    if not todo:
        return []
    cfg = config_to_dict(config)
    refs = flat_fields or {}

    def one(s: ImageSet) -> dict[str, Any]:
        rec = process_image(s, cfg, str(out), refs.get(s.key), nucleus_hint_px=hints[s.key])
        return rec if rec.get("status") == "ok" else process_image(s, cfg, str(out), refs.get(s.key))

    if workers <= 1:
        return [one(s) for s in todo]
    with _ThreadPool(min(workers, len(todo))) as pool:
        return list(pool.map(one, todo))


# --- calibration and tables ---------------------------------------------------------------
def _min_control_cells(percentile: float) -> int:
    return max(MIN_CONTROL_CELLS, math.ceil(2.0 / (1.0 - percentile / 100.0)))


def plate_thresholds(cells: pd.DataFrame, config: Config) -> dict[str, tuple[classify.Thresholds, dict[str, Any]]]:
    """Thresholds per plate, calibrated on negative-control wells where possible.

    Parameters
    ----------
    cells : DataFrame
        Unclassified cells with ``plate`` and ``role`` columns.
    config : Config
        ``classify`` settings, ``batch.calibrate_from_controls`` and
        ``batch.control_percentile``.

    Returns
    -------
    dict
        plate -> (thresholds, details). With calibration on and at least
        ``max(20, 2 / (1 - q))`` negative-control cells on the plate, the
        positivity threshold is the ``control_percentile`` percentile of the
        control cells' ``positive_measure`` (never below
        ``min_positive_threshold``), and the enlarged threshold is
        ``enlarged_factor`` x the median area (px) of the control cells that
        are negative at that threshold (>= 8 such cells). Otherwise the plate
        falls back to :func:`sabgal.classify.learn_thresholds` on its own
        cells (a fixed config value, or learnt).
    """
    cc = config.classify
    q = config.batch.control_percentile
    need = _min_control_cells(q)
    out: dict[str, tuple[classify.Thresholds, dict[str, Any]]] = {}
    plates = cells["plate"] if "plate" in cells else pd.Series([""] * len(cells), index=cells.index)
    groups = dict(tuple(cells.groupby(plates, sort=False))) if len(cells) else {}
    for plate_name in (list(groups) or [""]):
        pc = groups.get(plate_name, cells.iloc[:0])
        th = classify.learn_thresholds(pc, cc)
        details: dict[str, Any] = {"n_control_cells": 0}
        ctrl = pc[pc["role"] == "negative_control"] if "role" in pc else pc.iloc[:0]
        if cc.exclude_border_cells and len(ctrl):
            ctrl = ctrl[~ctrl["touches_border"].astype(bool)]
        details["n_control_cells"] = int(len(ctrl))
        if config.batch.calibrate_from_controls and len(ctrl):
            scores = ctrl[cc.positive_measure].to_numpy(dtype=np.float64)
            scores = scores[np.isfinite(scores)]
            if scores.size >= need:
                t = max(float(np.percentile(scores, q)), cc.min_positive_threshold)
                th = dataclasses.replace(th, positive=t, positive_source="controls")
                neg = ctrl[(np.nan_to_num(ctrl[cc.positive_measure].to_numpy(dtype=np.float64)) <= t)
                           & ~ctrl["touches_border"].astype(bool)]
                if len(neg) >= MIN_CONTROL_NEGATIVE_CELLS:
                    ref = float(np.median(neg["area_px"].to_numpy(dtype=np.float64)))
                    th = dataclasses.replace(th, enlarged_area_px=cc.enlarged_factor * ref, enlarged_area_um2=None,
                                             enlarged_source="controls (median area of negative-control cells)")
                    details["control_median_area_px"] = ref
            else:
                log.warning("plate %r: %d negative-control cell(s), fewer than the %d needed to calibrate "
                            "on the %gth percentile; using %s thresholds", plate_name, scores.size, need, q,
                            th.positive_source)
        out[str(plate_name)] = (th, details)
    return out


def _flatten_record(rec: dict[str, Any]) -> dict[str, Any]:
    info = rec.get("info") or {}
    row: dict[str, Any] = {
        "image": rec["image"],
        "status": rec.get("status", "error"),
        "error": rec.get("error", ""),
        "nuclear_image": rec.get("nuclear_image") or "",
        "setup": info.get("setup", ""),
        "counterstain": info.get("counterstain", ""),
        "pixel_size_um": info.get("pixel_size_um"),
        "height_px": info.get("height_px"),
        "width_px": info.get("width_px"),
        "bit_depth": info.get("bit_depth"),
        "pixel_encoding": info.get("pixel_encoding", ""),
        "nucleus_diameter_px": info.get("nucleus_diameter_px"),
        "nucleus_size_source": info.get("nucleus_size_source", ""),
        "nucleus_size_hint_px": info.get("nucleus_size_hint_px"),
        "xgal_vector_r": (info.get("xgal_vector") or [None] * 3)[0],
        "xgal_vector_g": (info.get("xgal_vector") or [None] * 3)[1],
        "xgal_vector_b": (info.get("xgal_vector") or [None] * 3)[2],
        "xgal_angle_from_reference_deg": info.get("xgal_angle_from_reference_deg"),
        "xgal_background_od": info.get("xgal_background_od"),
        "stain_condition_number": info.get("stain_condition_number"),
        "illumination_nonuniformity": info.get("illumination_nonuniformity"),
        "lamp_method": info.get("lamp_method", ""),
        "jpeg_chroma_smoothed": info.get("jpeg_chroma_smoothed"),
        "background_fraction": info.get("background_fraction"),
        "warnings": "; ".join(info.get("warnings", [])),
        "elapsed_s": rec.get("elapsed_s"),
    }
    for k, v in (info.get("qc") or {}).items():
        row[f"qc_{k}"] = v
    return row


_TABLES = ("images", "cells", "wells", "conditions", "cellprofiler/Image", "cellprofiler/Cells")


def _write_tables(out: Path, tables: dict[str, pd.DataFrame], formats: tuple[str, ...]) -> None:
    ext = {"csv": ".csv", "parquet": ".parquet"}
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("--format parquet needs pyarrow (pip install 'sabgal[parquet]')") from None
    for name, table in tables.items():
        for fmt, suffix in ext.items():
            path = out / f"{name}{suffix}"
            if fmt in formats:
                sio.write_table(path, table)
            elif path.exists():
                path.unlink()  # a stale table from an earlier run in the other format


def rebuild_tables(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
                   run_info: dict[str, Any] | None = None, metadata: pd.DataFrame | None = None,
                   formats: Iterable[OutputFormat] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild every table and ``run.json`` from the per-image results.

    Per plate, thresholds come from :func:`plate_thresholds`; every cell is
    classified, ``corrections.csv`` is applied, and ``images``, ``cells``,
    ``wells``, ``conditions`` and the CellProfiler-shaped ``cellprofiler/Image``
    and ``cellprofiler/Cells`` tables are written in ``formats`` (CSV and/or
    Parquet; default: as the last run, else CSV).

    Parameters
    ----------
    metadata : DataFrame, optional
        From :func:`collect_metadata`; saved to ``DIR/.sabgal/metadata.csv``.
        Without it the saved one is used, else file-name metadata alone.

    Returns
    -------
    images, cells : DataFrame
    """
    from sabgal import overlay as _overlay, qc as _qc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if metadata is None:
        metadata = _load_metadata(sets, config, out)
    else:
        sio.write_table(_metadata_path(out), metadata)
    if formats is None:
        formats = tuple((run_info or {}).get("output_formats") or ("csv",))
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in ("csv", "parquet")]
    if bad or not formats:
        raise InputError(f"output format must be 'csv' and/or 'parquet', got {list(formats)}")
    meta = metadata.set_index("image")
    meta_cols = [c for c in metadata.columns if c != "image"]

    records, tables = [], []
    for s in sets:
        state_json, state_cells = state_paths(out, s.key)
        rec = _read_record(state_json)
        if rec is None:
            rec = {"image": s.image, "status": "error", "error": f"{s.path}: no result (not processed)"}
        rec["image"] = s.image
        if rec.get("status") == "ok":
            try:
                t = sio.read_columns(state_cells)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                rec.update(status="error", error=f"{s.path}: per-image result unreadable: {exc}")
                t = None
            if t is not None:
                t = t.astype({k: v for k, v in CELL_COLUMNS.items() if k in t})
                t.insert(0, "image", s.image)
                tables.append(t)
        records.append(rec)
    cells = (pd.concat(tables, ignore_index=True) if tables
             else empty_cells_table().assign(image=pd.Series(dtype="str")))
    cells_meta = meta.reindex(cells["image"]).reset_index(drop=True)
    cells = pd.concat([cells[["image"]], cells_meta, cells.drop(columns=["image"])], axis=1)

    cc = config.classify
    by_plate = plate_thresholds(cells, config)
    parts = []
    per_image: dict[str, tuple[float, str]] = {}
    # (per image, the area its enlarged calls were made against, as they
    # were made: before any reviewer's corrections)
    references: dict[str, float] = {}
    for plate_name, idx in (cells.groupby("plate", sort=False).indices.items() if len(cells) else []):
        th = by_plate[str(plate_name)][0]
        if cc.positive_threshold == "auto" and th.positive_source != "controls" and cc.threshold_scope == "image":
            per_image.update(classify.image_thresholds(cells.iloc[idx], cc, th.positive))
        part = classify.classify_cells(cells.iloc[idx], th, rule=cc.senescent_rule, per_image=per_image)
        ref = classify.enlarged_reference(part, part["sabgal_positive"].to_numpy(dtype=bool), th)
        if ref is not None:
            references.update(zip(part["image"], ref))
        parts.append(part)
    if parts:
        cells = pd.concat(parts).sort_index()
    else:
        cells = classify.classify_cells(cells, by_plate[""][0], rule=cc.senescent_rule)
    cells = apply_corrections(cells, load_corrections(out / "corrections.csv"), rule=cc.senescent_rule)
    cols = ["image", *meta_cols, *CELL_COLUMNS, "sabgal_positive", "enlarged", "senescent", "corrected"]
    cells = cells[cols].reset_index(drop=True)

    rows = []
    by_image = dict(tuple(cells.groupby("image", sort=False))) if len(cells) else {}
    for rec in records:
        row = _flatten_record(rec)
        if row["status"] == "ok":
            summ = classify.summarize(by_image.get(rec["image"], cells.iloc[:0]),
                                      exclude_border=cc.exclude_border_cells)
        else:
            summ = {c: (0 if c.startswith("n_") else float("nan")) for c in classify.SUMMARY_COLUMNS}
        row.update(summ)
        plate_name = str(meta.at[rec["image"], "plate"]) if rec["image"] in meta.index else ""
        th = by_plate.get(plate_name, next(iter(by_plate.values())))[0]
        t_img, src_img = per_image.get(rec["image"], (th.positive, "set"))
        row["positive_threshold_od"] = t_img
        row["positive_threshold_source"] = th.positive_source if src_img == "set" else src_img
        row["enlarged_threshold_px"] = th.enlarged_area_px
        row["enlarged_threshold_source"] = th.enlarged_source
        # (shown so a reader can check it against the image's normal cells)
        row["enlarged_reference_area_px"] = references.get(rec["image"], float("nan"))
        rows.append(row)
    images = pd.DataFrame(rows)
    lead = ["image", *meta_cols, *classify.SUMMARY_COLUMNS, "status", "error"]
    if len(images):
        images = pd.concat([images[["image"]], meta.reindex(images["image"]).reset_index(drop=True),
                            images.drop(columns=["image"])], axis=1)
        images = images[lead + [c for c in images.columns if c not in lead]]
    else:
        images = pd.DataFrame({c: pd.Series(dtype="object") for c in lead})
    images = _qc.add_qc_columns(images, config.qc)

    wells = summaries.summarize_wells(images, cells[~cells["touches_border"].astype(bool)]
                                      if cc.exclude_border_cells else cells)
    conditions = summaries.summarize_conditions(wells)
    cp_image, cp_cells = summaries.cellprofiler_tables(images, cells)
    _write_tables(out, {"images": images, "cells": cells, "wells": wells, "conditions": conditions,
                        "cellprofiler/Image": cp_image, "cellprofiler/Cells": cp_cells}, formats)
    if config.batch.overlays:
        _overlay.write_overlays(out, sets, images, cells, state_dir=STATE_DIR,
                                workers=config.batch.workers or os.cpu_count() or 1)

    first = next(iter(by_plate.values()))[0]
    run: dict[str, Any] = dict(run_info or {})
    run.update({
        "sabgal_version": __version__,
        "config": config_to_dict(config),
        "thresholds": first.to_dict(),
        "thresholds_by_plate": {p: {**th.to_dict(), **d} for p, (th, d) in by_plate.items()},
        "filename_pattern": metadata.attrs.get("filename_pattern", run.get("filename_pattern")),
        "output_formats": list(formats),
        "inputs": [{"image": s.image, "path": s.path, "nuclear_image": s.companion} for s in sets],
        "n_images": len(sets),
        "n_failed": int((images["status"] != "ok").sum()) if len(images) else 0,
    })
    sio.write_json(out / "run.json", run)
    return images, cells
