"""Per-cell measurements: X-gal signal, size, shape, nucleus and thinness.

All measures are computed for every label at once with ``np.bincount``
(no per-cell Python loop except the convex hulls), so the cost grows with the
pixel count, not with the number of cells. The table has a fixed schema:
zero cells give a zero-row table with every column.

Units: ``*_px`` pixels, ``*_um``/``*_um2`` micrometres (NaN when the pixel
size is unknown), ``*_od`` optical density (decadic absorbance along the
stain vector, dimensionless).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sabgal import filters
from sabgal import morphology as morph

__all__ = ["CELL_COLUMNS", "measure_cells", "empty_cells_table", "label_quantile", "quantile_bins", "label_runs",
           "coordinate_sums", "convex_areas"]

# column -> dtype; the order is the order of cells.csv (calls are appended by classify)
CELL_COLUMNS: dict[str, str] = {
    "cell_id": "int64",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "area_px": "int64",
    "area_um2": "float64",
    "perimeter_px": "float64",
    "perimeter_um": "float64",
    "form_factor": "float64",
    "solidity": "float64",
    "eccentricity": "float64",
    "aspect_ratio": "float64",
    "major_axis_px": "float64",
    "minor_axis_px": "float64",
    "has_nucleus": "bool",
    "nucleus_area_px": "int64",
    "nucleus_area_um2": "float64",
    "nucleus_cell_area_ratio": "float64",
    "xgal_od_mean": "float64",
    "xgal_od_p90": "float64",
    "xgal_od_core_p60": "float64",
    "xgal_od_perinuclear_p60": "float64",
    "xgal_od_anchor_p60": "float64",
    "xgal_od_integrated": "float64",
    "xgal_stained_fraction": "float64",
    "body_od_mean": "float64",
    "counterstain_od_mean": "float64",
    "touches_border": "bool",
}


def empty_cells_table() -> pd.DataFrame:
    """Zero-row table with the full schema."""
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in CELL_COLUMNS.items()})


def label_quantile(labels: np.ndarray, values: np.ndarray, q, n_labels: int, *,
                   lo: float = -0.2, hi: float = 3.0, bins: int = 1024, knee: float = 0.02,
                   binned: np.ndarray | None = None) -> np.ndarray:
    """Per-label quantile of ``values`` by a joint histogram.

    Bins are uniform in asinh(value / ``knee``): finer than ``knee`` / 100
    near zero, where thresholds between unstained and faintly stained cells
    sit, and about 1 % of the value above ``knee``. Values outside
    [``lo``, ``hi``] fall in the end bins. ``binned``: the values' bin
    indices from :func:`quantile_bins` (same ``lo``, ``hi``, ``bins``,
    ``knee``), when several label sets share the values.

    Returns an array of length ``n_labels + 1`` (index = label; NaN where
    empty), or one row per quantile when ``q`` is a sequence.

    >>> lab = np.array([1, 1, 1, 2, 2])
    >>> val = np.array([0.0, 0.5, 1.0, 2.0, 2.0])
    >>> label_quantile(lab, val, 0.5, 2, lo=0, hi=4, bins=400).round(1).tolist()[1:]
    [0.5, 2.0]
    """
    a_lo, a_hi = np.arcsinh(lo / knee), np.arcsinh(hi / knee)
    idx = quantile_bins(values, lo=lo, hi=hi, bins=bins, knee=knee) if binned is None else binned
    key = labels.astype(np.int64)  # (one pixel-sized array, formed in place)
    key *= bins
    key += idx
    hist = np.bincount(key, minlength=(n_labels + 1) * bins)
    del key
    hist = hist.reshape(n_labels + 1, bins)
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1]
    rows = []
    for qi in np.atleast_1d(q):
        target = np.ceil(qi * total).clip(min=1)
        pos = (cum < target[:, None]).sum(axis=1)
        out = knee * np.sinh(a_lo + (pos + 0.5) * (a_hi - a_lo) / bins)
        rows.append(np.where(total > 0, out, np.nan))
    return rows[0] if np.ndim(q) == 0 else np.stack(rows)


def quantile_bins(values: np.ndarray, *, lo: float = -0.2, hi: float = 3.0, bins: int = 1024,
                  knee: float = 0.02) -> np.ndarray:
    """The :func:`label_quantile` histogram bin (int32) of each value.

    >>> quantile_bins(np.array([-1.0, 0.0, 10.0]), bins=1024).tolist()
    [0, 352, 1023]
    """
    a_lo, a_hi = np.arcsinh(lo / knee), np.arcsinh(hi / knee)
    scaled = np.arcsinh(np.asarray(values, dtype=np.float32) / np.float32(knee))
    scaled -= np.float32(a_lo)
    scaled *= np.float32(bins / (a_hi - a_lo))
    # clipped before the cast (cheaper, and the same bins: truncation
    # towards zero keeps [0, bins - 1] in place); fmax sends NaN to bin 0
    np.fmax(scaled, 0, out=scaled)
    np.minimum(scaled, bins - 1, out=scaled)
    return scaled.astype(np.int32)


def _perimeters(labels: np.ndarray, n: int) -> np.ndarray:
    """Crofton-style perimeter: pi/4 x number of 4-neighbour label changes."""
    padded = np.pad(labels, 1)
    counts = np.zeros(n + 1, dtype=np.float64)
    for a, b in ((padded[1:, :], padded[:-1, :]), (padded[:, 1:], padded[:, :-1])):
        diff = a != b
        counts += np.bincount(a[diff], minlength=n + 1)[: n + 1]
        counts += np.bincount(b[diff], minlength=n + 1)[: n + 1]
    return counts * (np.pi / 4)


def _convex_chain(lab: np.ndarray, y: np.ndarray, x: np.ndarray, side: int) -> np.ndarray:
    """Indices of the points on each label's convex chain (points grouped by
    label, rows ascending): ``side`` +1 keeps the left envelope (convex
    minorant of x over y), -1 the right one. Points on the wrong side of, or
    on, the segment between their neighbours are never hull vertices, so all
    of them are dropped at once, until none is left."""
    idx = np.arange(lab.size)
    while idx.size >= 3:
        a, b, c = idx[:-2], idx[1:-1], idx[2:]
        inner = (lab[a] == lab[b]) & (lab[c] == lab[b])
        cross = (y[b] - y[a]) * (x[c] - x[a]) - (x[b] - x[a]) * (y[c] - y[a])
        drop = inner & (side * cross <= 0)
        if not drop.any():
            break
        keep = np.ones(idx.size, dtype=bool)
        keep[1:-1] = ~drop
        idx = idx[keep]
    return idx


def convex_areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Convex-hull pixel count per label (Pick's theorem on the hull of pixel centres).

    The hull of a label's pixels is the hull of each row's leftmost and
    rightmost pixel: its left side is the convex envelope of the leftmost
    ones, its right side that of the rightmost ones. Both are found for all
    labels at once; area and perimeter then follow from the polygon.
    (The same numbers as scipy's ConvexHull per label, without a Qhull call
    per cell.) A label whose pixels are collinear, or with fewer than 3 edge
    pixels, counts its edge pixels.
    """
    padded = np.pad(labels, 1)
    inner = padded[1:-1, 1:-1]
    edge = (inner != padded[:-2, 1:-1]) | (inner != padded[2:, 1:-1]) | \
           (inner != padded[1:-1, :-2]) | (inner != padded[1:-1, 2:])
    edge &= inner > 0
    ys, xs = morph.nonzero(edge)
    labs = inner[ys, xs].astype(np.intp)
    n = max(int(labs.max()) + 1 if labs.size else 1, int(np.max(ids, initial=0)) + 1)
    n_edge = np.bincount(labs, minlength=n).astype(np.float64)
    # each (label, row): leftmost and rightmost edge pixel (np.nonzero lists
    # a row's pixels left to right)
    rows = labels.shape[0]
    key = labs * rows + ys
    order = np.argsort(key, kind="stable")
    key, xs = key[order], xs[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    last = np.r_[first[1:] - 1, key.size - 1]
    lab = key[first] // rows
    y = (key[first] % rows).astype(np.float64)
    left, right = xs[first].astype(np.float64), xs[last].astype(np.float64)
    li = _convex_chain(lab, y, left, +1)
    ri = _convex_chain(lab, y, right, -1)
    # polygon per label: left chain downwards, then right chain upwards
    plab = np.r_[lab[li], lab[ri]]
    py = np.r_[y[li], y[ri]]
    px = np.r_[left[li], right[ri]]
    part = np.r_[np.zeros(li.size), np.ones(ri.size)]
    poly = np.lexsort((np.where(part == 0, py, -py), part, plab))
    plab, py, px = plab[poly], py[poly], px[poly]
    start = np.flatnonzero(np.r_[True, plab[1:] != plab[:-1]])
    nxt = np.arange(1, plab.size + 1)
    ends = np.r_[start[1:], plab.size] - 1
    nxt[ends] = start  # close each polygon
    qy, qx = py[nxt], px[nxt]
    area = np.abs(np.bincount(plab, py * qx - px * qy, n)) / 2
    perim = np.bincount(plab, np.hypot(qy - py, qx - px), n)
    out = np.where((n_edge < 3) | (area == 0), n_edge, area + perim / 2 + 1)
    return out[ids]


def label_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of equal non-zero labels along each row of a 2-D label
    image, in raster order: (flat index of the first pixel, length, label)."""
    start = np.ones(labels.shape, dtype=bool)  # a run starts each row
    np.not_equal(labels[:, 1:], labels[:, :-1], out=start[:, 1:])
    first = np.flatnonzero(start)
    length = np.diff(np.append(first, labels.size))
    lab = labels.reshape(-1)[first]
    keep = lab != 0
    return first[keep], length[keep], lab[keep]


def coordinate_sums(labels: np.ndarray, n: int, *, second: bool = True) -> tuple[np.ndarray, tuple, tuple | None]:
    """Per label (index 0..n, every label <= n): pixel count, (sum y, sum x)
    and, with ``second``, (sum y^2, sum x^2, sum xy) of the pixel
    coordinates, as float64.

    Summed over the runs of equal labels along each row (closed forms of
    sums of consecutive integers), not pixel by pixel: every term and
    partial sum is an integer below 2^53, so exact, and equal to pixelwise
    ``np.bincount`` sums. (Where a label's sums could reach 2^53, pixelwise
    float64 sums would round: those are formed pixel by pixel, as before.)
    """
    rows, cols = labels.shape
    if rows * cols * float(max(rows, cols)) ** 2 >= 2.0 ** 53:
        lab = labels.ravel()
        pix = np.flatnonzero(lab)
        flat = lab[pix].astype(np.intp)
        ry, rx = np.divmod(pix, cols)
        ry, rx = ry.astype(np.float64), rx.astype(np.float64)
        area = np.bincount(flat, minlength=n + 1).astype(np.float64)
        firsts = (np.bincount(flat, ry, n + 1), np.bincount(flat, rx, n + 1))
        if not second:
            return area, firsts, None
        return area, firsts, (np.bincount(flat, ry * ry, n + 1), np.bincount(flat, rx * rx, n + 1),
                              np.bincount(flat, ry * rx, n + 1))
    starts, length, rl = label_runs(labels)
    rl, length = rl.astype(np.intp), length.astype(np.int64)
    y, x0 = np.divmod(starts.astype(np.int64), cols)
    x1 = x0 + length - 1
    # sum of x over x0..x1, and of x^2 (k(k+1)(2k+1)/6 at x1, less at x0 - 1)
    sx = (x0 + x1) * length // 2

    def total(w):
        return np.bincount(rl, w.astype(np.float64), n + 1)

    firsts = (total(y * length), total(sx))
    if not second:
        return total(length), firsts, None
    sxx = (x1 * (x1 + 1) * (2 * x1 + 1) - (x0 - 1) * x0 * (2 * x0 - 1)) // 6
    return total(length), firsts, (total(y * y * length), total(sxx), total(y * sx))


def measure_cells(cells: np.ndarray, nuclei: np.ndarray, *, xgal: np.ndarray, body: np.ndarray,
                  counterstain: np.ndarray | None = None, pixel_size_um: float | None = None,
                  stained_pixel_od: float = 0.1, edge_px: int = 0,
                  perinuclear_px: float = 0.0, band_px: float = 0.0,
                  nucleus_dist: np.ndarray | None = None) -> pd.DataFrame:
    """Measure every cell.

    Parameters
    ----------
    cells, nuclei : (M, N) int ndarrays
        Cell labels and nucleus labels (a nucleus carries its cell's label).
    xgal : (M, N) float ndarray
        X-gal concentration (OD), background-corrected.
    body : (M, N) float ndarray
        Neutral (grey) OD: the cell's own density, lower in thin, flat cells.
    counterstain : (M, N) float ndarray, optional
        Counterstain concentration (OD).
    pixel_size_um : float, optional
        µm per pixel; µm columns are NaN without it.
    stained_pixel_od : float
        X-gal OD above which a pixel counts as stained.
    edge_px : int
        The X-gal quantiles are read over the cell's *core*: the cell less
        its nucleus + 2 px and less this many pixels along its edge, when at
        least 30 % of the cell remains (else over the whole cell).
    perinuclear_px : float
        When > 0, the core also leaves out pixels farther than this from any
        nucleus (the stain is perinuclear; a territory drawn too large reaches
        into a neighbour). For nuclei from a nuclear stain, not brightfield
        guesses.
    band_px : float
        Width of the perinuclear band (px, starting 2 px outside the
        nucleus, within the core) over which ``xgal_od_perinuclear_p60`` is
        read; cells with no nucleus, or fewer than 10 band pixels, get their
        core value. 0 reads the core for every cell.
    nucleus_dist : (M, N) float ndarray, optional
        Each pixel's distance to the nearest nucleus pixel, when the caller
        has it (else computed here when needed).

    Returns
    -------
    pandas.DataFrame
        One row per cell, columns :data:`CELL_COLUMNS`.
    """
    cells = np.asarray(cells)
    if cells.max(initial=0) == 0:
        return empty_cells_table()
    n = int(cells.max())
    # Sums run over the labelled pixels only, in raster order: the same
    # per-label sums as over the whole image, at a fraction of the cost.
    pix = np.flatnonzero(cells.ravel())
    flat = cells.ravel()[pix].astype(np.intp)
    area, s1, s2 = coordinate_sums(cells, n)
    ids = np.flatnonzero(area[1:] > 0) + 1
    a = area[ids]
    sy, sx = s1[0][ids], s1[1][ids]
    cy, cx = sy / a, sx / a
    syy = s2[0][ids] / a - cy * cy
    sxx = s2[1][ids] / a - cx * cx
    sxy = s2[2][ids] / a - cy * cx
    # Second moments of a pixel include its own extent (1/12 per axis).
    syy += 1 / 12
    sxx += 1 / 12
    tr = syy + sxx
    det = syy * sxx - sxy * sxy
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 1e-12)
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    ecc = np.sqrt(np.clip(1 - l2 / l1, 0, 1))

    perim = _perimeters(cells, n)[ids]
    hull = convex_areas(cells, ids)
    solidity = np.clip(a / np.maximum(hull, a), 0, 1)

    nuc_all = np.asarray(nuclei).ravel()
    nuc_area = np.bincount(nuc_all[nuc_all != 0], minlength=n + 1)[: n + 1].astype(np.float64)[ids]
    nflat = nuc_all[pix]

    xg32 = np.asarray(xgal).ravel()[pix]
    # (np.bincount sums its weights in float64 whatever their type: float32
    # weights give the same sums without a float64 copy held throughout)
    xsum = np.bincount(flat, xg32, n + 1)[ids]
    # (a pixel left out counts towards label 0, which no cell has: cheaper
    # than indexing out a subset, and each cell's sum runs in the same order;
    # the OD compared with the threshold in float64, without a float64 copy)
    stained = np.bincount(np.where(np.greater(xg32, stained_pixel_od, signature="dd->?"), flat, 0),
                          minlength=n + 1)[ids].astype(np.float64)
    # The X-gal score is read over the cell's core cytoplasm (the stain is
    # perinuclear; a counterstained nucleus is where colour cross-talk is
    # worst), falling back to the whole cell when the nucleus fills most of it.
    ring = morph.dilate_cross(nuclei > 0, iterations=2)
    if edge_px > 0:
        # and away from the cell's edge, where a neighbour's granules spill
        # over an imperfect border
        ring |= morph.dilate_cross(morph.inner_boundaries(cells), iterations=int(edge_px))
    nuc_dist = None
    if (perinuclear_px > 0 or band_px > 0) and nuc_area.any():
        # (only distances up to the larger of the two reaches are compared)
        nuc_dist = (filters.distance_within(np.asarray(nuclei), max(perinuclear_px, 2 + band_px))
                    if nucleus_dist is None else nucleus_dist)
    if perinuclear_px > 0 and nuc_dist is not None:
        # and within reach of the nucleus: SA-β-gal is lysosomal and
        # perinuclear, while a territory drawn too large reaches into a
        # neighbour's stained body
        ring |= nuc_dist > perinuclear_px
    cyto_lab = np.where(ring.ravel()[pix], 0, flat)
    cyto_n = np.bincount(cyto_lab, minlength=n + 1)[ids]
    use_core = cyto_n >= np.maximum(0.3 * a, 10)
    # the core where it is big enough, else the whole cell
    core_ok = np.zeros(n + 1, dtype=bool)
    core_ok[ids] = use_core
    core_lab = np.where(core_ok[flat], cyto_lab, flat)
    xg_bins = quantile_bins(xg32)
    p90, p60 = label_quantile(core_lab, xg32, (0.9, 0.6), n, binned=xg_bins)[:, ids]
    del core_lab  # (a pixel-sized int64 array each: the measure stage's peak memory)
    band_p60 = p60
    if band_px > 0 and nuc_dist is not None:
        # the densest part of a perinuclear stain: a thin ring right around
        # the nucleus, which a faint cell's core quantile dilutes away
        band_lab = np.where(nuc_dist.ravel()[pix] <= 2 + band_px, cyto_lab, 0)
        band_n = np.bincount(band_lab, minlength=n + 1)[ids]
        band_q = label_quantile(band_lab, xg32, 0.6, n, binned=xg_bins)[ids]
        band_p60 = np.where(band_n >= 10, band_q, p60)
        del band_lab
    del cyto_lab, xg_bins
    cyto_flat = np.where(nflat == 0, flat, 0)
    body_px = np.asarray(body).ravel()[pix]  # (float32: see xsum)
    cyto_area = np.bincount(cyto_flat, minlength=n + 1)[ids].astype(np.float64)
    body_sum = np.bincount(cyto_flat, body_px, n + 1)[ids]
    body_all = np.bincount(flat, body_px, n + 1)[ids]
    body_mean = np.where(cyto_area >= 5, body_sum / np.maximum(cyto_area, 1), body_all / a)
    if counterstain is not None:
        cs_mean = np.bincount(flat, np.asarray(counterstain).ravel()[pix], n + 1)[ids] / a
    else:
        cs_mean = np.full(ids.size, np.nan)

    border = np.zeros(n + 1, dtype=bool)
    for edge in (cells[0, :], cells[-1, :], cells[:, 0], cells[:, -1]):
        border[np.unique(edge)] = True
    px = float(pixel_size_um) if pixel_size_um else np.nan

    table = pd.DataFrame({
        "cell_id": ids.astype(np.int64),
        "centroid_y": cy,
        "centroid_x": cx,
        "area_px": a.astype(np.int64),
        "area_um2": a * px * px,
        "perimeter_px": perim,
        "perimeter_um": perim * px,
        "form_factor": np.clip(4 * np.pi * a / np.maximum(perim, 1e-9) ** 2, 0, 1),
        "solidity": solidity,
        "eccentricity": ecc,
        "aspect_ratio": major / np.maximum(minor, 1e-9),
        "major_axis_px": major,
        "minor_axis_px": minor,
        "has_nucleus": nuc_area > 0,
        "nucleus_area_px": nuc_area.astype(np.int64),
        "nucleus_area_um2": nuc_area * px * px,
        "nucleus_cell_area_ratio": nuc_area / a,
        "xgal_od_mean": xsum / a,
        "xgal_od_p90": p90,
        "xgal_od_core_p60": p60,
        "xgal_od_perinuclear_p60": band_p60,
        "xgal_od_anchor_p60": band_p60,
        "xgal_od_integrated": xsum,
        "xgal_stained_fraction": stained / a,
        "body_od_mean": body_mean,
        "counterstain_od_mean": cs_mean,
        "touches_border": border[ids],
    })
    return table.astype(CELL_COLUMNS)
