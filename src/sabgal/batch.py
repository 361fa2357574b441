"""Batch runs: discover images, analyse each (in parallel), commit each result
atomically, then rebuild the run's tables from the per-image results.

Layout of an output folder::

    DIR/images.csv  DIR/cells.csv  DIR/run.json
    DIR/labels/<key>_cells.tif  DIR/labels/<key>_nuclei.tif
    DIR/.sabgal/<key>.cells.csv   per-image measurements (no calls)
    DIR/.sabgal/<key>.json        per-image record, written last: its presence
                                  means the image is finished

A rerun skips images whose record matches the same input file and config
(``force=True`` redoes them), so a crash or Ctrl-C loses nothing but the
images in flight. Calls (positive / enlarged / senescent) are made when the
tables are rebuilt, with thresholds learnt from the whole set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sabgal import __version__, classify
from sabgal import io as sio
from sabgal.config import Config, config_from_dict, config_to_dict
from sabgal.corrections import apply_corrections, load_corrections
from sabgal.measure import CELL_COLUMNS, empty_cells_table

log = logging.getLogger(__name__)

__all__ = [
    "ImageSet",
    "InputError",
    "discover_images",
    "image_key",
    "process_image",
    "run_batch",
    "rebuild_tables",
    "config_digest",
    "STATE_DIR",
]

STATE_DIR = ".sabgal"


class InputError(ValueError):
    """The inputs of a run cannot be used (nothing found, orphan companions...)."""


@dataclass(frozen=True)
class ImageSet:
    """One field: the RGB image, its nuclear companion, and how it is named."""

    path: str
    image: str  # path relative to the input root, '/'-separated
    key: str  # file-system-safe unique stem for outputs
    companion: str | None = None


def image_key(rel: str) -> str:
    """Unique, file-system-safe stem for a relative image path.

    >>> image_key("plate1/A01_f1.tif")
    'plate1__A01_f1'
    """
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return stem.replace("/", "__").replace("\\", "__")


def _companion_of(path: Path, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """(base stem, suffix) if ``path`` is a nuclear companion by name."""
    stem = path.stem
    for suf in suffixes:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)], suf
    return None


def discover_images(inputs: Iterable[str | os.PathLike[str]], config: Config) -> list[ImageSet]:
    """Find images in folders (recursively), globs and files; pair companions.

    Files named ``<stem><suffix>.<ext>`` for a suffix in
    ``config.setup.companion_suffixes`` are nuclear companions of
    ``<stem>.<ext2>`` in the same folder.

    Raises
    ------
    InputError
        When an input does not exist, nothing is found, or a companion has no
        RGB image beside it.
    """
    files: list[tuple[Path, Path]] = []  # (file, root)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in sio.IMAGE_EXTENSIONS and not any(
                        part.startswith(".") for part in f.relative_to(p).parts):
                    files.append((f, p))
        elif p.is_file():
            files.append((p, p.parent))
        else:
            matches = sorted(Path().glob(str(item))) if any(c in str(item) for c in "*?[") else []
            if not matches:
                raise InputError(f"{item}: no such file or folder")
            files.extend((m, m.parent) for m in matches if m.is_file())
    if not files:
        raise InputError("no images found (looked for " + ", ".join(sio.IMAGE_EXTENSIONS) + ")")
    roots = {r.resolve() for _, r in files}
    common = Path(os.path.commonpath([str(r) for r in roots])) if len(roots) > 1 else next(iter(roots))

    suffixes = tuple(config.setup.companion_suffixes)
    companions: dict[tuple[Path, str], Path] = {}
    mains: list[Path] = []
    seen: set[Path] = set()
    for f, _ in files:
        rf = f.resolve()
        if rf in seen:
            continue
        seen.add(rf)
        comp = _companion_of(f, suffixes)
        if comp is not None:
            companions[(rf.parent, comp[0])] = f
        else:
            mains.append(f)
    main_index = {(m.resolve().parent, m.stem): m for m in mains}
    orphans = [str(c) for k, c in companions.items() if k not in main_index]
    if orphans:
        raise InputError(f"{orphans[0]}: nuclear companion image with no RGB image of the same name"
                         + (f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    sets = []
    for m in mains:
        rm = m.resolve()
        rel = rm.relative_to(common).as_posix()
        comp = companions.get((rm.parent, m.stem))
        sets.append(ImageSet(str(m), rel, image_key(rel), str(comp) if comp else None))
    keys = [s.key for s in sets]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"two images map to the same output name {dup!r} (same name, different extension?)")
    return sorted(sets, key=lambda s: s.image)


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


def _state_paths(out_dir: Path, key: str) -> tuple[Path, Path]:
    state = out_dir / STATE_DIR
    return state / f"{key}.json", state / f"{key}.cells.csv"


def process_image(image_set: ImageSet, config_dict: dict[str, Any], out_dir: str,
                  flat_field: np.ndarray | None = None) -> dict[str, Any]:
    """Analyse one image set and commit its result; never raises for bad input.

    Returns the per-image record (also written to ``DIR/.sabgal/<key>.json``).
    Runs in worker processes: takes only picklable arguments.
    """
    from sabgal.pipeline import analyze_image

    config = config_from_dict(config_dict)
    out = Path(out_dir)
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "image": image_set.image,
        "key": image_set.key,
        "path": image_set.path,
        "nuclear_image": image_set.companion,
        "config_digest": config_digest(config),
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
        res = analyze_image(img.pixels, nuclear=nuclear, config=config,
                            pixel_size_um=img.pixel_size_um, flat_field=flat_field, classify_cells=False)
        info = res.info
        info["qc"]["saturated_fraction"] = img.saturated_fraction
        info["bit_depth"] = img.bit_depth
        info["lossy_compression"] = img.lossy
        state_json, state_cells = _state_paths(out, image_set.key)
        if config.batch.write_labels:
            sio.write_labels(out / "labels" / f"{image_set.key}_cells.tif", res.cell_labels)
            sio.write_labels(out / "labels" / f"{image_set.key}_nuclei.tif", res.nucleus_labels)
        sio.write_table(state_cells, res.cells)
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
    state_json, _ = _state_paths(out, image_set.key)
    sio.write_json(state_json, record)
    return record


def _is_done(out_dir: Path, s: ImageSet, digest: str) -> bool:
    state_json, state_cells = _state_paths(out_dir, s.key)
    if not state_json.exists():
        return False
    try:
        rec = json.loads(state_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if rec.get("status") != "ok" or rec.get("config_digest") != digest:
        return False
    try:
        if rec.get("source") != _file_signature(s.path):
            return False
    except OSError:
        return False
    return state_cells.exists()


def run_batch(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
              workers: int = 1, force: bool = False, flat_field: np.ndarray | None = None,
              executor_factory: Callable[[int], Any] | None = None) -> Iterator[dict[str, Any]]:
    """Process image sets, yielding each record as it is committed.

    Already finished images (same file, same config) are skipped unless
    ``force``; they are yielded with ``skipped=True``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = config_digest(config)
    cfg = config_to_dict(config)
    todo = []
    for s in sets:
        if not force and _is_done(out, s, digest):
            yield {"image": s.image, "key": s.key, "status": "ok", "skipped": True}
        else:
            todo.append(s)
    if not todo:
        return
    if workers <= 1 and executor_factory is None:
        for s in todo:
            yield process_image(s, cfg, str(out), flat_field)
        return
    factory = executor_factory or (lambda n: ProcessPoolExecutor(max_workers=n))
    pending = list(todo)
    while pending:
        try:
            with factory(workers) as ex:
                futures = {}
                queue = list(pending)
                # Keep at most 2 tasks per worker in flight: bounded memory.
                while queue or futures:
                    while queue and len(futures) < 2 * workers:
                        s = queue.pop(0)
                        futures[ex.submit(process_image, s, cfg, str(out), flat_field)] = s
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        s = futures.pop(fut)
                        pending.remove(s)
                        yield fut.result()
        except BrokenProcessPool:
            # A worker died (out of memory, a crash in a C library). Whatever
            # was in flight is recorded as failed; the rest go on in a new pool.
            if not pending:
                break
            victim = pending.pop(0)
            rec = {"image": victim.image, "key": victim.key, "path": victim.path,
                   "status": "error", "info": {},
                   "error": f"{victim.path}: worker process died while analysing this image"}
            sio.write_json(_state_paths(out, victim.key)[0], rec)
            yield rec


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
        "nucleus_diameter_px": info.get("nucleus_diameter_px"),
        "xgal_vector_r": (info.get("xgal_vector") or [None] * 3)[0],
        "xgal_vector_g": (info.get("xgal_vector") or [None] * 3)[1],
        "xgal_vector_b": (info.get("xgal_vector") or [None] * 3)[2],
        "xgal_angle_from_reference_deg": info.get("xgal_angle_from_reference_deg"),
        "xgal_background_od": info.get("xgal_background_od"),
        "stain_condition_number": info.get("stain_condition_number"),
        "illumination_nonuniformity": info.get("illumination_nonuniformity"),
        "background_fraction": info.get("background_fraction"),
        "warnings": "; ".join(info.get("warnings", [])),
        "elapsed_s": rec.get("elapsed_s"),
    }
    for k, v in (info.get("qc") or {}).items():
        row[f"qc_{k}"] = v
    return row


def rebuild_tables(sets: list[ImageSet], config: Config, out_dir: str | os.PathLike[str], *,
                   run_info: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild ``images.csv``, ``cells.csv`` and ``run.json`` from the per-image results.

    Thresholds are learnt from all cells of the run (see
    :func:`sabgal.classify.learn_thresholds`), then every cell is classified.
    """
    out = Path(out_dir)
    records, tables = [], []
    for s in sets:
        state_json, state_cells = _state_paths(out, s.key)
        try:
            rec = json.loads(state_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            rec = {"image": s.image, "status": "error", "error": f"{s.path}: no result (not processed)"}
        rec["image"] = s.image
        if rec.get("status") == "ok":
            try:
                t = pd.read_csv(state_cells)
            except (OSError, pd.errors.EmptyDataError) as exc:
                rec.update(status="error", error=f"{s.path}: per-image result unreadable: {exc}")
                t = None
            if t is not None:
                t = t.astype({k: v for k, v in CELL_COLUMNS.items() if k in t})
                t.insert(0, "image", s.image)
                tables.append(t)
        records.append(rec)
    cells = pd.concat(tables, ignore_index=True) if tables else empty_cells_table().assign(image=pd.Series(dtype=str))
    cc = config.classify
    th = classify.learn_thresholds(cells, cc)
    cells = classify.classify_cells(cells, th, rule=cc.senescent_rule)
    cells = apply_corrections(cells, load_corrections(out / "corrections.csv"), rule=cc.senescent_rule)
    cols = ["image"] + [c for c in CELL_COLUMNS] + ["sabgal_positive", "enlarged", "senescent", "corrected"]
    cells = cells[cols]

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
        row["positive_threshold_od"] = th.positive
        row["positive_threshold_source"] = th.positive_source
        rows.append(row)
    lead = ["image"] + classify.SUMMARY_COLUMNS + ["status", "error"]
    images = pd.DataFrame(rows)
    if len(images):
        images = images[lead + [c for c in images.columns if c not in lead]]
    else:
        images = pd.DataFrame(columns=lead)
    sio.write_table(out / "cells.csv", cells)
    sio.write_table(out / "images.csv", images)
    run = {
        "sabgal_version": __version__,
        "config": config_to_dict(config),
        "thresholds": th.to_dict(),
        "inputs": [{"image": s.image, "path": s.path, "nuclear_image": s.companion} for s in sets],
        "n_images": len(sets),
        "n_failed": int((images["status"] != "ok").sum()) if len(images) else 0,
    }
    if run_info:
        run.update(run_info)
    sio.write_json(out / "run.json", run)
    return images, cells
