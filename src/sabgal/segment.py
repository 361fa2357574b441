"""Segmentation: nuclei, then cells as territories grown from them.

* Nuclei come from a *nuclear map*: the counterstain concentration, a paired
  DAPI/Hoechst image, or (no nuclear stain) a best-effort map built from the
  cells' own density. The map is background-flattened, thresholded from its
  own statistics, and touching nuclei are split by a marker watershed on the
  distance transform.
* The cell foreground is where the smoothed optical density or the local
  texture rises above the background's own noise.
* Cells are grown from the nuclei over the foreground by a seeded watershed
  (Beucher & Meyer 1993) on the distance to the nearest nucleus, so touching
  cells split along the line between their nuclei, bent by any visible border.

Every function takes arrays and returns arrays; sizes are in pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from sabgal import filters
from sabgal import morphology as morph
from sabgal.illumination import (block_expand, block_reduce_mean, block_reduce_mean_padded, block_reduce_padded,
                                 upsample_bilinear)
from sabgal.measure import convex_areas, coordinate_sums, label_runs

__all__ = [
    "flatten_background",
    "robust_noise",
    "estimate_nucleus_diameter",
    "blob_diameter",
    "blob_diameters",
    "stain_hole_diameter",
    "nuclear_mask",
    "label_peaks",
    "split_objects",
    "segment_nuclei",
    "cell_foreground",
    "segment_cells",
    "relabel_sequential",
    "glass_level",
    "enclosed_nuclei_share",
    "brightfield_foreground",
    "untrimmable_cells",
    "pale_cell_pockets",
    "PolarPaths",
    "polar_outline_paths",
    "outlined_cells",
    "suppress_close_nuclei",
    "median_neighbour_distance",
    "unstained_nucleus_evidence",
    "UnstainedEvidence",
    "local_noise",
    "ring_prominence",
    "drop_flat_nuclei",
    "blob_response",
    "add_unstained_nuclei",
    "drop_stain_edge_nuclei",
    "StainMaps",
    "stain_maps",
    "stain_owns",
    "drop_unowned_stained_nuclei",
    "smoothed_stain",
    "merge_stained_fragments",
    "drop_bodiless_cells",
    "close_glass_margin",
    "drop_small_clear_cells_on_glass",
]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n keeping their order, uint32."""
    ids = _present(labels)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[labels]


def _areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count per label of a sparse, non-negative label image (nuclei):
    ``np.bincount(labels.ravel())`` but 0 for the background, from the
    labelled pixels alone (bincount widens a whole int32 image to int64
    first: a 33 MB copy at 2048 x 2048)."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels != 0], minlength=1)


def _present(labels: np.ndarray) -> np.ndarray:
    """Sorted labels > 0 present in a non-negative label image (``np.unique``
    without 0, by counting instead of sorting)."""
    return np.flatnonzero(_areas(labels)).astype(np.intp)


def _lut(ids: np.ndarray, size: int) -> np.ndarray:
    """Boolean lookup table of length ``size``, True at ``ids``: ``lut[labels]``
    is ``np.isin(labels, ids)`` for non-negative labels below ``size``."""
    lut = np.zeros(size, dtype=bool)
    lut[np.asarray(ids, dtype=np.intp)] = True
    return lut


def _centroids(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(len(ids), 2) pixel centroids: ``ndi.center_of_mass(labels > 0, labels,
    ids)`` (the same exact integer sums, from the runs of each label along
    rows: :func:`sabgal.measure.coordinate_sums`); NaN for absent ids."""
    ids = np.asarray(ids, dtype=np.intp)
    n = max(int(labels.max(initial=0)), int(np.max(ids, initial=0)))
    count, (sy, sx), _ = coordinate_sums(np.asarray(labels), n, second=False)
    count = count[ids]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.column_stack([sy[ids] / count, sx[ids] / count])


def _label_sums(labels: np.ndarray, ids: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """(pixel count, then the sum of each of ``values``) per label in ``ids``,
    float64: ``ndi.sum_labels(v, labels, ids)`` for each, from the labelled
    pixels alone (the same sums in the same order: bin 0 takes the rest; a
    nucleus image is a few per cent labelled, and each full-image pass of
    scipy's cost 10-90 ms a field)."""
    ids = np.asarray(ids, dtype=np.intp)
    at = np.flatnonzero(labels)
    lab = np.asarray(labels).ravel()[at]
    n = max(int(lab.max(initial=0)), int(ids.max(initial=0))) + 1
    out = [np.bincount(lab, minlength=n)[ids].astype(np.float64)]
    out += [np.bincount(lab, weights=np.asarray(v).ravel()[at], minlength=n)[ids] for v in values]
    return tuple(out)


def robust_noise(values: np.ndarray) -> tuple[float, float]:
    """Background level and noise SD of a map whose lower half is background.

    Returns (median, 1.4826 x median absolute deviation of the lower half,
    mirrored), robust to the bright objects in the upper tail.
    """
    v = values[:: max(1, values.size // 500_000)] if values.ndim == 1 else values.ravel()[:: max(1, values.size // 500_000)]
    med = float(filters.median(v))
    lower = v[v <= med]
    sd = float(filters.median(med - lower)) * 1.4826 if lower.size else 0.0
    return med, max(sd, 1e-6)


def _median_filter(image: np.ndarray, size: int) -> np.ndarray:
    """``ndi.median_filter(image, size=size, mode="reflect")`` (odd ``size``) by
    one partition of all windows at once: same values, ~3x faster than
    scipy's per-pixel selection on the small images it is used for."""
    pad = size // 2
    if size % 2 == 0 or min(image.shape) <= pad:
        return ndi.median_filter(image, size=size, mode="reflect")
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(image, pad, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    windows = sliding_window_view(padded, (size, size)).reshape(image.shape + (size * size,))
    k = size * size // 2
    return np.partition(windows, k, axis=-1)[..., k]


def flatten_background(image: np.ndarray, radius_px: float) -> np.ndarray:
    """Subtract a smooth local background (a large median on a reduced image).

    Removes slowly varying offsets (cytoplasm tone, uneven fluorescence)
    while keeping objects smaller than ``radius_px``.
    """
    f = max(1, int(radius_px // 4))
    small = image[::f, ::f]
    size = max(3, int(2 * radius_px / f) | 1)
    bg = _median_filter(small, size)
    bg = ndi.uniform_filter(bg, size=max(3, size // 2))
    return (image - upsample_bilinear(bg, image.shape[:2])).astype(np.float32)


def estimate_nucleus_diameter(nuclear_map: np.ndarray, *, default: float = 14.0) -> float:
    """Typical nucleus diameter (px) from the objects of a quick threshold.

    The map is smoothed a little, thresholded by Otsu, and the median
    equivalent diameter of objects of 20 px or more is returned
    (``default`` when there are too few objects).
    """
    sm = filters.gaussian_filter(nuclear_map.astype(np.float32), 1.0)
    try:
        t = threshold_otsu(sm[::2, ::2])
    except ValueError:
        return default
    mask = morph.open_cross(sm > t)
    lab, n = morph.label(mask)
    if n < 3:
        return default
    areas = _areas(lab)[1:]
    areas = areas[areas >= 20]
    if areas.size < 3:
        return default
    # Clumps inflate large objects: use the lower-middle of the distribution.
    a = float(np.percentile(areas, 40))
    return float(np.clip(2 * np.sqrt(a / np.pi), 4.0, 120.0))


def _blob_profile(image: np.ndarray, *, min_px: float, max_px: float, step: float,
                  top: int) -> np.ndarray | None:
    """Per rung of the scale ladder of :func:`blob_diameter`: the mean of the
    ``top`` strongest space-and-scale maxima of sigma^2 |LoG| (0 at the ends)."""
    import cv2

    m = np.ascontiguousarray(image, dtype=np.float32)
    if min(m.shape) < 16:
        return None
    m = cv2.medianBlur(m, 3)
    n = int(np.log(max_px / min_px) / np.log(step)) + 1
    sig = (min_px / (2 * np.sqrt(2))) * step ** np.arange(n)
    sig = sig[2 * (4 * sig + 0.5).astype(int) < min(m.shape)]
    if sig.size < 3:
        return None
    kernel = np.ones((3, 3), np.uint8)
    ladder = filters.gaussian_laplace_ladder(m, sig)

    def rung(k: int) -> tuple[np.ndarray, np.ndarray]:
        r = (-(sig[k] ** 2)) * next(ladder)  # (rungs are read in order)
        return r, cv2.dilate(r, kernel)

    prof = np.zeros(sig.size)
    # three rungs at a time: a maximum in space and scale is a 3x3 maximum of
    # its own rung no lower than the 3x3 maxima of the rungs either side
    below, here = rung(0), rung(1)
    best = np.empty_like(here[1])  # (buffers reused: each rung is a full image)
    peak = np.empty(best.shape, dtype=bool)
    for k in range(1, sig.size - 1):
        above = rung(k + 1)
        cur = here[0]
        np.maximum(below[1], above[1], out=best)
        np.maximum(best, here[1], out=best)
        np.greater_equal(cur, best, out=peak)
        peak &= cur > 0
        v = cur[peak]
        if v.size:
            # a fixed divisor: a scale with fewer maxima than ``top`` is
            # not rewarded for having only its strongest few
            prof[k] = float(np.sum(-np.partition(-v, min(top, v.size) - 1)[:top])) / top
        below, here = here, above
    return prof


def blob_diameter(image: np.ndarray, *, min_px: float = 2.5, max_px: float = 40.0, step: float = 1.15,
                  top: int | None = None) -> float | None:
    """Diameter (px) of the strongest bright blobs of ``image``, by scale selection.

    The scale-normalised Laplacian of Gaussian, sigma^2 |LoG|, of a disc of
    diameter D peaks at sigma = D / (2 sqrt 2) (Lindeberg's automatic scale
    selection). Its space-and-scale local maxima are found on a geometric
    ladder of scales; per scale the mean of the ``top`` strongest maxima
    (the image's most contrasted objects of that size, however few) gives a
    profile over scale, whose peak (smoothed, interpolated between rungs)
    is the answer. ``top`` defaults to one per 11,600 px of image (30 on a
    512 x 680 image), at least 5: a fixed share of the field, so a small
    crop is judged by its few nuclei, not by its noise. A 3x3 median first
    removes what is smaller than any nucleus (noise, JPEG blocks, the pale
    gaps between granules), which otherwise outnumber and outshine the
    nuclei at the finest scales.
    The ladder's end rungs are never chosen; ``None`` when no interior peak
    exists (a flat or tiny image).

    >>> yy, xx = np.mgrid[:200, :200]
    >>> img = np.zeros((200, 200), np.float32)
    >>> for cy, cx in [(40, 40), (40, 140), (140, 60), (150, 150)]:
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8 ** 2] = 1.0
    >>> 14 < blob_diameter(img) < 19
    True
    """
    peaks = blob_diameters(image, min_px=min_px, max_px=max_px, step=step, top=top)
    return peaks[0][0] if peaks else None


def blob_diameters(image: np.ndarray, *, min_px: float = 2.5, max_px: float = 40.0, step: float = 1.15,
                   top: int | None = None) -> list[tuple[float, float]]:
    """Every peak of :func:`blob_diameter`'s scale profile, strongest first:
    ``(diameter px, profile value)`` per interior local maximum of the
    smoothed profile (interpolated between rungs as there). The first is
    :func:`blob_diameter`'s answer; the others are the sizes of the field's
    other kinds of blob (specks, nucleoli, the nuclei themselves when
    something smaller outshines them). Empty when there is no interior peak.
    """
    if top is None:
        top = max(5, int(round(np.size(image) / 11600)))
    prof = _blob_profile(image, min_px=min_px, max_px=max_px, step=step, top=top)
    if prof is None:
        return []
    ps = ndi.gaussian_filter1d(prof, 1.0)
    out = []
    for k in range(1, ps.size - 1):
        a, b, c = ps[k - 1], ps[k], ps[k + 1]
        if b <= 0 or b < a or b < c:
            continue
        den = a - 2 * b + c
        off = float(np.clip(0.5 * (a - c) / den, -1, 1)) if den < 0 else 0.0
        # (rung k has sigma = min_px step^k / (2 sqrt 2))
        out.append((float(min_px * step ** (k + off)), float(b)))
    # strongest first; of equal peaks the finest (np.argmax's choice)
    return sorted(out, key=lambda p: -p[1])


def strongest_blobs(image: np.ndarray, *, diameter_px: float, top: int | None = None) -> np.ndarray:
    """(k, 2) row, col of the ``top`` strongest bright blobs of ``image`` at
    the scale of ``diameter_px``: the 3x3 local maxima of sigma^2 |LoG|
    (sigma = diameter / (2 sqrt 2)) after a 3x3 median, strongest first --
    the objects :func:`blob_diameters` measured at that size (``top`` as
    there: one per 11,600 px, at least 5)."""
    import cv2

    if top is None:
        top = max(5, int(round(np.size(image) / 11600)))
    m = cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), 3)
    sigma = float(diameter_px) / (2 * np.sqrt(2))
    r = (-(sigma ** 2)) * filters.gaussian_laplace(m, sigma)
    ys, xs = morph.nonzero((r >= cv2.dilate(r, np.ones((3, 3), np.uint8))) & (r > 0))
    order = np.argsort(-r[ys, xs], kind="stable")[:top]
    return np.stack([ys[order], xs[order]], axis=1)


def blobs_on_glass(image: np.ndarray, glass: np.ndarray, *, diameter_px: float,
                   top: int | None = None) -> tuple[float, float]:
    """Where the strongest blobs of ``image`` at ``diameter_px``
    (:func:`strongest_blobs`) lie relative to ``glass`` (bool, bare glass):
    (the median over blobs of the fraction of a circle of one diameter
    radius -- twice the blob's radius, past the edge of a whole cell, which
    scale selection reads smaller than it is when elongated -- on glass,
    the fraction of blob centres on glass); (0, 0) with no blob. Whole cells
    on glass are ringed by it; a nucleus is ringed by its cell's cytoplasm
    (cells are several times their nucleus' diameter)."""
    pts = strongest_blobs(image, diameter_px=diameter_px, top=top)
    if not len(pts):
        return 0.0, 0.0
    ring = _ring_fraction(glass, pts, float(diameter_px))
    return float(np.median(ring)), float(np.mean(glass[pts[:, 0], pts[:, 1]]))


def stain_hole_diameter(xgal: np.ndarray, *, closing_px: int = 25, min_level: float = 0.05,
                        min_holes: int = 5, excluded: np.ndarray | None = None, smooth_px: float = 1.0,
                        min_diameter_px: float = 0.0) -> float | None:
    """Typical diameter (px) of the pale holes nuclei leave in stained cells.

    SA-β-gal's blue fills the cytoplasm and spares the nucleus, so a stained
    cell shows its nucleus as a pale hole: a direct view of nucleus size
    wherever cells are stained, whatever else the field holds. ``xgal``
    (OD, smoothed at 1 px here) is closed with a disc of ``closing_px``
    (larger than any nucleus); where the closed stain is at least
    ``min_level`` OD and the stain dips below three quarters of it, each dip
    is cut at half its own depth (its half-depth outline) and counts if it
    is compact (solidity >= 0.8, >= 10 px) and touches neither the image
    edge nor ``excluded`` pixels. Returns the median equivalent diameter of
    at least ``min_holes`` such holes, else None. The half-depth outline
    lies inside the nucleus edge (the stain's haze over the nucleus and the
    blur make a hole shallow at its rim): holes read ~15 % small, from 40 %
    small to 15 % large on synthetic fields.

    ``smooth_px`` (the Gaussian sigma the stain is read at) and
    ``min_diameter_px`` (the smallest hole that counts, by equivalent
    diameter) read the holes at a given scale: at a high magnification the
    gaps between X-gal granules are as wide as nuclei at a low one, and
    outnumber the nuclear holes.
    """
    import cv2

    x = smoothed_stain(xgal, smooth_px)
    if min(x.shape) <= closing_px:
        return None
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (closing_px, closing_px))
    closed = cv2.morphologyEx(x, cv2.MORPH_CLOSE, disc)
    depth = closed - x
    cand = (closed >= min_level) & (depth > 0.25 * closed)
    lab, n = morph.label(cand)
    if n < min_holes:
        return None
    deepest = np.zeros(n + 1, dtype=np.float32)
    inside = lab > 0
    np.maximum.at(deepest, lab[inside], depth[inside])  # (per-dip maximum; ndi.maximum is 10x slower here)
    deepest[0] = np.inf
    lab, n = morph.label(cand & (depth >= 0.5 * deepest[lab]))
    if n < min_holes:
        return None
    ids = np.arange(1, n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    ok = (area >= max(10.0, np.pi / 4 * min_diameter_px ** 2)) & (area >= 0.8 * convex_areas(lab, ids))
    edge = [lab[0], lab[-1], lab[:, 0], lab[:, -1]]
    if excluded is not None and excluded.any():
        edge.append(lab[morph.dilate_cross(excluded, iterations=1)])
    cut = np.unique(np.concatenate(edge))
    ok[cut[cut > 0] - 1] = False
    if np.count_nonzero(ok) < min_holes:
        return None
    return float(np.median(2 * np.sqrt(area[ok] / np.pi)))


def nuclear_mask(nuclear_map: np.ndarray, *, diameter_px: float, min_area_px: float) -> np.ndarray:
    """Binary nuclei from a background-flattened nuclear map.

    The threshold is Otsu's on the smoothed map, lowered to 35 % of the way
    from background to the median nucleus (so dim nuclei are kept), and
    never below the background level + 4 noise SDs (so an image without
    nuclei stays empty).
    """
    sm = filters.gaussian_filter(nuclear_map.astype(np.float32), max(0.7, diameter_px / 12))
    med, sd = robust_noise(sm)
    floor = med + 4 * sd
    hi_vals = sm[sm > floor]
    if hi_vals.size < min_area_px:
        return np.zeros(sm.shape, dtype=bool)
    try:
        t_otsu = threshold_otsu(sm[:: 2, :: 2])
    except ValueError:
        t_otsu = floor
    t_otsu = max(t_otsu, floor)
    # Otsu can fall between dim and bright nuclei: lower the cut to 35 % of
    # the way from background to the typical (median) nucleus above Otsu.
    above = sm[sm > t_otsu]
    mid = med + 0.35 * (float(filters.median(above)) - med) if above.size else t_otsu
    t = max(min(t_otsu, mid), floor)
    mask = sm > t
    mask = morph.fill_holes(mask)
    mask = morph.open_square(mask)
    return mask


def local_peaks(image: np.ndarray, *, min_distance: int, threshold: float) -> np.ndarray:
    """``skimage.feature.peak_local_max(image, min_distance=min_distance,
    threshold_abs=threshold, exclude_border=False)``, the same coordinates in
    the same order, with the (2 * min_distance + 1) square maximum filter on
    OpenCV (scipy's takes ~30 ms on a 1.4 MP field): skimage is then asked
    only for what follows it, the threshold and the spacing, on the local
    maxima alone."""
    import cv2

    z = np.ascontiguousarray(image, dtype=np.float32 if image.dtype == np.float32 else np.float64)
    size = 2 * int(min_distance) + 1
    is_max = _window_maxima(z, size, threshold) if z.dtype == np.float64 and size > 1 else None
    if is_max is None:
        is_max = z == cv2.dilate(z, np.ones((size, size), np.uint8))  # (the window clipped at the edges)
        if is_max.all():  # (a flat image has no peak)
            return np.zeros((0, 2), dtype=np.intp)
    z = np.where(is_max, z, -np.inf)
    return peak_local_max(z, min_distance=min_distance, threshold_abs=threshold, exclude_border=False,
                          footprint=np.ones((1, 1), dtype=bool))


def _window_maxima(z: np.ndarray, size: int, threshold: float) -> np.ndarray | None:
    """Pixels of the float64 image ``z`` above ``threshold`` that equal the
    maximum of the ``size`` x ``size`` square around them (clipped at the
    image edge): ``z == dilate(z)`` where ``z > threshold``; None when the
    image may be flat (every pixel a maximum in float32).

    The square maximum filter runs on a float32 copy, 3-5x faster than on
    float64: rounding to float32 keeps order (never reverses it), so every
    true maximum is a float32 one; the few float32 maxima above the
    threshold are then checked against their float64 windows, which drops
    those that only rounding made equal to a larger neighbour.
    """
    import cv2

    z32 = z.astype(np.float32)
    cand = z32 == cv2.dilate(z32, np.ones((size, size), np.uint8))
    if cand.all():
        return None
    cand &= z > threshold
    cy, cx = morph.nonzero(cand)
    out = np.zeros(z.shape, dtype=bool)
    rows, cols = z.shape
    offs = np.arange(size) - size // 2
    per = max(1, (1 << 22) // (size * size))  # (windows gathered a few MB at a time)
    for i in range(0, cy.size, per):
        y, x = cy[i: i + per], cx[i: i + per]
        wy = np.clip(y[:, None, None] + offs[None, :, None], 0, rows - 1)  # (clamped: inside the clipped window)
        wx = np.clip(x[:, None, None] + offs[None, None, :], 0, cols - 1)
        ok = z[wy, wx].reshape(y.size, -1).max(axis=1) <= z[y, x]
        out[y[ok], x[ok]] = True
    return out


def label_peaks(image: np.ndarray, labels: np.ndarray, min_distance: int) -> np.ndarray:
    """``skimage.feature.peak_local_max(image, min_distance=min_distance,
    labels=labels, exclude_border=False)``, the same coordinates in the same
    order, without a Python pass per label.

    A peak is a pixel above the image minimum that equals the maximum of
    its label within the (2 * min_distance + 1) square around it; within a
    label, peaks closer than ``min_distance`` (Chebyshev) to a higher one
    are dropped, greedily from the highest. Candidates are first cut down to
    the 3x3 local maxima (a necessary condition), so only a few windows are
    read in full.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if min_distance < 1:
        raise ValueError("min_distance must be >= 1")
    r = int(min_distance)
    rows, cols = image.shape
    threshold = image.min()
    # 1. 3x3 maxima within the own label (neighbours outside the image or in
    #    another label do not count), read on the labelled pixels only
    py, px = morph.nonzero(labels)
    lab = labels[py, px].astype(np.intp)
    n_labels = int(lab.max()) + 1 if lab.size else 1
    area = np.bincount(lab, minlength=n_labels)
    val = image[py, px]
    lab_flat, img_flat = labels.ravel(), image.ravel()
    cand = np.ones(py.size, dtype=bool)
    for dy in (-1, 0, 1):
        ny = py + dy
        y_in = (ny >= 0) & (ny < rows)
        row = np.clip(ny, 0, rows - 1) * cols
        for dx in (-1, 0, 1):
            if dy or dx:
                nx = px + dx
                inside = y_in & (nx >= 0) & (nx < cols)
                nb = row + np.clip(nx, 0, cols - 1)
                cand &= ~inside | (lab_flat[nb] != lab) | (img_flat[nb] <= val)
    py, px, lab = py[cand], px[cand], lab[cand]
    # 2. the full window (clipped at the image edge) within the own label
    offs = np.arange(-r, r + 1)
    if py.size:
        wy = np.clip(py[:, None, None] + offs[None, :, None], 0, rows - 1)
        wx = np.clip(px[:, None, None] + offs[None, None, :], 0, cols - 1)
        own = labels[wy, wx] == lab[:, None, None]
        vals = np.where(own, image[wy, wx], -np.inf)
        is_max = vals.reshape(py.size, -1).max(axis=1) <= image[py, px]
        py, px, lab = py[is_max], px[is_max], lab[is_max]
    # 3. a label every pixel of which is a local maximum is flat: skimage then
    #    keeps only its isolated pixels; leave such (rare) labels to skimage
    npk = np.bincount(lab, minlength=area.size)
    flat = np.flatnonzero((npk == area) & (area > 0))
    flat = flat[flat > 0]
    extra: list[tuple[int, np.ndarray]] = []
    if flat.size:
        keep = ~np.isin(lab, flat)
        py, px, lab = py[keep], px[keep], lab[keep]
        boxes = ndi.find_objects(labels)
        for k in flat.tolist():
            sl = boxes[k - 1]
            sub = (labels[sl] == k).astype(np.int64)
            pk = peak_local_max(image[sl], min_distance=min_distance, labels=sub, exclude_border=False,
                                threshold_abs=threshold)
            extra.append((k, pk + np.array([sl[0].start, sl[1].start])))
    above = image[py, px] > threshold
    py, px, lab = py[above], px[above], lab[above]
    # 4. greedy spacing per label, highest first (ties in raster order)
    order = np.argsort(-image[py, px], kind="stable")
    py, px, lab = py[order], px[order], lab[order]
    if min_distance > 1:
        accepted: dict[int, list[tuple[int, int]]] = {}
        keep = np.zeros(py.size, dtype=bool)
        for i, (y, x, k) in enumerate(zip(py.tolist(), px.tolist(), lab.tolist())):
            prev = accepted.setdefault(k, [])
            if all(max(abs(y - y0), abs(x - x0)) >= min_distance for y0, x0 in prev):
                prev.append((y, x))
                keep[i] = True
        py, px, lab = py[keep], px[keep], lab[keep]
    coords = np.column_stack([py, px]).astype(np.intp)
    if extra:
        coords = np.vstack([coords] + [c.astype(np.intp).reshape(-1, 2) for _, c in extra])
        lab = np.concatenate([lab] + [np.full(len(c), k, dtype=lab.dtype) for k, c in extra])
    # skimage lists the labels in order, each label's peaks highest first
    return coords[np.argsort(lab, kind="stable")]


def distance_with_indices(mask: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``ndi.distance_transform_edt(mask, return_indices=True)`` with the
    same values: scipy's feature transform, then the distances from integer
    offsets to it (scipy forms them from float64 index grids, twice the time).
    Returns (distance float64, (rows, cols) of the nearest zero pixel)."""
    iy, ix = ndi.distance_transform_edt(mask, return_distances=False, return_indices=True)
    big = max(mask.shape) > 30_000  # squared offsets must fit in int32
    dt = np.int64 if big else np.int32
    dy = iy.astype(dt, copy=False) - np.arange(mask.shape[0], dtype=dt)[:, None]
    dx = ix.astype(dt, copy=False) - np.arange(mask.shape[1], dtype=dt)[None, :]
    d2 = dy * dy
    d2 += dx * dx
    return np.sqrt(d2, dtype=np.float64), (iy, ix)


def nearest_nucleus(nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest nucleus pixel, label of that nucleus) per pixel.

    The distance is exact (float32, :func:`sabgal.filters.distance_transform`).
    The label is carried out from every nucleus pixel by OpenCV's 5x5
    chamfer propagation (``distanceTransformWithLabels``), a few times
    faster than scipy's exact feature transform on large fields: where two
    nuclei lie within about 2 % of the same distance it can name the
    slightly farther one, moving a Voronoi border by about a pixel.
    """
    nuclei = np.asarray(nuclei)
    mask = nuclei == 0
    if mask.all() or not mask.any() or nuclei.ndim != 2:
        dist, (iy, ix) = distance_with_indices(mask)
        return dist.astype(np.float32), _at(nuclei, iy, ix).astype(np.int32, copy=False)
    return filters.distance_transform(mask), _nearest_label(nuclei, mask)


def nearest_nucleus_label(nuclei: np.ndarray) -> np.ndarray:
    """The label of the nearest nucleus per pixel: :func:`nearest_nucleus`
    without the exact distance, for callers that need only the partition."""
    nuclei = np.asarray(nuclei)
    mask = nuclei == 0
    if mask.all() or not mask.any() or nuclei.ndim != 2:
        return nearest_nucleus(nuclei)[1]
    return _nearest_label(nuclei, mask)


def _nearest_label(nuclei: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    _, lab = cv2.distanceTransformWithLabels(mask.view(np.uint8), cv2.DIST_L2, 5,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    # pixel labels number the nucleus pixels 1, 2, ... in raster order
    ids = np.r_[np.int32(0), np.ascontiguousarray(nuclei).ravel()[np.flatnonzero(~mask)].astype(np.int32)]
    lab = lab.ravel()
    out = np.empty(lab.size, dtype=np.int32)
    step = 1 << 18  # (in cache-sized pieces: numpy converts the indices to intp for take)
    for i in range(0, lab.size, step):
        np.take(ids, lab[i: i + step], out=out[i: i + step])
    return out.reshape(nuclei.shape)


def _at(image: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """``image[iy, ix]`` for index images of ``image``'s shape (a feature
    transform's), as one flat take: half the time of 2-D fancy indexing."""
    dt = np.int64 if image.size >= 2 ** 31 else iy.dtype
    flat = iy.astype(dt, copy=True)
    flat *= image.shape[1]
    flat += ix
    return np.take(np.ascontiguousarray(image).ravel(), flat)


def _value_at(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``image`` at the pixel nearest each of ``points`` ((..., 2) row,
    column coordinates), points past the edge clamped to it."""
    pts = np.asarray(points, dtype=np.float64)
    iy = np.clip(np.rint(pts[..., 0]).astype(np.intp), 0, image.shape[0] - 1)
    ix = np.clip(np.rint(pts[..., 1]).astype(np.intp), 0, image.shape[1] - 1)
    return image[iy, ix]


def split_objects(mask: np.ndarray, *, diameter_px: float, intensity: np.ndarray | None = None) -> np.ndarray:
    """Label a binary mask, splitting touching round objects.

    Markers are maxima of the (smoothed) distance transform at least
    ~0.4 diameters apart, optionally tilted by ``intensity`` so touching
    objects of equal size but separate brightness peaks split too.
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    comp, ncomp, boxes = morph.label_boxes(mask)
    dist = filters.distance_transform(comp > 0, boxes)
    score = filters.gaussian_filter(dist, max(1.0, diameter_px / 10))
    if intensity is not None:
        sm = filters.gaussian_filter(intensity.astype(np.float32), max(1.0, diameter_px / 6))
        lo, hi = np.percentile(sm[mask], [5, 95]) if mask.sum() > 20 else (0.0, 1.0)
        tilt = sm - lo  # in place below: the same values as np.clip((sm - lo) / ..., 0, 1)
        tilt /= max(hi - lo, 1e-6)
        np.maximum(tilt, 0, out=tilt)
        np.minimum(tilt, 1, out=tilt)
        tilt *= 0.25 * (diameter_px / 2)
        score = score + tilt
    min_dist = max(2, int(round(diameter_px * 0.4)))
    peaks = label_peaks(score, comp, min_dist)
    # Only objects with two or more peaks need splitting: flood just those,
    # each in its own bounding box (most nuclei are single).
    owner = comp[tuple(peaks.T)] if len(peaks) else np.zeros(0, dtype=comp.dtype)
    counts = np.bincount(owner, minlength=ncomp + 1)
    out = comp.astype(np.int32)
    next_label = ncomp + 1
    for c in np.flatnonzero(counts >= 2):
        sl = boxes[c - 1]
        sub = comp[sl] == c
        local = peaks[owner == c] - np.array([sl[0].start, sl[1].start])
        markers = np.zeros(sub.shape, dtype=np.int32)
        markers[tuple(local.T)] = np.arange(1, len(local) + 1)
        ws = watershed(-score[sl], markers, mask=sub)
        piece = np.where(ws > 1, ws - 2 + next_label, c).astype(np.int32)
        out[sl][sub] = piece[sub]
        next_label += len(local) - 1
    return out


def segment_nuclei(nuclear_map: np.ndarray, *, diameter_px: float, min_area_px: float) -> np.ndarray:
    """Nucleus labels (int32, 0 = background) from a nuclear map (higher = more nuclear)."""
    flat = flatten_background(nuclear_map.astype(np.float32), radius_px=2.5 * diameter_px)
    mask = nuclear_mask(flat, diameter_px=diameter_px, min_area_px=min_area_px)
    labels = split_objects(mask, diameter_px=diameter_px, intensity=flat)
    areas = _areas(labels)
    small = np.flatnonzero(areas < min_area_px)
    if small.size:
        labels[_lut(small[small > 0], areas.size)[labels]] = 0
    return labels


def background_stats(sm: np.ndarray, raw: np.ndarray, sigma_px: float,
                      background: np.ndarray | None) -> tuple[float, float]:
    """Level and noise SD of a smoothed map on bare glass.

    With a glass mask (from the lamp estimate) both come from it. Without one
    (a confluent field) the level is 0 (the lamp defines zero OD) and the
    noise is measured on the unsmoothed map's pixel-to-pixel differences,
    scaled down by the Gaussian smoothing's noise reduction.
    """
    if background is not None and background.sum() > 500:
        vals = sm[background]
        med = float(filters.median(vals))
        sd = float(filters.median(np.abs(vals - med))) * 1.4826
        return med, max(sd, 1e-5)
    d = np.diff(raw[::2, :], axis=1)
    pix_sd = float(filters.median(np.abs(d - filters.median(d)))) * 1.4826 / np.sqrt(2)
    return 0.0, max(pix_sd / (2 * np.sqrt(np.pi) * sigma_px), 1e-5)


# The local glass level is averaged over about this many foreground smoothing
# scales (sigma = nucleus diameter / 8, so ~4 nucleus diameters).
LOCAL_GLASS_SCALE = 32.0
# brightfield_foreground follows that level where the glass drifts past its
# detection limit over at least this share of the lamp's glass mask.
GLASS_DRIFT_SHARE = 0.05
# The field-wide glass level (glass_level: the histogram's lowest large peak)
# is the glass only while glass is the commonest clear thing in the field. In
# a dense field of large pale cells their faint margins cover more of it than
# the glass, their peak is the "glass", and against it the margins read as
# glass (one fresh field: foreground 31 % where cells cover 91 %, detection
# F1 0.73). The lamp's glass mask (bare glass it was fitted to) then reads
# lower: when the histogram's level lies more than this many of the mask's
# noise SDs above the mask's glass (its local level plus the lowest peak of
# its residuals about that level: the peak's lower half, which faint cells
# the mask holds cannot widen) and the histogram's peak is wider than that
# noise, brightfield_foreground measures from the mask instead -- its glass
# level around each pixel plus k noise SDs. Of 240 fresh plain-brightfield
# fields (seeds 161803, 99001, 27182, 31415, 8181, 777001) it changed four,
# each for the better: those two 0.73 -> 0.93 and 0.91 -> 0.96, 0.960 ->
# 0.975, and a lilac field of faint domes (mask on 37 % of the field, half of
# it on the cells' margins; true glass -0.007 OD, SD 0.009; histogram
# "glass" 0.017, SD 0.021: foreground 8 % where cells cover 80 %) 0.72 ->
# 0.77. (A first form compared with the mask's median, 3 noise SDs, which
# that field's mask -- half on cells -- put within reach of the histogram's
# level; without the mask-share gate below it changed 13 fields, ten more by
# -0.007 to +0.015, pooled within 0.0004, negative controls (seed 6464) not
# at all.)
GLASS_PEAK_ABOVE_MASK_SD = 2.0
# ... given a mask of at least this share of the field: a few per cent of
# glass patches in a confluent sheet is too thin a sample to overrule the
# histogram with, and the sheet rules (pipeline.SHEET_GLASS_FRACTION) take
# such fields (a sample sheet whose lamp found 2 % glass under a colour cast,
# 5 % without, lost 3 pp of its positive fraction to the rule).
GLASS_PEAK_MIN_MASK_SHARE = 0.03


def _local_glass_level(sm: np.ndarray, glass: np.ndarray, level: float, scale_px: float) -> np.ndarray:
    """Glass level around each pixel: the mean of ``sm`` over the ``glass``
    pixels within about ``scale_px`` (Gaussian-weighted normalised
    convolution, on a reduced grid), drawn towards the field's ``level``
    where glass is scarce nearby."""
    local, _, f = _local_glass_blocks(sm, glass, level, scale_px)
    return _blocks_to_full(local, f, sm.shape)


def _blocks_to_full(small: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """A map on blocks of ``f`` px (:func:`_local_glass_blocks`) brought back
    to the image's ``shape`` by bilinear interpolation."""
    return upsample_bilinear(small, (small.shape[0] * f, small.shape[1] * f))[: shape[0], : shape[1]]


def _local_glass_blocks(sm: np.ndarray, glass: np.ndarray, level: float,
                        scale_px: float) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`_local_glass_level` on its reduced grid (blocks of ``f`` px,
    the image padded to whole blocks), each block's share of ``glass``, and ``f``."""
    f = max(1, int(scale_px // 6))
    m, n = sm.shape
    pad = ((0, (-m) % f), (0, (-n) % f))
    g = np.pad(glass.astype(np.float32), pad)
    num = block_reduce_mean(np.pad(np.where(glass, sm, 0).astype(np.float32), pad), f)
    share = block_reduce_mean(g, f)
    s = scale_px / f
    num = ndi.gaussian_filter(num, s, mode="nearest")
    w = ndi.gaussian_filter(share, s, mode="nearest")
    w0 = np.float32(0.02)  # below ~2 % glass nearby, the field's level takes over
    return (num + w0 * np.float32(level)) / (w + w0), share, f


# Texture above this percentile of the glass's own texture can count as cell:
# JPEG blocks are flat inside with steps at their edges, so most glass has
# almost no texture and the robust spread (MAD) misses the steps.
TEXTURE_GLASS_PERCENTILE = 99.5


# Faint cytoplasm inside the lamp's glass mask (cell_foreground): the lower,
# hysteresis limit in noise SDs of the glass, and the share of the mask
# above it (noise alone: < 1 %) that shows the mask holds cytoplasm.
FAINT_CYTOPLASM_SD = 3.0
GLASS_CYTOPLASM_SHARE = 0.03
# ... and in a plain-brightfield field (brightfield_foreground), where the
# unstained cells are seen by their bodies' grey density alone: the lower
# limit, in local noise SDs over the local glass level, to which a body
# already found grows out of the stain.
FAINT_BODY_SD = 2.0


def _glass_residual(sm: np.ndarray, glass: np.ndarray, local: np.ndarray) -> tuple[float, float]:
    """Median and robust SD (1.4826 MAD) of ``sm`` less the local glass
    level ``local`` over the lamp's glass mask ``glass``."""
    r = (sm - local)[glass]
    med = float(filters.median(r))
    return med, max(float(filters.median(np.abs(r - med))) * 1.4826, 1e-5)


def _join_faint(fg: np.ndarray, weak: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """``fg`` with the pieces of the lower-limit mask ``weak`` that touch it
    (hysteresis), when over :data:`GLASS_CYTOPLASM_SHARE` of the lamp's
    glass mask ``glass`` lies in ``weak``: noise alone puts well under 1 %
    of true glass there, so the mask holds cytoplasm. Otherwise ``fg``: in a
    clean field the lower limit would only widen every cell's blur halo."""
    if np.count_nonzero(weak & glass) > GLASS_CYTOPLASM_SHARE * np.count_nonzero(glass):
        return fg | _touching(weak, fg)
    return fg


def _touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that overlap ``seeds``.

    >>> _touching(np.array([[1, 1, 0, 1]], bool), np.array([[0, 1, 0, 0]], bool)).astype(int).tolist()
    [[1, 1, 0, 0]]
    """
    lab, n = morph.label(mask)
    keep = np.zeros(n + 1, dtype=bool)
    keep[lab[seeds & mask]] = True
    keep[0] = False
    return keep[lab]


def cell_foreground(signal: np.ndarray, *, sigma_px: float, sensitivity: float = 1.0,
                    texture: np.ndarray | None = None, background: np.ndarray | None = None,
                    smoothed: np.ndarray | None = None,
                    stats: tuple[float, float] | None = None) -> np.ndarray:
    """Cell bodies: smoothed signal (and optional local texture) above the
    noise of bare glass; with a glass mask, also faint cytoplasm above the
    glass level measured locally (:func:`_local_glass_level`), away from
    the blur halo of brighter cells; and, when the glass mask itself holds
    cytoplasm (over :data:`GLASS_CYTOPLASM_SHARE` of it above
    :data:`FAINT_CYTOPLASM_SD` noise SDs over the local glass level), what is above that lower limit
    and joined to a cell already found.

    Parameters
    ----------
    signal : (M, N) float ndarray
        Optical-density-like map, ~0 on glass (not clipped: noise must
        average out).
    sigma_px : float
        Smoothing scale.
    sensitivity : float
        Divides the detection limit (5 noise SDs): 2 finds fainter cytoplasm.
    texture : (M, N) float ndarray, optional
        Local standard deviation of OD; textured pixels count as cell too:
        above 8 noise SDs of the glass's texture and, with a glass mask,
        above its :data:`TEXTURE_GLASS_PERCENTILE` th percentile.
    background : (M, N) bool ndarray, optional
        Pixels known to be glass (from the lamp estimate). Holes in the
        mask are filled (thin cytoplasm) unless they hold known glass.
    smoothed : (M, N) float32 ndarray, optional
        ``ndi.gaussian_filter(signal, sigma_px)`` when the caller has it
        already (it is the local mean of the texture).
    stats : (float, float), optional
        :func:`background_stats` of ``smoothed`` when the caller has them.
    """
    sm = filters.gaussian_filter(signal.astype(np.float32), sigma_px) if smoothed is None else smoothed
    level, sd = background_stats(sm, signal, sigma_px, background) if stats is None else stats
    fg = sm > level + (5.0 / sensitivity) * sd
    if background is not None and background.sum() > 500:
        # Faint cytoplasm: the glass level drifts across the field (what the
        # lamp model leaves, JPEG blocks), so measured around each pixel its
        # noise is about half the field-wide spread, and cells too faint for
        # the field-wide limit stand out of it. Not within the blur halo of
        # the cells already found (two smoothing scales), which the lower
        # limit would only widen.
        local = _local_glass_level(sm, background, level, LOCAL_GLASS_SCALE * sigma_px)
        med, sd_local = _glass_residual(sm, background, local)
        faint = sm > local + med + (5.0 / sensitivity) * sd_local
        halo = morph.dilate_cross(fg, iterations=int(round(2 * sigma_px)) + 1)
        fg |= faint & ~halo
        # Fainter still: the lamp estimate takes as glass whatever lies within
        # a few noise SDs of the lamp, so the cytoplasm of very faint cells
        # can sit inside its glass mask. Noise alone puts well under 1 % of
        # true glass above FAINT_CYTOPLASM_SD local noise SDs over the local
        # glass level; when over GLASS_CYTOPLASM_SHARE
        # of the mask is that dark, the mask holds cytoplasm, and what is
        # above that lower limit *and* joined to a cell already found is
        # added to it (hysteresis: _join_faint).
        lim = FAINT_CYTOPLASM_SD / sensitivity
        # (against the local glass level only: a lamp misfit that leaves a
        # darker corner of glass is not faint cytoplasm, and must neither
        # open the gate nor join the cells beside it)
        fg = _join_faint(fg, sm > local + med + lim * sd_local, background)
    if texture is not None:
        if background is not None and background.sum() > 500:
            tv = texture[background]
            tmed = float(filters.median(tv))
            tsd = float(filters.median(np.abs(tv - tmed))) * 1.4826 + 1e-6
            # heavy tails (JPEG block edges, grain) set the bar where the
            # glass itself rarely reaches
            tlim = max(tmed + (8.0 / sensitivity) * tsd, float(np.percentile(tv, TEXTURE_GLASS_PERCENTILE)))
        else:
            tmed, tsd = robust_noise(texture)
            tlim = tmed + (8.0 / sensitivity) * tsd
        fg |= texture > tlim
    return _tidy_mask(fg, glass=background)


def _tidy_mask(fg: np.ndarray, *, glass: np.ndarray | None = None) -> np.ndarray:
    """Open away specks, close small gaps, fill holes (thin cytoplasm) except
    those holding known ``glass``."""
    fg = morph.open_square(fg)
    fg = morph.close_square(fg, iterations=2)
    return morph.fill_holes(fg, unless=glass)


def glass_level(smoothed: np.ndarray, *, bins: int = 400, min_peak: float = 0.2,
                ignore: np.ndarray | None = None) -> tuple[float, float]:
    """Level and noise SD of bare glass on a smoothed optical-density map.

    Glass is the clearest thing in a brightfield field, so it is the
    lowest-OD peak of the histogram that holds a fair share of the pixels
    (``min_peak`` of the highest peak). Its SD is read off the peak's lower
    half (half width at half maximum / 1.1774), which no cell contaminates.
    Unlike statistics on a lamp-derived glass mask, this holds when the lamp
    was fitted to faint cell bodies (confluent fields: glass then has
    negative OD) and when JPEG compression has smoothed the pixel noise.
    """
    v = smoothed[:: 2, :: 2]
    v = v.ravel() if ignore is None else v[~ignore[:: 2, :: 2]]
    return _lowest_peak(v, bins=bins, min_peak=min_peak)


def _lowest_peak(v: np.ndarray, *, bins: int = 400, min_peak: float = 0.2) -> tuple[float, float]:
    """:func:`glass_level` on a 1-D sample of values."""
    if v.size == 0:
        return 0.0, 1e-5
    lo, hi = np.percentile(v, [0.1, 99.0])
    if not hi > lo:
        return float(lo), 1e-5
    pad = 0.05 * (hi - lo)  # so a glass peak at the very bottom is still a peak
    # no more bins than the sample fills (a small image gives a ragged histogram)
    c, hs = _smooth_hist(v, lo - pad, hi, int(np.clip(np.sqrt(v.size) / 1.5, 24, bins)))
    inner = hs[1:-1]
    peaks = np.flatnonzero((inner >= hs[:-2]) & (inner > hs[2:]) & (inner >= min_peak * hs.max())) + 1
    i = int(peaks[0]) if peaks.size else int(np.argmax(hs))
    sd = _left_sd(c, hs, i)
    # refine on a finer histogram around the peak (the coarse bins can be
    # as wide as the glass noise itself)
    half = max(4 * sd, 6 * (c[1] - c[0]))
    near = int(np.count_nonzero(np.abs(v - c[i]) <= half))
    c, hs = _smooth_hist(v, c[i] - half, c[i] + half, int(np.clip(np.sqrt(near) / 1.5, 16, 200)))
    i = int(np.argmax(hs[: len(hs) * 3 // 4]))
    return float(c[i]), max(_left_sd(c, hs, i), 1e-5)


def _mask_glass_peak(resid: np.ndarray) -> tuple[float, float, float]:
    """Level, noise SD and tail spread of the glass in a lamp glass mask,
    from the mask's values about their local level (``resid``).

    The level is the values' lowest peak and the noise its width where the
    values are continuous. But JPEG flattens blocks of bright glass onto a
    few quantised levels: the lowest peak is then one such level, a spike a
    fraction of the noise wide on the real spread, and often below its
    middle. What lies below the peak is glass only (margins in the mask lie
    above it), so its spread below the mode bounds the noise from below:
    the median distance (the typical noise, for the limit) and the 90th
    percentile distance (the tail's spread, for judging whether another
    level lies well above this glass), each scaled to a Gaussian SD. On
    continuous Gaussian noise all three agree.
    """
    mode, noise = _lowest_peak(resid)
    spread = noise
    below = mode - resid[resid < mode]
    if below.size >= 100:
        typical, tail = np.quantile(below, [0.5, 0.9])
        noise = max(noise, float(typical) / 0.6745)
        spread = max(noise, float(tail) / 1.6449)
    return mode, noise, spread


def _smooth_hist(v: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    h, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return (edges[:-1] + edges[1:]) / 2, ndi.gaussian_filter1d(h.astype(np.float64), 2)


def _left_sd(c: np.ndarray, hs: np.ndarray, i: int) -> float:
    """SD of a peak at bin ``i`` from its lower half width at half maximum."""
    j = i
    while j > 0 and hs[j] > 0.5 * hs[i]:
        j -= 1
    if hs[j] > 0.5 * hs[i] or j == i:
        return float(c[1] - c[0])
    # interpolate the half-maximum crossing between bins j and j + 1
    t = (0.5 * hs[i] - hs[j]) / max(hs[j + 1] - hs[j], 1e-12)
    return float((c[i] - (c[j] + t * (c[j + 1] - c[j]))) / 1.1774)


def brightfield_foreground(od_sum: np.ndarray, *, sigma_px: float, k: float = 4.0,
                           ignore: np.ndarray | None = None, glass: np.ndarray | None = None,
                           smoothed: np.ndarray | None = None,
                           stats: tuple[float, float] | None = None,
                           clear: np.ndarray | None = None) -> np.ndarray:
    """Cell bodies in an unstained brightfield field: smoothed OD more than
    ``k`` glass noise SDs above the glass level (:func:`glass_level`, which
    leaves out the ``ignore`` pixels: no specimen there). Holes are filled
    (thin cytoplasm) unless they hold known ``glass``: the bare glass that a
    ring of touching cells encloses. ``smoothed`` (``od_sum`` smoothed at
    ``sigma_px``) and ``stats`` (its :func:`glass_level`) when the caller
    has them.

    With ``glass`` (the lamp's bare-glass mask, trusted by the caller), the
    glass level is also measured around each pixel (:func:`_local_glass_level`):
    where the lamp model leaves the glass drifting by more than the noise
    limit itself over ``GLASS_DRIFT_SHARE`` or more of the glass (uneven
    illumination no smooth polynomial follows), a single field-wide level
    takes whole stretches of bare glass for cells, and the limit follows
    the local level instead (never below the field-wide one). Below that
    share it is left alone: the local mean of the mask also rises by a
    noise SD or two beside cells (their halos, faint margins inside the
    mask), and following it there trims real cells' edges.

    With ``glass`` and ``clear`` (where the field carries no X-gal), faint
    bodies grow too (hysteresis, as :func:`cell_foreground`'s faint
    cytoplasm): an unstained cell's body thins towards its edge, and the
    lamp, fitted to what is clearest, takes its outer part for glass. What
    lies ``FAINT_BODY_SD`` local noise SDs over the local glass level, out
    of the stain, and joins a body already found is added, when over
    ``GLASS_CYTOPLASM_SHARE`` of the mask lies that high (:func:`_join_faint`).
    Out of the stain only: grown into a stained cell's pale margin, an
    unstained neighbour took it, and that cell its call. (Not where the
    limit is the mask's own glass peak, above: there the pale margins are
    already what the limit was lowered for.)"""
    sm = filters.gaussian_filter(od_sum.astype(np.float32), sigma_px) if smoothed is None else smoothed
    level, sd = glass_level(sm, ignore=ignore) if stats is None else stats
    limit = level + k * sd
    n_glass = 0 if glass is None else np.count_nonzero(glass)
    if n_glass > 500:
        local, share, f = _local_glass_blocks(sm, glass, level, LOCAL_GLASS_SCALE * sigma_px)
        full = None  # (the local level at full size, made only where needed)
        if n_glass >= GLASS_PEAK_MIN_MASK_SHARE * glass.size:
            # the histogram's "glass" is the margins of pale cells when they
            # outnumber the glass: it lies well above the mask's own glass
            # and is wider than its noise, and the limit is then that glass's,
            # measured locally (GLASS_PEAK_ABOVE_MASK_SD; on a quarter of the
            # mask, as glass_level)
            full = _blocks_to_full(local, f, sm.shape)
            on = glass[::2, ::2]
            mode, noise, spread = _mask_glass_peak((sm[::2, ::2] - full[::2, ::2])[on])
            glass_at = float(filters.median(full[::2, ::2][on])) + mode
            if level - glass_at > GLASS_PEAK_ABOVE_MASK_SD * spread and sd > spread:
                return _tidy_mask(sm > full + np.float32(mode + k * noise), glass=glass)
        # (the drift is judged on the reduced grid the level is measured on)
        if float(share[local > limit].sum()) >= GLASS_DRIFT_SHARE * float(share.sum()):
            full = _blocks_to_full(local, f, sm.shape) if full is None else full
            limit = np.maximum(full, np.float32(level)) + np.float32(k * sd)
        if clear is not None:
            full = _blocks_to_full(local, f, sm.shape) if full is None else full
            med, sd_local = _glass_residual(sm, glass, full)
            weak = (sm > full + np.float32(med + FAINT_BODY_SD * sd_local)) & clear
            return _tidy_mask(_join_faint(sm > limit, weak, glass), glass=glass)
    return _tidy_mask(sm > limit, glass=glass)


def sheet_foreground(smoothed: np.ndarray, stats: tuple[float, float], *, k: float = 2.0) -> np.ndarray:
    """Cell bodies of a sheet whose lamp estimate found no glass: all but what
    lies more than ``k`` SDs below the level :func:`glass_level` reads.

    With no glass to speak of (a confluent field: the lamp fell back on its
    bright percentile), the histogram's lowest large peak that
    :func:`glass_level` takes for glass is the faint cytoplasm of the
    unstained cells, and the few gaps between them -- true glass, a few
    per cent of the field -- form no peak of their own, only a shoulder
    below it. A limit ``k`` SDs above that "glass" keeps only the nuclei
    and the densest cytoplasm, and the cells come out as small discs; the
    cells are what is not clearly below it (specks opened away, small
    gaps closed; a gap of glass the cells enclose stays glass). ``smoothed``:
    the smoothed summed OD; ``stats``: its :func:`glass_level`.
    """
    level, sd = stats
    return morph.close_square(morph.open_square(smoothed > level - k * sd), iterations=2)


# segment.faint_bodies: how far (px) the blur of what the foreground holds
# reaches past it (left out when a faint blob's own density is judged)
FAINT_BODY_CLEAR_PX = 2


def faint_bodies(grey: np.ndarray, foreground: np.ndarray, nuclei: np.ndarray, *, sigma_px: float,
                 k: float = 4.0, peak_k: float = 6.0, min_area_px: float = 0.0, max_area_px: float = np.inf,
                 max_inside: float = 0.5, ignore: np.ndarray | None = None) -> np.ndarray:
    """Cell bodies too faint for the foreground: seen at a cell's scale only.

    The foreground reads density smoothed over about a pixel, where an
    unstained cell whose cytoplasm absorbs a per cent or two of the light,
    and whose small nucleus barely shows, is lost in the pixel noise; over
    half a nucleus the noise falls several fold and such a cell stands out
    as a soft blob. ``grey`` (the neutral density: no X-gal in it, whose
    haze over the glass would pass for bodies at this scale) is smoothed at
    ``sigma_px`` and thresholded ``k`` noise SDs above the glass level
    (:func:`glass_level`, leaving out ``ignore``); a blob must also rise
    ``peak_k`` SDs above it somewhere (the lamp model's residual drift,
    which at this scale can clear ``k``, rarely clears that) and span at
    most ``max_area_px``. A blob of it counts when
    it holds at most one nucleus, at most ``max_inside`` of it lies in the
    ``foreground`` already, and at least ``min_area_px`` of it lies out of
    the foreground and is dense in its own right -- above the same limit
    when smoothed over only what the foreground and the
    :data:`FAINT_BODY_CLEAR_PX` round it leave (a dark speck's blur makes a
    blob round the speck, not a body): a cell of which the foreground saw
    no more than its nucleus or its densest core, not the blurred margin of
    a cell it has (that blob holds the whole cell). Returns those blobs
    less the foreground.

    >>> rng = np.random.default_rng(1)
    >>> g = rng.normal(0, 0.01, (80, 80)).astype(np.float32)
    >>> yy, xx = np.mgrid[:80, :80]
    >>> g[np.hypot(yy - 40, xx - 40) < 10] += 0.008    # under the pixel noise
    >>> fg, nuc = np.zeros((80, 80), bool), np.zeros((80, 80), np.int32)
    >>> m = faint_bodies(g, fg, nuc, sigma_px=4, min_area_px=50)
    >>> bool(m[40, 40]), bool(m[5, 5])
    (True, False)
    """
    grey = np.asarray(grey, dtype=np.float32)
    foreground = np.asarray(foreground, dtype=bool)
    sm = filters.gaussian_filter(grey, sigma_px)
    level, sd = glass_level(sm, ignore=ignore)
    free = ~morph.dilate_square(foreground, iterations=FAINT_BODY_CLEAR_PX)
    if ignore is not None:
        free &= ~ignore
    limit = level + k * sd
    blobs = morph.open_square(sm > limit)
    if ignore is not None:
        blobs &= ~ignore
    comp, n = morph.label(blobs)
    if n == 0:
        return np.zeros(blobs.shape, dtype=bool)
    # the part of a blob that counts is dense in its own right: smoothed over
    # what the foreground (and the blur just around it) leaves, else a dark
    # speck's blur at this scale makes a blob round it
    weight = filters.gaussian_filter(free.astype(np.float32), sigma_px)
    own = filters.gaussian_filter(np.where(free, grey, np.float32(0)), sigma_px)
    dense = free & (own > limit * np.maximum(weight, np.float32(1e-3)))
    area = np.bincount(comp.ravel(), minlength=n + 1)
    inside = np.bincount(comp[foreground], minlength=n + 1)
    own_area = np.bincount(comp[dense], minlength=n + 1)
    # (blob, nucleus) pairs, read off the nuclei's pixels in a blob only
    on = (nuclei > 0) & (comp > 0)
    base = int(nuclei.max()) + 1
    held = np.bincount(np.unique(comp[on].astype(np.int64) * base + nuclei[on]) // base, minlength=n + 1)
    # a cell's body rises well clear of the noise somewhere (the residual
    # drift of the lamp model, at this scale, barely clears the limit), and
    # is no larger than a few cells (a blob's peak, floored at 0, against
    # that line: whether any of its pixels reaches it)
    peak_line = level + peak_k * sd
    risen = np.bincount(comp[sm >= peak_line], minlength=n + 1) > 0 if peak_line > 0 else np.ones(n + 1, bool)
    keep = (held <= 1) & (inside <= max_inside * area) & (own_area >= min_area_px)
    keep &= risen & (area <= max_area_px)
    keep[0] = False
    return keep[comp] & ~foreground


def pale_cell_pockets(foreground: np.ndarray, nuclei: np.ndarray, *, max_area_ratio: float = 1.0,
                      min_nuclei: int = 5) -> np.ndarray:
    """Pieces of not-foreground that are the faint cytoplasm of unstained cells.

    A piece (4-connected) holding nuclei of its own -- nuclei whose 2 px
    surround lies mostly in the piece -- and no larger than ``max_area_ratio``
    times the field's foreground area per foreground nucleus for each of them
    is that many cells too faint to stand out of the glass, not bare glass:
    bare glass between cells holds no nuclei, or is far larger than the cells
    it holds. Returns the mask of such pieces (none when fewer than
    ``min_nuclei`` nuclei lie in the foreground to size a cell by).
    """
    import cv2

    fg = np.asarray(foreground, dtype=bool)
    out = np.zeros(fg.shape, dtype=bool)
    nuclei = np.asarray(nuclei)
    n, comp = cv2.connectedComponents((~fg).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1 or not nuclei.any():
        return out
    nuc = nuclei > 0
    # each nucleus's surround, labelled with it (cv2 dilates float32 exactly below 2^24)
    grown = cv2.dilate(nuclei.astype(np.float32), np.ones((5, 5), np.uint8)).astype(np.int64)
    ring = (grown > 0) & ~nuc
    rl, rc = grown[ring], comp[ring]
    top = int(nuclei.max()) + 1
    tot = np.bincount(rl, minlength=top)
    outside = np.bincount(rl[rc > 0], minlength=top)
    free = (tot > 0) & (outside >= 0.5 * tot)
    n_fg = int(np.count_nonzero((tot > 0) & ~free))
    if n_fg < min_nuclei:
        return out
    per_cell = float(np.count_nonzero(fg)) / n_fg
    # each free nucleus's piece: the one holding most of its surround
    sel = free[rl] & (rc > 0)
    if not sel.any():
        return out
    key, cnt = np.unique(rl[sel] * n + rc[sel], return_counts=True)
    lab, pc = np.divmod(key, n)
    order = np.lexsort((-cnt, lab))
    first = np.r_[True, lab[order][1:] != lab[order][:-1]]
    pieces = pc[order][first]
    held = np.bincount(pieces, minlength=n)
    area = np.bincount(comp.ravel(), minlength=n)
    pocket = (held >= 1) & (area <= max_area_ratio * per_cell * held)
    pocket[0] = False
    return pocket[comp]


def _greedy_keep(points: np.ndarray, score: np.ndarray, radius: float, *,
                 clear: np.ndarray | None = None, clear_radius: float | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: which ``points`` survive when, from
    the highest ``score`` down, each survivor removes every other point
    within ``radius`` of it -- or within ``clear_radius`` (<= ``radius``)
    when both points are ``clear`` (a boolean per point)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    tree = cKDTree(points)
    alive = np.ones(len(points), dtype=bool)
    near = clear_radius is not None and clear is not None
    for i in np.argsort(-np.asarray(score), kind="stable"):
        if alive[i]:
            for j in tree.query_ball_point(points[i], radius):
                if j == i:
                    continue
                if near and clear[i] and clear[j] and np.hypot(*(points[j] - points[i])) >= clear_radius:
                    continue
                alive[j] = False
    return alive


def blob_response(image: np.ndarray, region: np.ndarray, *, diameter_px: float) -> np.ndarray | None:
    """The scale-normalised LoG of ``image`` (3x3 median first) at the
    nucleus scale, in robust SDs of that response over ``region`` (0
    outside it): how strongly each pixel is the centre of a nucleus-sized
    blob. None when ``region`` is too small (< 1000 px) to measure the noise."""
    import cv2

    if region.sum() < 1000:
        return None
    s = float(diameter_px) / (2 * np.sqrt(2))
    g = cv2.medianBlur(np.ascontiguousarray(image, dtype=np.float32), 3)
    resp = (-(s * s)) * next(filters.gaussian_laplace_ladder(g, [s]))  # (float64)
    med, sd = robust_noise(resp[region])
    resp -= med  # (in place: the values of (resp - med) / sd)
    resp /= sd
    resp[~region] = 0.0
    return resp


def truncated_population(values: np.ndarray, threshold: float, band: float, *, min_count: int = 20,
                         max_median_excess: float = 1.5, max_below_share: float = 0.35) -> bool:
    """Whether a threshold cuts into a population of peak strengths rather
    than sitting below it: ``min_count`` or more ``values`` at or above
    ``threshold``, their median less than ``max_median_excess`` above it,
    and the ``band`` just below it holding fewer than ``max_below_share``
    as many. Noise peaks grow more numerous the weaker they are, so below
    a threshold that only noise reaches the band holds as many as lie
    above it or more; a population of real blobs, faint in this field,
    thins out below its median instead.

    >>> truncated_population(np.r_[np.full(40, 6.5), np.full(5, 5.5)], 6.0, 1.0)
    True
    >>> truncated_population(np.r_[np.full(40, 6.5), np.full(30, 5.5)], 6.0, 1.0)
    False
    """
    v = np.asarray(values, dtype=np.float64)
    above = v[v >= threshold]
    below = np.count_nonzero((v < threshold) & (v >= threshold - band))
    return bool(above.size >= min_count and float(np.median(above)) < threshold + max_median_excess
                and below < max_below_share * above.size)


def mirror_threshold(dark: np.ndarray, pale: np.ndarray, snr: float, band: float, *, ratio: float = 4.0,
                     min_count: int = 20, step: float = 0.5) -> float:
    """How far below ``snr`` a blob threshold may go where the peaks of
    the opposite sign say the weaker ones are real: lowered ``step`` at a
    time, at most ``band``, while the ``dark`` peak strengths between the
    new threshold and ``snr`` number at least ``min_count`` and ``ratio``
    times the ``pale`` ones there (the strengths of the peaks of the
    negated response, the same way found). Noise, and the texture of the
    cells, give peaks of either sign alike; nuclei only dark ones. So the
    pale peaks count the noise among the dark ones at each strength (over-
    count: pale gaps between cells add to them), and where the dark ones
    outnumber them several times the band holds nuclei. ``snr`` when the
    first step already fails.

    >>> dark = np.r_[np.full(30, 5.7), np.full(30, 5.2), np.full(5, 4.7)]
    >>> mirror_threshold(dark, np.r_[np.full(3, 5.2), np.full(15, 4.7)], 6.0, 1.5)
    5.0
    """
    dark, pale = np.asarray(dark, dtype=np.float64), np.asarray(pale, dtype=np.float64)
    best = float(snr)
    k = 1
    while k * step <= band + 1e-9:
        t = snr - k * step
        n_dark = np.count_nonzero((dark >= t) & (dark < snr))
        n_pale = np.count_nonzero((pale >= t) & (pale < snr))
        if n_dark < min_count or n_dark < ratio * n_pale:
            break
        best = t
        k += 1
    return best


def _add_blob_peaks(nuclei: np.ndarray, z: np.ndarray | None, *, diameter_px: float, snr: float,
                    spacing: float, accept=None, band: float = 0.0, mirror_band: float = 0.0,
                    mirror_ratio: float = 4.0, mirror_region: np.ndarray | None = None) -> np.ndarray:
    """Peaks of the blob response ``z`` (:func:`blob_response`) at least
    ``snr`` SDs strong, passing ``accept`` (a function of the (k, 2) peak
    coordinates returning a boolean mask; all pass without it), and more
    than ``spacing`` diameters from every nucleus already found and from
    each other (strongest first), added to ``nuclei`` as discs of 0.45
    diameters. With ``band`` > 0, peaks down to ``snr - band`` are taken
    too where the threshold cuts into the population of those that pass
    (:func:`truncated_population`); with ``mirror_band`` > 0, down to where
    :func:`mirror_threshold` (``mirror_ratio``) puts it, at most that far
    below ``snr``, from the peaks of ``z`` and of ``-z`` found alike before
    ``accept`` (the lower of the two); with ``mirror_region``, only peaks
    where it is True are counted there and taken that way."""
    from scipy.spatial import cKDTree

    if z is None:
        return nuclei
    d = float(diameter_px)
    lowest = snr - max(band, mirror_band, 0.0)
    min_distance = max(1, int(spacing * d / 2))
    ids = _present(nuclei)
    tree = cKDTree(_centroids(nuclei, ids)) if ids.size else None

    def apart(points: np.ndarray) -> np.ndarray:
        if len(points) and tree is not None:
            return points[tree.query(points)[0] > spacing * d]
        return points

    def inside(points: np.ndarray) -> np.ndarray:
        if mirror_region is None or not len(points):
            return np.ones(len(points), dtype=bool)
        return mirror_region[tuple(points.T)]

    coords = apart(local_peaks(z, min_distance=min_distance, threshold=lowest))
    mirror_level = snr
    if mirror_band > 0 and len(coords):
        pale = apart(local_peaks(-z, min_distance=min_distance, threshold=snr - mirror_band))
        dark = coords[inside(coords)]
        pale = pale[inside(pale)]
        mirror_level = mirror_threshold(z[tuple(dark.T)] if len(dark) else np.zeros(0),
                                        -z[tuple(pale.T)] if len(pale) else np.zeros(0),
                                        snr, mirror_band, ratio=mirror_ratio)
    if accept is not None and len(coords):
        coords = coords[accept(coords)]
    if len(coords):
        strength = z[tuple(coords.T)]
        level = snr - band if band > 0 and truncated_population(strength, snr, band) else snr
        coords = coords[(strength >= level) | ((strength >= mirror_level) & inside(coords))]
    if not len(coords):
        return nuclei
    coords = coords[_greedy_keep(coords, z[tuple(coords.T)], spacing * d)]
    return _add_discs(nuclei, coords, np.full(len(coords), 0.45 * d))


def response_at_nuclei(nuclei: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``response`` at each nucleus's centroid (rounded), in label order.

    >>> n = np.zeros((5, 5), int); n[1:4, 1:4] = 1
    >>> response_at_nuclei(n, np.arange(25.0).reshape(5, 5))
    array([12.])
    """
    _, cents = _tested_candidates(nuclei, None)
    return _value_at(np.asarray(response), cents).astype(float)


def local_noise(image: np.ndarray, *, scale_px: float, region: np.ndarray | None = None) -> float:
    """Robust SD of ``image`` less its own Gaussian blur at ``scale_px``
    (every third pixel, over ``region``): the pixel-scale noise and fine
    texture of a smoothed map, not its spread between glass and cells."""
    detail = (image - filters.gaussian_filter(image, max(1.0, scale_px)))[::3, ::3]
    if region is None:
        return robust_noise(detail.ravel())[1]
    sample = region[::3, ::3]
    return robust_noise(detail[sample])[1] if sample.any() else 0.0


def ring_prominence(image: np.ndarray, coords: np.ndarray, radius: float,
                    contrast: float | np.ndarray) -> np.ndarray:
    """Per point of ``coords`` ((k, 2) row, col), the fraction of the circle
    of ``radius`` px around it where ``image`` lies more than ``contrast``
    (one value, or one per point) below its value at the point: 1 for a
    blob that stands out all round, about half at the edge or end of a
    plateau, 0 inside a flat one."""
    return _ring_fraction(image, coords, radius, below=_value_at(image, coords) - contrast)


def _tested_candidates(nuclei: np.ndarray, exempt: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The labels of ``nuclei`` and their centroids, less those whose centre
    lies where ``exempt`` is True (kept without a check's test)."""
    ids = _present(nuclei)
    cents = _centroids(nuclei, ids) if ids.size else np.zeros((0, 2))
    if exempt is not None and ids.size:
        tested = ~_value_at(exempt, cents)
        ids, cents = ids[tested], cents[tested]
    return ids, cents


def drop_flat_nuclei(nuclei: np.ndarray, density: np.ndarray, *, diameter_px: float, ring_nuclei: float = 0.75,
                     min_lower: float = 0.7, contrast_sd: float = 5.0, rise_share: float = 0.0,
                     ring_quantile: float = 0.25, exempt: np.ndarray | None = None) -> np.ndarray:
    """Drop nucleus candidates that do not stand out of their surroundings
    all round on a (smoothed) nuclear ``density`` map.

    A nucleus is a blob: denser than its cytoplasm, or paler than the blue
    around it, in every direction. A candidate whose centre lies at least
    ``contrast_sd`` local noise SDs (:func:`local_noise` at d / 4) above the
    map on fewer than ``min_lower`` of the circle ``ring_nuclei`` diameters
    around it lies on a plateau or at its edge: a faint cell body whose
    nucleus does not show (the threshold takes the whole body, or a piece
    of it, for a nucleus), the end of an elongated one, the outer edge of a
    stained cell. Dropping it leaves such a cell to be seeded from its shape.

    ``rise_share`` (0: off): the contrast asked of each candidate is also at
    least this share of its own rise above the ``ring_quantile`` of its
    circle (the darker part of its surroundings). A faint nucleus among
    dense neighbours rises little above the noise but well above its own
    cytoplasm all round; a piece of a cell body's margin rises far above
    the glass on one side and not at all above the body on the other, however
    strong it is. ``exempt``: a candidate whose centre lies where this mask
    is True is kept without the test.
    """
    ids, cents = _tested_candidates(nuclei, exempt)
    if ids.size == 0:
        return nuclei
    d = float(diameter_px)
    noise = local_noise(density, scale_px=d / 4)
    contrast: float | np.ndarray = contrast_sd * noise
    if rise_share > 0:
        ring = _ring_values(density, cents, ring_nuclei * d)
        rise = _value_at(density, cents) - np.quantile(ring, ring_quantile, axis=1)
        contrast = np.maximum(contrast, rise_share * rise)
    frac = ring_prominence(density, cents, ring_nuclei * d, contrast)
    drop = frac < min_lower
    if not drop.any():
        return nuclei
    return drop_labels(nuclei, _lut(ids[drop], int(nuclei.max()) + 1))


def drop_fine_specks(nuclei: np.ndarray, grey: np.ndarray, *, diameter_px: float, max_ratio: float = 1.6,
                     exempt: np.ndarray | None = None, max_share: float = 0.5) -> np.ndarray:
    """Drop nucleus candidates that are specks, not nuclei: dark objects far
    smaller than a nucleus (debris, dust, a crystal) that still respond at
    the nucleus's scale on the density ``grey`` -- their blob response half
    a nucleus across exceeds ``max_ratio`` x that one nucleus across
    (:func:`finer_blob_ratio`). Such a speck outshines a faint nucleus next
    to it, and takes its place. ``exempt``: candidates whose centre lies
    where this mask is True are kept without the test (a stained cell's
    nucleus is a pale hole in the blue, which the test does not read).

    Nothing is dropped when more than ``max_share`` of the tested
    candidates would be: then the nucleus size itself is wrong (too large,
    so every nucleus looks fine), not the candidates.

    >>> yy, xx = np.mgrid[:80, :80]
    >>> g = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 4.0 ** 2))    # a nucleus, d ~ 11
    >>> g += 2 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / (2 * 1.0 ** 2))  # a speck
    >>> g += 0.9 * np.exp(-((yy - 20) ** 2 + (xx - 60) ** 2) / (2 * 4.0 ** 2))
    >>> nuc = np.zeros((80, 80), np.int32)
    >>> nuc[18:23, 18:23], nuc[59:62, 59:62], nuc[18:23, 58:63] = 1, 2, 3
    >>> np.unique(drop_fine_specks(nuc, g.astype(np.float32), diameter_px=11)).tolist()
    [0, 1, 3]
    """
    ids, cents = _tested_candidates(nuclei, exempt)
    if ids.size == 0:
        return nuclei
    ratio = finer_blob_ratio(grey, np.rint(cents).astype(np.intp), diameter_px)
    # (no dark blob at the nucleus's scale at all -- a pale hole, the ratio
    # infinite -- is not a speck: other checks judge it)
    drop = np.isfinite(ratio) & (ratio > max_ratio)
    if not drop.any() or drop.mean() > max_share:
        return nuclei
    return drop_labels(nuclei, _lut(ids[drop], int(nuclei.max()) + 1))


class UnstainedEvidence(NamedTuple):
    """What :func:`add_unstained_nuclei` measures on a field before it picks."""

    response: np.ndarray | None  # blob_response of the neutral density over the X-gal-free part
    density: np.ndarray  # neutral density smoothed at d / 8
    noise: float  # robust SD of density less its blur at d / 4, over the X-gal-free part
    clear_stain: float  # median smoothed (d / 2) X-gal over the X-gal-free part (0 if none)


def unstained_nucleus_evidence(grey: np.ndarray, xgal: np.ndarray, *, diameter_px: float, max_xgal: float = 0.03,
                               smoothed: tuple[np.ndarray, np.ndarray] | None = None) -> UnstainedEvidence:
    """The maps :func:`add_unstained_nuclei` reads (computed once when the
    caller searches more than once)."""
    d = float(diameter_px)
    broad = smoothed[1] if smoothed is not None else smoothed_stain(xgal, d / 2)
    clear = broad < max_xgal
    density = filters.gaussian_filter(np.asarray(grey, dtype=np.float32), max(1.0, d / 8))
    noise = local_noise(density, scale_px=d / 4, region=clear)
    clear_stain = float(filters.median(broad[clear])) if clear.any() else 0.0
    return UnstainedEvidence(blob_response(grey, clear, diameter_px=d), density, noise, clear_stain)


def finer_blob_ratio(image: np.ndarray, coords: np.ndarray, diameter_px: float) -> np.ndarray:
    """Per point of ``coords`` ((k, 2) row, col): the scale-normalised blob
    response (sigma^2 |LoG| after a 3x3 median, the strongest within 2 px)
    of a blob half ``diameter_px`` across over that of one ``diameter_px``
    across. Scale selection: a blob of diameter D responds most at
    sigma = D / (2 sqrt 2), so a nucleus-sized blob gives well under 1 and
    a speck far smaller than a nucleus -- dark enough to respond at the
    nucleus scale too -- gives more (on development fields: nuclei 0.35-1.4,
    specks on glass mostly 1.4-2.6)."""
    import cv2

    coords = np.asarray(coords, dtype=np.intp).reshape(-1, 2)
    out = np.zeros(len(coords))
    if not len(coords):
        return out
    img = np.asarray(image, dtype=np.float32)
    rows, cols = img.shape
    s1 = float(diameter_px) / (2 * np.sqrt(2))
    s2 = s1 / 2
    reach = int(4 * s1 + 0.5) + 2 + 2  # (kernel radius, the 2 px window, the median)
    kernel = np.ones((5, 5), np.uint8)
    for i, (y, x) in enumerate(coords):
        y0, y1 = max(0, y - reach), min(rows, y + reach + 1)
        x0, x1 = max(0, x - reach), min(cols, x + reach + 1)
        patch = cv2.medianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), 3)
        if min(patch.shape) <= 2 * int(4 * s1 + 0.5):
            continue
        at = (y - y0, x - x0)
        r1 = cv2.dilate((-(s1 * s1)) * filters.gaussian_laplace(patch, s1), kernel)[at]
        r2 = cv2.dilate((-(s2 * s2)) * filters.gaussian_laplace(patch, s2), kernel)[at]
        out[i] = r2 / r1 if r1 > 0 else np.inf
    return out


def blob_roundness(image: np.ndarray, coords: np.ndarray, diameter_px: float) -> np.ndarray:
    """Per point of ``coords`` ((k, 2) row, col): the smaller over the larger
    principal curvature of ``image`` (a density, Gaussian-smoothed at the
    nucleus scale sigma = ``diameter_px`` / (2 sqrt 2); the Hessian from
    central differences of the smoothed values round the point) -- 1 at the
    centre of a round dense blob, about 0.5 for an ellipse twice as long as
    wide, 0.35 for one three times as long, near 0 on a straight ridge (a
    cell's dark rim, a fibre); 0 where the point is no dense peak both ways
    (a saddle between two blobs)."""
    coords = np.asarray(coords, dtype=np.intp).reshape(-1, 2)
    out = np.zeros(len(coords))
    if not len(coords):
        return out
    s = float(diameter_px) / (2 * np.sqrt(2))
    r = int(4 * s + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / s) ** 2)
    kernel /= kernel.sum()
    pad = r + 1
    img = np.pad(np.asarray(image, dtype=np.float32), pad, mode="reflect")
    rows, cols = image.shape[:2]
    y = np.clip(coords[:, 0], 0, rows - 1)
    xc = np.clip(coords[:, 1], 0, cols - 1)
    span = np.arange(2 * pad + 1)
    # (k, 2r + 3, 2r + 3) patches centred on the points (padded coordinates)
    patches = img[(y[:, None, None] + span[None, :, None]), (xc[:, None, None] + span[None, None, :])]
    across = np.stack([patches[:, :, b:b + 2 * r + 1] @ kernel for b in range(3)], axis=-1)  # (k, 2r+3, 3)
    sm = np.stack([np.einsum("kic,i->kc", across[:, a:a + 2 * r + 1], kernel) for a in range(3)], axis=1)  # (k, 3, 3)
    hyy = sm[:, 0, 1] - 2 * sm[:, 1, 1] + sm[:, 2, 1]
    hxx = sm[:, 1, 0] - 2 * sm[:, 1, 1] + sm[:, 1, 2]
    hxy = (sm[:, 0, 0] - sm[:, 0, 2] - sm[:, 2, 0] + sm[:, 2, 2]) / 4
    half_sum, disc = (hyy + hxx) / 2, np.hypot((hyy - hxx) / 2, hxy)
    weak, strong = half_sum + disc, half_sum - disc  # (a dense peak: both < 0)
    ok = (strong < 0) & (weak < 0)
    out[ok] = weak[ok] / strong[ok]
    return out


def add_unstained_nuclei(nuclei: np.ndarray, grey: np.ndarray, xgal: np.ndarray, *, diameter_px: float,
                         snr: float = 6.0, max_xgal: float = 0.03, spacing: float = 2.0,
                         ring_nuclei: float = 0.75, max_ring_stained: float = 0.25,
                         min_ring_lower: float = 0.7, ring_contrast_sd: float = 5.0,
                         smoothed: tuple[np.ndarray, np.ndarray] | None = None,
                         evidence: UnstainedEvidence | None = None,
                         max_finer_ratio: float = 0.0, band: float = 0.0,
                         min_roundness: float = 0.0, mirror_band: float = 0.0,
                         mirror_max_stain: float = 0.25) -> np.ndarray:
    """Add the nuclei of unstained cells that one threshold over a brightfield
    nuclear map misses.

    Without a nuclear stain a stained cell's nucleus is a pale hole in the
    blue, 5-10x the contrast of an unstained cell's nucleus (slightly denser
    than its cytoplasm), so a threshold set by the former loses the latter.
    Here the unstained nuclei are sought on their own terms: peaks of the
    scale-normalised LoG of the neutral density ``grey`` (3x3 median first)
    at the nucleus scale, measured in robust SDs of that response over the
    field's X-gal-free part (smoothed ``xgal`` below ``max_xgal`` OD, where
    alone they are looked for), at least ``snr`` SDs strong, and more than
    ``spacing`` diameters from every nucleus already found and from each
    other (strongest first). Each becomes a disc of 0.45 diameters.

    An unstained cell's nucleus is surrounded by its own unstained
    cytoplasm. A peak just outside or inside the edge of a stained cell (the
    body's edge is a step of neutral density too, and a large flat cell's
    faint rim can lie below ``max_xgal`` when smoothed) has the stain on one
    side: a peak with X-gal (smoothed at 1 px) of at least ``max_xgal`` on
    ``max_ring_stained`` or more of the circle ``ring_nuclei`` diameters
    around it is not taken. (On 106 synthetic development fields this
    rejected 676 of 1,377 false candidates and 17 of 5,725 true ones.)

    Nor is a peak that is not denser than its surroundings all round: the
    end of a faint, elongated unstained cell body (a plateau of neutral
    density a few nuclei long) gives a nucleus-sized blob response near
    each end -- two "nuclei" that split the cell -- but on the circle
    ``ring_nuclei`` diameters around it the body is as dense as the peak on
    one side. The neutral density (smoothed at d / 8) must lie at least
    ``ring_contrast_sd`` local noise SDs (robust SD, over the X-gal-free
    part, of that map less its own blur at d / 4) below the peak's on
    ``min_ring_lower`` or more of the circle (0 turns the check off). On a
    second renderer's plain-brightfield fields (ellipse cells, nuclei only
    slightly denser) this took the cell-count error from 18.4 to 10.6 % and
    detection F1 from 0.838 to 0.885 (20 fields), and from 18.9 to 13.0 %
    and 0.881 to 0.910 (16 others); on 150 of our own development fields
    detection F1 moved by at most 0.0003.

    ``band`` (0: off): where the unstained nuclei are so faint that ``snr``
    cuts into their population (:func:`truncated_population` of the peaks
    that pass every check), those down to ``snr - band`` are taken too.
    ``mirror_band`` (0: off): and down to :func:`mirror_threshold`, at most
    this far below ``snr``, where the peaks of the response's negative (pale
    blobs: noise and texture, never a nucleus) are several times fewer than
    the dark ones between there and ``snr``; only where the smoothed X-gal
    exceeds its median over the X-gal-free part by less than
    ``mirror_max_stain`` x ``max_xgal``. The faint periphery of a stained
    cell, under ``max_xgal`` but over the unstained cells' level, is full
    of dark granules and has no pale ones: there the count would pass
    noise for nuclei (one dense field: 55 such "nuclei", no true one).

    ``min_roundness`` (0: off): nor is a peak on a ridge rather than a blob
    -- a stained cell's dark rim just past its stain, where two cells' rims
    meet, a fibre -- whose :func:`blob_roundness` (smaller over larger
    principal curvature of ``grey`` at the nucleus scale) is below this. A
    nucleus three times as long as wide still reads 0.35.

    ``max_finer_ratio`` (0: off): nor is a peak whose blob is far smaller
    than a nucleus -- a dark speck of debris, which its darkness alone makes
    respond at the nucleus scale -- :func:`finer_blob_ratio` over this.

    ``smoothed``: ``(smoothed_stain(xgal, 1), smoothed_stain(xgal, d / 2))``
    when the caller has them (the brightfield pipeline shares them between
    its nucleus checks); ``evidence``: :func:`unstained_nucleus_evidence`
    of the same arrays, when the caller searches more than once.
    """
    d = float(diameter_px)
    fine, broad = smoothed if smoothed is not None else (smoothed_stain(xgal, 1.0), smoothed_stain(xgal, d / 2))
    stained = fine >= max_xgal

    ev = evidence if evidence is not None else unstained_nucleus_evidence(
        grey, xgal, diameter_px=d, max_xgal=max_xgal, smoothed=(fine, broad))

    def unstained_around(coords: np.ndarray) -> np.ndarray:
        ok = _ring_fraction(stained, coords, ring_nuclei * d) < max_ring_stained
        if min_ring_lower > 0 and len(coords):
            # a nucleus is denser than its own cytoplasm all round; the end of a
            # faint, elongated cell body is level with the rest of the body on one side
            ok &= ring_prominence(ev.density, coords, ring_nuclei * d, ring_contrast_sd * ev.noise) >= min_ring_lower
        if min_roundness > 0 and ok.any():
            ok[ok] = blob_roundness(grey, coords[ok], d) >= min_roundness
        if max_finer_ratio and ok.any():
            # a nucleus-sized blob, not a speck far smaller whose darkness
            # alone makes a response at the nucleus scale (measured last: a
            # few patches per candidate still in)
            ok[ok] = finer_blob_ratio(grey, coords[ok], d) <= max_finer_ratio
        return ok

    region = broad < ev.clear_stain + mirror_max_stain * max_xgal if mirror_band > 0 else None
    return _add_blob_peaks(nuclei, ev.response, diameter_px=d, snr=snr, spacing=spacing, accept=unstained_around,
                           band=band, mirror_band=mirror_band, mirror_region=region)


def drop_stain_edge_nuclei(nuclei: np.ndarray, xgal: np.ndarray, *, diameter_px: float, level: float = 0.03,
                           ring_nuclei: float = 0.75, min_stained: float = 0.25,
                           max_stained: float = 0.7, smoothed: np.ndarray | None = None) -> np.ndarray:
    """Drop brightfield nucleus candidates at the edge of stained cytoplasm.

    A stained cell's nucleus is enclosed by its blue; an unstained cell's
    by its own clear cytoplasm. On the circle ``ring_nuclei`` diameters
    around a real nucleus, X-gal (smoothed at 1 px, at least ``level`` OD)
    therefore covers nearly all or nearly none of it. A candidate with X-gal
    on ``min_stained`` up to ``max_stained`` of that circle sits at the edge
    of stained cytoplasm: the pale gap where two stained cells meet (a hole
    in the blue to the nuclear map), a notch in a stained cell's outline.
    (On 40 synthetic development fields: 383 of 1,125 false candidates, 50
    of 8,552 true ones.) ``smoothed``: ``smoothed_stain(xgal, 1)`` when
    the caller has it.
    """
    ids = _present(nuclei)
    if ids.size == 0:
        return nuclei
    stained = (smoothed_stain(xgal, 1.0) if smoothed is None else smoothed) >= level
    cents = _centroids(nuclei, ids)
    frac = _ring_fraction(stained, cents, ring_nuclei * float(diameter_px))
    drop = (frac >= min_stained) & (frac < max_stained)
    if not drop.any():
        return nuclei
    return drop_labels(nuclei, _lut(ids[drop], int(nuclei.max()) + 1))


def smoothed_stain(xgal: np.ndarray, sigma: float) -> np.ndarray:
    """X-gal OD clipped at zero, float32, Gaussian-smoothed at ``sigma`` px."""
    return filters.gaussian_filter(np.maximum(xgal, 0).astype(np.float32), sigma)


def _ring_fraction(mask: np.ndarray, coords: np.ndarray, radius: float, n: int = 32,
                   below: np.ndarray | None = None) -> np.ndarray:
    """Per point of ``coords`` ((k, 2) row, col), the fraction of ``n``
    points evenly spaced on the circle of ``radius`` px around it where
    ``mask`` is True (points past the image edge are clamped to it) -- or,
    with ``below`` (one value per point), where ``mask`` (then an image) is
    below that point's value."""
    ring = _ring_values(mask, coords, radius, n)
    if below is not None:
        return (ring < np.asarray(below)[:, None]).mean(axis=1)
    return ring.mean(axis=1)


def _ring_values(image: np.ndarray, coords: np.ndarray, radius: float, n: int = 32) -> np.ndarray:
    """(k, n): ``image`` at ``n`` points evenly spaced on the circle of
    ``radius`` px around each of ``coords`` ((k, 2) row, col; clamped to the
    image)."""
    ang = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c = np.asarray(coords, dtype=np.float64)
    ring = np.stack([c[:, :1] + radius * np.sin(ang)[None, :], c[:, 1:2] + radius * np.cos(ang)[None, :]], axis=-1)
    return _value_at(image, ring)


def drop_stain_peak_nuclei(nuclei: np.ndarray, xgal: np.ndarray, counterstain: np.ndarray, *, diameter_px: float,
                           peak_ratio: float = 2.0) -> np.ndarray:
    """Drop counterstained "nuclei" that are X-gal, not nuclei: stray X-gal
    crystals, dense enough that a little of their colour unmixes into the
    counterstain channel. X-gal is cytoplasmic: a nucleus is a pale hole in
    its cell's blue, or clear; a crystal is a peak of it. A candidate goes
    when its mean X-gal exceeds both its mean counterstain and
    ``peak_ratio`` x the median X-gal on the circle one ``diameter_px``
    round its centre.

    >>> x = np.zeros((60, 90), np.float32); c = np.zeros_like(x)
    >>> nuc = np.zeros((60, 90), np.int32)
    >>> nuc[27:33, 12:18] = 1; c[27:33, 12:18] = 0.2                      # an unstained nucleus
    >>> x[20:40, 35:55] = 0.4; nuc[27:33, 42:48] = 2; x[27:33, 42:48] = 0.2; c[27:33, 42:48] = 0.2  # a stained cell's
    >>> nuc[28:31, 72:75] = 3; x[28:31, 72:75] = 1.2; c[28:31, 72:75] = 0.1  # a crystal
    >>> np.unique(drop_stain_peak_nuclei(nuc, x, c, diameter_px=10)).tolist()
    [0, 1, 2]
    """
    lab = np.asarray(nuclei)
    ids, cents = _tested_candidates(lab, None)
    if ids.size == 0:
        return nuclei
    count, xsum, csum = _label_sums(lab, ids, xgal, counterstain)
    xin, cin = xsum / count, csum / count  # (ndi.mean's values)
    ring = np.median(_ring_values(xgal, cents, float(diameter_px)), axis=1)
    drop = (np.asarray(xin) > np.asarray(cin)) & (np.asarray(xin) > peak_ratio * np.maximum(ring, 0))
    if not drop.any():
        return nuclei
    return drop_labels(lab, _lut(ids[drop], int(lab.max()) + 1))


def stained_blob_response(nuclear_map: np.ndarray, xgal: np.ndarray, *, diameter_px: float,
                          min_xgal: float = 0.03, smoothed: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`blob_response` of a brightfield ``nuclear_map`` over the
    stained part of the field (``xgal`` smoothed at d / 2 -- ``smoothed``
    when the caller has it -- at least ``min_xgal`` OD): what
    :func:`add_enclosed_stained_nuclei` reads."""
    d = float(diameter_px)
    stained = (smoothed_stain(xgal, d / 2) if smoothed is None else smoothed) >= min_xgal
    return blob_response(nuclear_map, stained, diameter_px=d)


def add_enclosed_stained_nuclei(nuclei: np.ndarray, response: np.ndarray | None, xgal: np.ndarray, *,
                                diameter_px: float, snr: float = 3.0, spacing: float = 2.5,
                                min_xgal: float = 0.03, enclosure: float = 3.0, peak_reach: float = 1.25,
                                smoothed: np.ndarray | None = None, maps: StainMaps | None = None) -> np.ndarray:
    """Add the nuclei of stained cells that lie far from every nucleus found
    and are too weak blobs for the nuclear map's threshold, when the stain
    around them says they are a cell's own.

    In a confluent stained sheet the whole field's granular stain sets the
    noise of the blob ``response`` (:func:`stained_blob_response`), and
    clear nuclear holes read only 3-5 SDs: one cell in five lost its nucleus
    and was shared out among its neighbours. A peak at least ``snr`` SDs
    strong and more than ``spacing`` diameters from every nucleus (a cell's
    worth of stain with no nucleus) counts when either

    * X-gal, which is cytoplasmic, encloses it: on the circles 0.75 and 1
      diameter around it (the larger of the two at each of 32 angles) it is
      everywhere at least ``enclosure`` times its value at the peak (X-gal
      smoothed at d / 8) -- a nucleus, not a gap between granules, which
      the stain does not leave that clear, nor the paler margin of a cell,
      open on one side; or
    * it lies within ``peak_reach`` diameters of a local maximum of the
      X-gal smoothed at d / 2 (``smoothed`` when the caller has it; over a
      window of 2 d, at least ``min_xgal`` OD): the perinuclear stain is
      centred on the nucleus, while a pale patch in a large cell's
      periphery lies away from its stain's centre. (The stain is rarely
      even round the nucleus: in blurred fields of small stained cells
      its maximum lay 0.9-1.1 diameters off the true nucleus, whose hole
      the blur had filled; at 1.0 those cells lost their nucleus and
      were shared out.)

    Each becomes a disc of 0.45 diameters. On 60 synthetic development
    fields (plain brightfield) a confluent stained field went from detection
    F1 0.73 to 0.91; with the two checks off, pale patches of large stained
    cells in sparse fields became ~100 false nuclei a field. ``maps``:
    :func:`stain_maps` of the same arrays, when the caller has them.
    """
    d = float(diameter_px)
    if response is None:
        return nuclei

    def own_stain(coords: np.ndarray) -> np.ndarray:
        # (the maps are made only for a field that has such candidates)
        return stain_owns(xgal, coords, diameter_px=d, enclosure=enclosure, peak_reach=peak_reach,
                          min_xgal=min_xgal, smoothed=smoothed, maps=maps)

    return _add_blob_peaks(nuclei, response, diameter_px=d, snr=snr, spacing=spacing, accept=own_stain)


class StainMaps(NamedTuple):
    """What :func:`stain_owns` reads of a field's X-gal (:func:`stain_maps`)."""

    fine: np.ndarray  # X-gal (>= 0) smoothed at d / 8
    peaks: np.ndarray  # (P, 2) local maxima (2 d window) of X-gal smoothed at d / 2, >= min_xgal


def stain_maps(xgal: np.ndarray, *, diameter_px: float, min_xgal: float = 0.03,
               smoothed: np.ndarray | None = None) -> StainMaps:
    """The maps :func:`stain_owns` reads (made once when the caller asks
    more than once of the same field); ``smoothed``: X-gal smoothed at
    d / 2, when the caller has it."""
    import cv2

    d = float(diameter_px)
    x = np.maximum(xgal, 0).astype(np.float32)
    fine = filters.gaussian_filter(x, max(1.0, d / 8))
    broad = np.ascontiguousarray(filters.gaussian_filter(x, d / 2) if smoothed is None else smoothed,
                                 dtype=np.float32)
    size = int(2 * d) | 1
    peaks = np.argwhere((broad >= cv2.dilate(broad, np.ones((size, size), np.uint8))) & (broad >= min_xgal))
    return StainMaps(fine, peaks)


def stain_owns(xgal: np.ndarray, coords: np.ndarray, *, diameter_px: float, enclosure: float = 3.0,
               peak_reach: float = 1.25, min_xgal: float = 0.03, smoothed: np.ndarray | None = None,
               maps: StainMaps | None = None) -> np.ndarray:
    """Per point (row, col), whether the X-gal around it says it is a stained
    cell's nucleus: the stain encloses it (on the circles 0.75 and 1
    diameter around it, the larger of the two at each of 32 angles, at least
    ``enclosure`` x its value at the point; X-gal smoothed at d / 8) or is
    centred on it (a local maximum of X-gal smoothed at d / 2 -- ``smoothed``
    when the caller has it -- of at least ``min_xgal`` OD within
    ``peak_reach`` diameters). See :func:`add_enclosed_stained_nuclei`.
    ``maps``: :func:`stain_maps` of the same arguments, when the caller has
    them.
    """
    from scipy.spatial import cKDTree

    d = float(diameter_px)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if not len(coords):
        return np.zeros(0, dtype=bool)
    if maps is None:
        maps = stain_maps(xgal, diameter_px=d, min_xgal=min_xgal, smoothed=smoothed)
    fine = maps.fine
    ring = np.maximum(_ring_values(fine, coords, 0.75 * d), _ring_values(fine, coords, d)).min(axis=1)
    ok = ring >= enclosure * np.maximum(_value_at(fine, coords), 1e-4)
    if len(maps.peaks):
        ok |= cKDTree(maps.peaks).query(coords)[0] <= peak_reach * d
    return ok


def drop_unowned_stained_nuclei(nuclei: np.ndarray, xgal: np.ndarray, *, diameter_px: float,
                                min_xgal: float = 0.03, enclosure: float = 2.0, peak_reach: float = 1.25,
                                smoothed: np.ndarray | None = None, maps: StainMaps | None = None) -> np.ndarray:
    """Drop the brightfield nuclei lying in the stain that the stain does not
    own (:func:`stain_owns`, with a softer ``enclosure``).

    Without a nuclear stain the threshold over the nuclear map takes every
    pale hole in the blue: a stained cell's nucleus, but also the gaps
    between the granules of a large stained cell, each of which then splits
    it. A nucleus is the clearest spot of its cell's stain, which rings it
    or is centred on it; a gap is neither. Candidates whose centre lies
    where X-gal smoothed at d / 2 (``smoothed``) is at least ``min_xgal``
    are kept only when the stain rings them at ``enclosure`` x or peaks
    within ``peak_reach`` diameters. ``maps``: :func:`stain_maps` of the
    same arrays, when the caller has them.

    >>> yy, xx = np.mgrid[:80, :120]
    >>> r1 = np.hypot(yy - 40, xx - 30); r2 = np.hypot(yy - 40, xx - 90)
    >>> xgal = np.where(r1 < 25, np.where(r1 < 5, 0.02, 0.3), 0).astype(np.float32)  # a ringed hole
    >>> xgal += np.where(r2 < 25, 0.3 - 0.1 * (r2 < 5), 0).astype(np.float32)  # a faint dip off-centre ...
    >>> nuc = ((r1 < 4) * 1 + (np.hypot(yy - 40, xx - 105) < 4) * 2).astype(np.int32)  # ... and a candidate at its edge
    >>> sorted(np.unique(drop_unowned_stained_nuclei(nuc, xgal, diameter_px=8)).tolist())
    [0, 1]
    """
    nuclei = np.asarray(nuclei)
    ids = _present(nuclei)
    if ids.size == 0:
        return nuclei
    d = float(diameter_px)
    broad = smoothed_stain(xgal, d / 2) if smoothed is None else smoothed
    coords = _centroids(nuclei, ids)
    at = np.rint(coords).astype(np.intp)
    in_stain = broad[at[:, 0], at[:, 1]] >= min_xgal
    if not in_stain.any():
        return nuclei
    owned = np.ones(ids.size, dtype=bool)
    owned[in_stain] = stain_owns(xgal, coords[in_stain], diameter_px=d, enclosure=enclosure,
                                 peak_reach=peak_reach, min_xgal=min_xgal, smoothed=broad, maps=maps)
    drop = ids[~owned]
    if drop.size == 0:
        return nuclei
    return np.where(_lut(drop, int(nuclei.max()) + 1)[nuclei], 0, nuclei).astype(nuclei.dtype, copy=False)


def _add_discs(labels: np.ndarray, centres, radii) -> np.ndarray:
    """A copy of ``labels`` (int32) with a new label per disc (centre, radius)
    painted where it is still 0, numbered on from the largest label."""
    out = labels.astype(np.int32, copy=True)
    nxt = int(out.max()) + 1
    for (cy, cx), r in zip(centres, radii):
        y0, y1 = max(0, int(cy - r)), min(out.shape[0], int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(out.shape[1], int(cx + r) + 1)
        yy = (np.arange(y0, y1) - cy)[:, None] ** 2
        xx = (np.arange(x0, x1) - cx)[None, :] ** 2
        sub = out[y0:y1, x0:x1]
        sub[((yy + xx) <= r * r) & (sub == 0)] = nxt
        nxt += 1
    return out


def median_neighbour_distance(nuclei: np.ndarray, *, min_nuclei: int = 10) -> float | None:
    """Median distance (px) from each nucleus centre to the nearest other
    one: the field's nucleus spacing (None with fewer than ``min_nuclei``)."""
    ids = _present(nuclei)
    if ids.size < max(2, min_nuclei):
        return None
    return float(np.median(_neighbour_distances(nuclei, ids)))


def _neighbour_distances(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Distance (px) from the centre of each object ``ids`` of ``labels`` (at
    least two) to the nearest other one's."""
    from scipy.spatial import cKDTree

    cents = _centroids(labels, ids)
    dist, _ = cKDTree(cents).query(cents, k=2)
    return dist[:, 1]


def suppress_close_nuclei(nuclei: np.ndarray, score: np.ndarray, *, radius_px: float,
                          clear: np.ndarray | None = None, clear_radius_px: float | None = None) -> np.ndarray:
    """Keep, of nuclei whose centres lie within ``radius_px`` of each other,
    only the one with the highest total ``score`` (greedy non-maximum
    suppression). For brightfield maps, where the gaps between X-gal
    granules around a positive cell's nucleus look like small nuclei too:
    a cell has one nucleus, and two of its granule gaps lie up to about two
    nucleus diameters apart (centre to centre).

    Where there is no stain there are no granule gaps, and the nuclei of
    touching cells in a dense field can be closer than that: two nuclei
    whose centres both lie where ``clear`` (a pixel mask: no X-gal) are
    one only within ``clear_radius_px``.
    """
    ids = _present(nuclei)
    if ids.size < 2:
        return nuclei
    cents = _centroids(nuclei, ids)
    mass = _label_sums(nuclei, ids, np.maximum(score, 0))[1]
    flags = None if clear is None or clear_radius_px is None else _value_at(np.asarray(clear), cents)
    alive = _greedy_keep(cents, mass, radius_px, clear=flags, clear_radius=clear_radius_px)
    if alive.all():
        return nuclei
    lut = np.zeros(int(nuclei.max()) + 1, dtype=nuclei.dtype)
    lut[ids[alive]] = ids[alive]
    return lut[nuclei]


def outline_strength(image: np.ndarray, *, sigma_px: float) -> np.ndarray:
    """How surely each pixel lies on a thin dark line -- a cell's border --
    in noise units.

    ``image`` is a density (OD: a dark line is a ridge). Per pixel, the
    Hessian at ``sigma_px`` (about the line's blurred half-width) has
    eigenvalues lo <= hi; a line curves down steeply across itself and not
    along (lo << 0, hi ~ 0), a blob both ways (a nucleus, a granule: lo ~ hi
    < 0), so ``max(0, -lo) - max(0, -hi)`` answers lines, not blobs. The
    shoulder of a step (the edge of a stained patch, of a cell body) curves
    like a line too, but on a slope: the gradient magnitude over
    ``sigma_px``, which matches that curvature there and is 0 on a line's
    crest, is taken off. The result is divided by the robust SD (1.4826 x
    median absolute value) of the mixed derivative d2/drow dcol over the
    field: pixel noise sets it, as most of a field is flat or
    straight-edged, so the result compares between images of any noise and
    contrast.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(0, 0.01, (64, 64)).astype(np.float32)
    >>> line = img.copy(); line[:, 30:32] += 0.05  # a faint 2 px border
    >>> step = img.copy(); step[:, 31:] += 0.05    # the edge of a patch
    >>> zl, zs = outline_strength(line, sigma_px=1.5), outline_strength(step, sigma_px=1.5)
    >>> bool(zl[:, 30:32].mean() > 3 > np.median(zl)), bool(zs[:, 28:35].mean() < 1)
    (True, True)
    """
    import cv2

    sm = filters.gaussian_filter(np.asarray(image, dtype=np.float32), sigma_px)
    # derivatives of the smoothed image by central differences
    kw = dict(ddepth=cv2.CV_32F, borderType=cv2.BORDER_REFLECT)
    d1 = np.array([[-0.5, 0.0, 0.5]], np.float32)
    d2 = np.array([[1.0, -2.0, 1.0]], np.float32)
    gc, gr = cv2.filter2D(sm, kernel=d1, **kw), cv2.filter2D(sm, kernel=d1.T, **kw)
    hcc, hrr = cv2.filter2D(sm, kernel=d2, **kw), cv2.filter2D(sm, kernel=d2.T, **kw)
    hrc = cv2.filter2D(sm, kernel=d1.T @ d1, **kw)
    noise = 1.4826 * float(filters.median(np.abs(hrc[::2, ::2])))  # (a quarter of the pixels: the same to ~1 %)
    if not noise > 0:
        return np.zeros_like(sm)
    # One OpenCV pass per step, into the maps already made: on a large field
    # these float32 maps are memory-bound, and each fresh one costs its page
    # faults again.
    grad = cv2.magnitude(gr, gc, gr)
    half_diff = cv2.addWeighted(hrr, 0.5, hcc, -0.5, 0.0, gc)
    half = cv2.addWeighted(hrr, 0.5, hcc, 0.5, 0.0, hrr)
    spread = cv2.magnitude(half_diff, hrc, hcc)
    # max(0, -lo) - max(0, -hi) with lo, hi = half -/+ spread
    line = cv2.subtract(spread, half, half_diff)
    cv2.max(line, 0.0, line)
    cv2.min(line, cv2.add(spread, spread, hrc), line)
    cv2.scaleAdd(grad, -1.0 / float(sigma_px), line, line)
    cv2.max(line, 0.0, line)
    cv2.multiply(line, 1.0 / noise, line)
    return line


def borders_on_outlines(cells: np.ndarray, nuclei: np.ndarray, strength: np.ndarray, *, band_px: float,
                        clear_px: float, low: float, high: float,
                        shared: np.ndarray | None = None, wide_px: float = 0.0,
                        wide: np.ndarray | None = None) -> np.ndarray:
    """Move the borders between touching cells onto the outlines the image shows.

    Territories drawn from nuclei put a border by distance; where the cells'
    own edges show (a faint dark line: :func:`outline_strength`), that line
    is the border. Each cell keeps its core -- its pixels farther than
    ``band_px`` from any other cell, and its nucleus -- and the band around
    each shared border is flooded again from the cores (watershed) over the
    outline map, rising from 0 at ``low`` noise units to 1 at ``high``: a
    flood stops at a continuous outline and goes around a fragment of noise,
    and where no line shows the band floods evenly from both sides, back to
    the border it had. No line counts within ``clear_px`` of a nucleus (its
    own edge, the stain ringing it). Outer edges (cell against background)
    and cells with no core (small, nucleus-less) are left as they are.
    ``shared``: the cells' shared borders
    (``morph.inner_boundaries(cells, shared_only=True)``), when the caller
    has them.

    ``wide`` (per label: the cells whose borders may move farther) and
    ``wide_px``: the borders between two such cells are then flooded again,
    over a band ``wide_px`` wide, from the cores those cells keep beyond it
    (only their own pixels: no other cell gains or loses a pixel there).
    """
    import cv2

    cells = np.asarray(cells)
    if shared is None:
        shared = morph.inner_boundaries(cells, shared_only=True)
    if not shared.any():
        return cells
    land = np.clip((np.asarray(strength, dtype=np.float32) - low) / max(high - low, 1e-6), 0, 1)
    if clear_px > 0 and nuclei.any():
        land[cv2.dilate((nuclei > 0).view(np.uint8), morph.disc(clear_px)).view(bool)] = 0
    near = cv2.dilate(shared.view(np.uint8), morph.disc(band_px)).view(bool)
    out = _reflood(cells, near & (cells > 0), nuclei, land)
    if wide is not None and wide_px > band_px:
        member = wide[out] & (out > 0)
        # (the borders between two such cells: with the others cleared, the shared ones)
        both = morph.inner_boundaries(np.where(member, out, 0), shared_only=True)
        if both.any():
            near = cv2.dilate(both.view(np.uint8), morph.disc(wide_px)).view(bool) & member
            out = _reflood(out, near, nuclei, land, within=member)
    return out


def _reflood(cells: np.ndarray, band: np.ndarray, nuclei: np.ndarray, land: np.ndarray, *,
             within: np.ndarray | None = None) -> np.ndarray:
    """``cells`` with the ``band`` pixels (less the nuclei) flooded again
    over ``land`` from the cells' pixels bordering it (:func:`_flood_half`);
    a cell left without a core keeps all its pixels. ``within``: the pixels
    whose cells take part (default: every labelled pixel)."""
    import cv2

    inside = (cells > 0) if within is None else within
    markers = np.where(band & (nuclei == 0), 0, cells).astype(np.int32)
    # a cell left without a core keeps all its pixels
    n = int(cells.max()) + 1
    cored = np.bincount(markers[inside], minlength=n) > 0
    coreless = ~cored[cells] & inside
    markers[coreless] = cells[coreless]
    # flooded: the band, from the core pixels that border it
    free = (markers == 0) & inside
    zone = cv2.dilate(free.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool) & inside
    # (on 2x2 blocks: the band holds most of a dense field's pixels and the
    # flood was most of the step's time; a border placed to the nearest block
    # moves a cell's area by well under 1 %)
    out = _flood_half(land, np.where(zone & ~free, markers, 0), zone)
    return np.where(free, out, cells).astype(cells.dtype, copy=False)


# A 2x2 block's land in the border flood is its highest pixel's, less this
# share of the full scale (stretched back to 0-1): the highest of four pixels
# of noise lies higher than one, and a band of pure noise, floored at 0 from
# the outline map's low end, steered the border by 2-8 px (1-2 at full
# resolution); from half way up the ramp, 0.6-2.8 px.
HALF_FLOOD_LAND_FLOOR = 0.5


def _flood_half(land: np.ndarray, seeds: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """``watershed(land, seeds, mask=zone)`` on 2x2 blocks, 4x fewer pixels
    to flood: a block's land is its highest pixel's (a line 1 px wide
    survives), floored at :data:`HALF_FLOOD_LAND_FLOOR`; its seed its first
    seeded pixel's (row by row); it lies in the zone if any of its pixels
    does. Each pixel then takes its block's label.

    >>> land = np.zeros((2, 8)); land[:, 4] = 1.0
    >>> seeds = np.zeros((2, 8), int); seeds[:, 0], seeds[:, 7] = 1, 2
    >>> _flood_half(land, seeds, np.ones((2, 8), bool))[0].tolist()
    [1, 1, 1, 1, 2, 2, 2, 2]
    """
    m, n = land.shape
    pm, pn = m + (m % 2), n + (n % 2)

    def quarters(a: np.ndarray, fill) -> list[np.ndarray]:
        if (pm, pn) != (m, n):
            a = np.pad(a, ((0, pm - m), (0, pn - n)), constant_values=fill)
        return [a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]]

    q = quarters(np.asarray(land, dtype=np.float32), 0)
    top = np.maximum(np.maximum(q[0], q[1]), np.maximum(q[2], q[3]))
    land2 = np.clip((top - HALF_FLOOD_LAND_FLOOR) / (1 - HALF_FLOOD_LAND_FLOOR), 0, 1)
    q = quarters(np.asarray(zone, dtype=bool), False)
    zone2 = (q[0] | q[1]) | (q[2] | q[3])
    q = quarters(seeds, 0)
    seeds2 = q[0].copy()
    for other in q[1:]:
        np.copyto(seeds2, other, where=seeds2 == 0)
    out2 = watershed(land2, seeds2, mask=zone2)
    out = np.empty((pm, pn), dtype=out2.dtype)
    for r in (0, 1):
        for c in (0, 1):
            out[r::2, c::2] = out2
    return out[:m, :n]


class PolarPaths(NamedTuple):
    """Closed paths around nuclei (:func:`polar_outline_paths`)."""

    ids: np.ndarray  # (N,) nucleus labels
    centres: np.ndarray  # (N, 2) row, col (px)
    theta: np.ndarray  # (K,) ray angles (radians)
    radius: np.ndarray  # (N, K) the path's distance from the centre along each ray (px)
    strength: np.ndarray  # (N, K) the outline strength the path crosses on each ray


def polar_outline_paths(strength: np.ndarray, nuclei: np.ndarray, *, diameter_px: float, n_rays: int = 64,
                        max_radius_nuclei: float = 4.0, max_step_px: int = 2,
                        barrier: np.ndarray | None = None, chunk: int = 512,
                        centres: np.ndarray | None = None) -> PolarPaths:
    """Per nucleus, the closed path around it along the strongest outline.

    ``n_rays`` rays leave each nucleus's centre, sampled every pixel out to
    ``max_radius_nuclei`` nucleus diameters on the ``strength`` map
    (:func:`outline_strength`: a thin dark line scores its noise units). A
    ray stops where it enters another nucleus or a ``barrier`` pixel -- past
    that lies another cell -- and nothing within a quarter diameter of the
    nucleus's own edge counts (its rim): both score -2 per sample, so no
    path goes there; outside the image scores 0 (a cell cut by the border
    ends there). Dynamic programming over the angles then finds, per
    nucleus, the path r(theta) of greatest summed strength whose radius
    moves by at most ``max_step_px`` between neighbouring rays (the outline
    of a cell is a smooth closed curve round its nucleus), over one and a
    half turns, keeping the last turn so the path meets itself. A faint
    outline with gaps is still followed (the path bridges a gap at the
    radius on either side), where a threshold on the map would leak through
    every gap. Nuclei are taken ``chunk`` at a time (memory). ``centres``:
    the nuclei's centroids (:func:`_centroids`, in label order), when the
    caller has them.

    >>> yy, xx = np.mgrid[:64, :64]
    >>> ring = (np.abs(np.hypot(yy - 32, xx - 32) - 15) < 1).astype(np.float32) * 5
    >>> nuc = (np.hypot(yy - 32, xx - 32) < 4).astype(np.int32)
    >>> p = polar_outline_paths(ring, nuc, diameter_px=8)
    >>> bool(np.all(np.abs(p.radius - 15) <= 1.5)), bool(p.strength.mean() > 4)
    (True, True)
    """
    z = np.asarray(strength, dtype=np.float32)
    nuclei = np.asarray(nuclei)
    ids = _present(nuclei)
    if centres is not None:
        cents = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    else:
        cents = _centroids(nuclei, ids) if ids.size else np.zeros((0, 2))
    theta = np.arange(n_rays) * (2 * np.pi / n_rays)
    d = float(diameter_px)
    t = np.arange(1, int(np.ceil(max_radius_nuclei * d)) + 1, dtype=np.float32)
    radius = np.zeros((ids.size, n_rays), dtype=np.float32)
    along = np.zeros((ids.size, n_rays), dtype=np.float32)
    if ids.size == 0:
        return PolarPaths(ids, cents, theta, radius, along)
    own_r = np.sqrt(_areas(nuclei)[ids] / np.pi)
    sin, cos = np.sin(theta).astype(np.float32), np.cos(theta).astype(np.float32)
    h, w = z.shape
    n_t, step = t.size, int(max_step_px)
    turns = n_rays + n_rays // 2
    for lo in range(0, ids.size, chunk):
        sl = slice(lo, min(lo + chunk, ids.size))
        c = cents[sl].astype(np.float32)
        n = c.shape[0]
        iy = np.rint(c[:, 0, None, None] + sin[None, :, None] * t).astype(np.int32)
        ix = np.rint(c[:, 1, None, None] + cos[None, :, None] * t).astype(np.int32)
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        np.clip(iy, 0, h - 1, out=iy)
        np.clip(ix, 0, w - 1, out=ix)
        flat = iy.astype(np.intp)
        flat *= w
        flat += ix
        zz = z.take(flat)
        lab = nuclei.take(flat)
        blocked = (lab != 0) & (lab != ids[sl, None, None])
        if barrier is not None:
            blocked |= barrier.take(flat)
        blocked &= inside
        off = np.logical_or.accumulate(blocked, axis=2)
        off |= t < (own_r[sl, None, None] + 0.25 * d)
        zz[off] = -2.0
        zz[~inside] = 0.0
        # forward: best summed strength reaching each radius at each angle
        scores = np.empty((turns, n, n_t), dtype=np.float32)
        scores[0] = zz[:, 0]
        pad = np.full((n, n_t + 2 * step), -np.inf, dtype=np.float32)
        for j in range(1, turns):
            pad[:, step: step + n_t] = scores[j - 1]
            best = pad[:, 0: n_t].copy()
            for k in range(1, 2 * step + 1):
                np.maximum(best, pad[:, k: k + n_t], out=best)
            scores[j] = best + zz[:, j % n_rays]
        # back: from the best end, the neighbouring radius each step came from
        rows = np.arange(n)
        pos = np.empty((turns, n), dtype=np.intp)
        pos[-1] = np.argmax(scores[-1], axis=1)
        offsets = np.arange(-step, step + 1)
        for j in range(turns - 1, 0, -1):
            cand = pos[j][:, None] + offsets[None, :]
            valid = (cand >= 0) & (cand < n_t)
            prev = np.where(valid, scores[j - 1][rows[:, None], cand.clip(0, n_t - 1)], -np.inf)
            pos[j - 1] = cand[rows, np.argmax(prev, axis=1)]
        last = pos[turns - n_rays:]  # angles (turns - n_rays .. turns - 1) % n_rays
        order = np.argsort(np.arange(turns - n_rays, turns) % n_rays)
        idx = last[order].T
        radius[sl] = t[idx]
        along[sl] = zz[rows[:, None], np.arange(n_rays)[None, :], idx]
    return PolarPaths(ids, cents, theta, radius, along)


def outlined_cells(strength: np.ndarray, nuclei: np.ndarray, *, diameter_px: float, density: np.ndarray,
                   density_sd: float, clear: np.ndarray | None = None, barrier: np.ndarray | None = None,
                   min_strength: float = 2.0, field_strength: float = 1.5, side_px: float = 4.0,
                   max_step_sd: float = 2.0, field_step_sd: float = 1.0, min_nuclei: int = 10) -> np.ndarray:
    """Cells whose own outline shows where their body does not: the mask of
    the star-shaped regions closed by their outlines.

    Some unstained cells are as clear as glass inside, or at the level a
    lamp fitted to their faint cytoplasm calls glass, yet show a thin dark
    outline; a threshold on density sees only the nucleus and a scrap of
    the outline, and the cell comes out a small disc. Around each nucleus
    whose centre lies in ``clear`` (out of the X-gal: a stained cell shows
    its body), :func:`polar_outline_paths` finds the closed path along the
    strongest outline (rays stop at ``barrier``: the stain of a neighbour).
    A path is a cell's outline when the ``strength`` it crosses averages
    ``min_strength`` noise units or more and it is a *line*, not the edge
    of a body denser than its surroundings (which the foreground already
    follows, and where the path can wander): the ``density`` (smoothed OD)
    ``side_px`` inside the path exceeds that outside by at most
    ``max_step_sd`` x ``density_sd`` (median over the rays). The field must
    show such outlines at all: the median path around its clear nuclei
    (``min_nuclei`` or more) averages ``field_strength`` or more, and the
    median step of the paths strong enough is at most ``field_step_sd`` --
    else nothing (fields of soft-edged cells, whose edges the map answers
    too, with steps of 4-10 SDs).

    >>> yy, xx = np.mgrid[:120, :120]
    >>> z = np.zeros((120, 120), np.float32); nuc = np.zeros((120, 120), np.int32)
    >>> for k, (cy, cx) in enumerate([(30, 30), (30, 90), (90, 30), (90, 90)]):
    ...     r = np.hypot(yy - cy, xx - cx)
    ...     z[np.abs(r - 20) < 1] = 4; nuc[r < 4] = k + 1
    >>> m = outlined_cells(z, nuc, diameter_px=8, density=np.zeros_like(z), density_sd=0.01, min_nuclei=4)
    >>> int(m[30, 45]), int(m[30, 55]), int(m.sum() > 4 * 3.14 * 18 ** 2)
    (1, 0, 1)
    """
    import cv2

    out = np.zeros(np.asarray(strength).shape, dtype=bool)
    nuclei = np.asarray(nuclei)
    ids = _present(nuclei)
    cents = _centroids(nuclei, ids) if ids.size else np.zeros((0, 2))
    if clear is not None and ids.size:
        c = np.rint(cents).astype(np.intp)
        keep = clear[c[:, 0], c[:, 1]]
        ids, cents = ids[keep], cents[keep]
        nuclei = np.where(_lut(ids, int(nuclei.max()) + 1)[nuclei], nuclei, 0)
    if ids.size < min_nuclei:
        return out
    paths = polar_outline_paths(strength, nuclei, diameter_px=diameter_px, barrier=barrier, centres=cents)
    mean = paths.strength.mean(axis=1)
    if np.median(mean) < field_strength:
        return out
    cy, cx = paths.centres[:, 0, None], paths.centres[:, 1, None]
    sin, cos = np.sin(paths.theta)[None], np.cos(paths.theta)[None]

    def density_at(r: np.ndarray) -> np.ndarray:
        yy = np.rint(cy + sin * r).astype(np.intp).clip(0, out.shape[0] - 1)
        xx = np.rint(cx + cos * r).astype(np.intp).clip(0, out.shape[1] - 1)
        return density[yy, xx]

    step = np.median(density_at(paths.radius - side_px) - density_at(paths.radius + side_px), axis=1)
    step = step / max(float(density_sd), 1e-6)
    lined = mean >= min_strength
    if not lined.any() or np.median(step[lined]) > field_step_sd:
        return out
    ok = lined & (step <= max_step_sd)
    for k in np.flatnonzero(ok):
        pts = np.stack([cx[k, 0] + cos[0] * paths.radius[k], cy[k, 0] + sin[0] * paths.radius[k]], axis=1)
        cv2.fillPoly(out.view(np.uint8), [np.rint(pts).astype(np.int32)], 1)
    return out


def drop_empty_rings(foreground: np.ndarray, nuclei: np.ndarray, *, min_hole_px: float,
                     stained: np.ndarray | None = None, min_hole_share: float = 0.1,
                     min_depth_px: float = 0.0, max_edge_solidity: float = 0.6) -> np.ndarray:
    """``foreground`` less its rings: pieces that hold no nucleus round a
    hole of at least ``min_hole_px`` and ``min_hole_share`` of the piece's
    filled area, holding none either (nor, given ``stained``, any X-gal:
    dust is grey). With ``min_depth_px``, also the strands: such empty
    pieces of at least ``min_hole_px`` that nowhere lie ``min_depth_px``
    deep (distance to their edge) -- within half that of the image's edge
    only those curled round (solidity under ``max_edge_solidity``).

    Out-of-focus dust on the optics shows as soft grey rings as dense as
    faint cells; such a ring clears the foreground's limit, its inside does
    not. A cell is densest round its centre, where its nucleus is, so a
    piece with a clear middle and no nucleus in it or round it is no cell
    (once filled it made one large round "cell", or several slices of the
    ring). Pieces are taken with their holes (4-connected fill), so a ring
    with a nucleus anywhere in or on it stays. A ring's middle is a large
    part of it (dust rings: 20-34 % of the filled disc); a crowd of cells
    whose nuclei all went unseen encloses glass too, but each gap is a
    small part of the crowd (0.3-4 % on a second renderer's fields, whose
    whole crowds the hole area alone took for dust).

    A ring broken by the foreground's threshold has no hole, but it is a
    strand: a cell holds its nucleus and cytoplasm round it, so somewhere
    it is more than a nucleus wide. Of 790 nucleus-less, stain-free pieces
    away from the image's edge on eight development sets (two renderers),
    245 held most of a true cell, none of them less than 0.74 nucleus
    diameters deep; 500 of the other 545 lay under 0.6 (the dust rings
    broken open, strands of debris).

    >>> yy, xx = np.mgrid[:60, :60]
    >>> d = np.hypot(yy - 30, xx - 30)
    >>> ring = (d > 12) & (d < 18)
    >>> nuc = np.zeros((60, 60), np.int32)
    >>> int(drop_empty_rings(ring, nuc, min_hole_px=50).sum())
    0
    >>> nuc[30, 30] = 1
    >>> bool((drop_empty_rings(ring, nuc, min_hole_px=50) == ring).all())
    True
    """
    fg = np.asarray(foreground, dtype=bool)
    filled = morph.fill_holes(fg)
    lab, n = morph.label(filled)
    if n == 0:
        return fg.copy()
    holes = filled & ~fg
    held = np.bincount(lab[np.asarray(nuclei) > 0], minlength=n + 1)
    if stained is not None:
        held += np.bincount(lab[np.asarray(stained, dtype=bool)], minlength=n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    # each piece's largest hole
    hole_lab, n_holes = morph.label(holes)
    largest = np.zeros(n + 1, dtype=np.int64)
    if n_holes:
        hole_area = np.bincount(hole_lab.ravel(), minlength=n_holes + 1)
        hole_piece = np.zeros(n_holes + 1, dtype=np.int64)
        hole_piece[hole_lab[holes]] = lab[holes]
        np.maximum.at(largest, hole_piece[1:], hole_area[1:])
    ring = (held == 0) & (largest >= min_hole_px) & (largest >= min_hole_share * area)
    if min_depth_px > 0:
        strand = (held == 0) & (area >= min_hole_px) & ~ring
        strand[0] = False
        if strand.any():
            sel = strand[lab]
            deepest = np.zeros(n + 1, dtype=np.float32)
            np.maximum.at(deepest, lab[sel], filters.distance_transform(sel)[sel])
            strand &= deepest < min_depth_px
        if strand.any():
            # a cell cut by the image's edge is a thin sliver along it (the
            # foreground can stop a few pixels short of the edge), but a
            # convex one: near the edge only a curled strand goes
            e = int(max(2.0, 0.5 * min_depth_px))
            near = np.zeros(n + 1, dtype=bool)
            near[np.unique(np.r_[lab[:e].ravel(), lab[-e:].ravel(), lab[:, :e].ravel(), lab[:, -e:].ravel()])] = True
            near &= strand
            if near.any():
                ids = np.flatnonzero(near)
                solidity = area[ids] / np.maximum(convex_areas(np.where(near[lab], lab, 0), ids), 1.0)
                strand[ids[solidity >= max_edge_solidity]] = False
            ring |= strand
    ring[0] = False
    if not ring.any():
        return fg.copy()
    return fg & ~ring[lab]


def body_depth(foreground: np.ndarray, nuclei: np.ndarray, *, glass: np.ndarray | None = None) -> np.ndarray:
    """Distance to the edge of the cell bodies: the foreground with the
    nuclei, holes filled (float32) -- but not a hole holding ``glass``
    (bare glass the lamp estimate saw, when given): glass enclosed by a ring
    of touching cells lies between them, and filled it would merge their
    bodies into one deep piece with no lobes."""
    return filters.distance_transform(morph.fill_holes(foreground | (nuclei > 0), unless=glass))


def _label_max(image: np.ndarray, labels: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label in ``which``: its largest value of ``image`` and where it
    first occurs in raster order (row, col) -- what ``ndi.maximum`` and
    ``ndi.maximum_position`` give, ~15x faster on a field's labels."""
    n = int(labels.max()) + 1
    sel = np.zeros(n, dtype=bool)
    sel[which] = True
    idx = np.flatnonzero(sel[labels])
    lab = labels.ravel()[idx]
    v = image.ravel()[idx]
    top = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(top, lab, v)
    at_top = v == top[lab]
    hit = idx[at_top]
    found, first = np.unique(lab[at_top], return_index=True)
    pos = np.zeros((n, 2), dtype=np.float64)
    pos[found] = np.column_stack(np.unravel_index(hit[first], image.shape))
    return top[which], pos[which]


def typical_unstained_nuclei(nuclei: np.ndarray, response: np.ndarray | None, stained: np.ndarray, *,
                              diameter_px: float, ring_nuclei: float = 0.75,
                              relative: tuple[float, float] = (0.5, 2.0), min_count: int = 10,
                              reference: np.ndarray | None = None, min_reference: float = 0.0) -> np.ndarray:
    """Pixels of the candidates that are as plainly an unstained cell's
    nucleus as the field's own: no ``stained`` pixel on the circle
    ``ring_nuclei`` diameters round the candidate's centre, and a blob
    ``response`` (:func:`blob_response`, noise SDs, 0 in the stain) at its
    centre between ``relative`` times the median response of the field's
    reference candidates: those out of the stain whose centre lies in
    ``reference`` (all of them without it). A weaker blob is a pale
    margin's mottling, a far stronger one dark debris. None qualify when
    fewer than ``min_count`` candidates make the reference, or their median
    is below ``min_reference`` (nuclei that barely clear the noise are no
    yardstick: in a field of mostly stained cells the candidates out of the
    stain are mostly their pale margins).

    >>> n = np.zeros((40, 40), int); r = np.zeros((40, 40))
    >>> for i, (y, x) in enumerate([(5, 5), (5, 15), (5, 25), (15, 5), (15, 15), (15, 25),
    ...                             (25, 5), (25, 15), (25, 25), (35, 5), (35, 15)]):
    ...     n[y - 1:y + 2, x - 1:x + 2] = i + 1; r[y, x] = 10.0
    >>> r[35, 15] = 3.0                       # a weak blob
    >>> m = typical_unstained_nuclei(n, r, np.zeros((40, 40), bool), diameter_px=4)
    >>> bool(m[5, 5]), bool(m[35, 15])
    (True, False)
    """
    ids, cents = _tested_candidates(nuclei, None)
    z = _value_at(np.asarray(response), cents).astype(float) if response is not None else np.zeros(ids.size)
    clear = z > 0  # (no response is measured in the stain)
    ref = clear if reference is None else clear & _value_at(np.asarray(reference, dtype=bool), cents)
    if np.count_nonzero(ref) < min_count:
        return np.zeros(nuclei.shape, dtype=bool)
    med = float(np.median(z[ref]))
    if med < min_reference:
        return np.zeros(nuclei.shape, dtype=bool)
    ok = clear & (z >= relative[0] * med) & (z <= relative[1] * med)
    if ok.any():
        ok[ok] = _ring_fraction(np.asarray(stained, dtype=bool), cents[ok], ring_nuclei * float(diameter_px)) == 0
    return _lut(ids[ok], int(nuclei.max()) + 1)[nuclei]


def drop_rim_nuclei(nuclei: np.ndarray, foreground: np.ndarray, *, min_depth_px: float,
                    max_per_piece: int = 10, depth: np.ndarray | None = None,
                    rel_depth: float = 0.0, neck: float = 0.7, exempt: np.ndarray | None = None) -> np.ndarray:
    """Drop nucleus candidates lying on the rim of a cell body that holds a
    deeper candidate: centre less than ``min_depth_px`` inside the (hole
    filled) foreground while another candidate of the same foreground piece
    lies deeper. Without a nuclear stain the pale margin of a stained cell
    (stain thins towards the edge) passes for a nucleus; a real nucleus
    sits inside its cell with cytoplasm around it. Only in pieces holding
    at most ``max_per_piece`` candidates (a cell or a small clump): the rim
    of a sheet is lined with the nuclei of cells beside it whose cytoplasm
    is invisible. Candidates outside the foreground, or alone in their
    piece, are kept. ``depth``: :func:`body_depth` of the same
    ``foreground`` and ``nuclei``, when the caller has it.

    With ``rel_depth`` > 0, a candidate (in such a piece) less than
    ``rel_depth`` times as deep as another candidate of the piece is dropped
    too when the straight way to that one crosses no neck (the depth never
    falls below ``neck`` x its own): one cell's pale margin, however deep
    the cell, rather than the nucleus of a neighbour, which sits in a lobe
    of its own (see :func:`add_lobe_seeds`). Every such deeper candidate is
    tried, not only the piece's deepest: in a clump of touching cells that
    one can lie in another cell, across a neck, while the margin's own
    cell's nucleus lies just inside it (enlarged stained cells touching in
    a sparse field, their granule gaps at the margin taken for nuclei: a
    fresh JPEG field 6.1 -> 2.2 pp).

    A piece whose every candidate is that shallow next to the piece's own
    deepest point (the top of its depth map) is a cell whose nucleus went
    unseen while its margin passed for nuclei (a faint stained cell whose
    stain fades to the edge): its candidates are measured against that
    top in the same way, and :func:`add_lobe_seeds` then seeds the cell at
    its top. On a second renderer's plain-brightfield fields this took
    detection F1 from 0.922 to 0.930 (8 fields; 0.969 to 0.970 on 20
    others); on 60 of our own development fields it moved by -0.0005.

    ``exempt``: where a candidate's centre lies where this mask is True it
    is kept whatever its depth (it still counts as the deepest of its
    piece for the others).
    """
    ids = _present(nuclei)
    if ids.size < 2:
        return nuclei
    if depth is None:
        depth = body_depth(foreground, nuclei)
    comp, _ = morph.label(depth > 0)
    cents = np.round(_centroids(nuclei, ids)).astype(np.int64)
    cy = np.clip(cents[:, 0], 0, nuclei.shape[0] - 1)
    cx = np.clip(cents[:, 1], 0, nuclei.shape[1] - 1)
    dep, piece = depth[cy, cx], comp[cy, cx]
    # each candidate's piece's deepest candidate
    order = np.lexsort((-dep, piece))  # by piece, deepest first
    pieces, first = np.unique(piece[order], return_index=True)
    top = np.zeros(int(piece.max()) + 1, dtype=np.intp)
    top[pieces] = order[first]
    k = top[piece]
    deepest = dep[k]
    count = np.bincount(piece, minlength=top.size)[piece]
    drop = (piece > 0) & (dep < min_depth_px) & (deepest >= min_depth_px) & (count <= max_per_piece)
    if rel_depth > 0:
        # a candidate less than rel_depth as deep as another of its piece --
        # any, not only the deepest, which in a clump may lie in another
        # cell -- with no neck between them lies in that one's cell: its pale
        # margin
        sel = np.flatnonzero((piece > 0) & (count <= max_per_piece) & (dep < rel_depth * deepest)
                             & (k != np.arange(ids.size)) & ~drop)
        a, b = np.nonzero((piece[sel][:, None] == piece[None, :]) & (rel_depth * dep[None, :] > dep[sel][:, None]))
        i, deeper = sel[a], b
        if i.size:
            p0 = np.column_stack([cy[i], cx[i]]).astype(np.float64)
            p1 = np.column_stack([cy[deeper], cx[deeper]]).astype(np.float64)
            # ... and sits on the body's slope, not at the top of a lobe of
            # its own: half its depth towards the deeper one, the body is 1.25x
            # deeper (a small neighbour joined broadly to a large cell has
            # no neck, but its nucleus is at its own lobe's top)
            step = (p1 - p0) / np.maximum(np.hypot(*(p1 - p0).T), 1e-9)[:, None]
            q = np.rint(p0 + step * (0.5 * dep[i])[:, None]).astype(np.intp)
            slope = depth[q[:, 0], q[:, 1]] >= 1.25 * dep[i]
            drop[i[(_min_along(depth, p0, p1) >= neck * dep[i]) & slope]] = True
    if rel_depth > 0:
        # a piece whose every candidate lies on its slope (the deepest one
        # less than rel_depth as deep as the piece itself): the candidates
        # are one cell's margin -- its nucleus unseen -- and are measured
        # against the top of the piece instead, where add_lobe_seeds puts
        # the cell's seed
        cand = (piece > 0) & (count <= max_per_piece) & ~drop
        if cand.any():
            which = np.unique(piece[cand])
            top_depth = np.zeros(top.size, dtype=np.float64)
            top_depth[which], at_which = _label_max(depth, comp, which)
            i = np.flatnonzero(cand & (deepest < rel_depth * top_depth[piece]))
            if i.size:
                at = np.zeros((top.size, 2), dtype=np.float64)
                at[which] = at_which
                p0 = np.column_stack([cy[i], cx[i]]).astype(np.float64)
                drop[i[_min_along(depth, p0, at[piece[i]]) >= neck * dep[i]]] = True
    if exempt is not None:
        drop &= ~exempt[cy, cx]
    if not drop.any():
        return nuclei
    return drop_labels(nuclei, _lut(ids[drop], int(nuclei.max()) + 1))


def stain_presence(xgal_smoothed: np.ndarray, *, level: float) -> np.ndarray:
    """X-gal presence in [0, 1] from a smoothed X-gal OD map: 0 up to half of
    ``level``, 1 from 1.5 x ``level``, a linear ramp between."""
    return np.clip(np.asarray(xgal_smoothed, dtype=np.float32) / np.float32(level) - np.float32(0.5), 0, 1)


# stained_nuclei's learnt level: the typical stained cell's score the anchored
# threshold is told of (classify's default_positive_threshold); it looks for
# unstained cells only below 0.6 x this.
RING_POSITIVE_LIKE_OD = 0.10


def stained_nuclei(nuclei: np.ndarray, xgal_smoothed: np.ndarray, *, level: float, ring_px: int,
                   nearest: np.ndarray | None = None, learn: bool = True) -> np.ndarray:
    """Ids of the nuclei whose surroundings are stained: the mean of the
    (smoothed) X-gal OD over the ring ``ring_px`` wide around each nucleus
    (pixels nearer to it than to any other nucleus; ``nearest``, the label
    of the nearest nucleus per pixel, when the caller has it) above
    ``level`` -- SA-β-gal is perinuclear.

    ``learn``: in a field of many stained cells, haze and the blur of their
    stain lift the rings of unstained cells wedged between them over a
    fixed ``level`` (one dense development field: 81 of its 177 unstained
    cells). With 10 or more nuclei the level is raised, never lowered, to
    the threshold the field's own ring means show above their unstained
    population (:func:`sabgal.classify.negative_anchored_threshold`, the
    rule that calls cells positive, on this one number per nucleus).
    """
    ids = _present(nuclei)
    if ids.size == 0:
        return ids
    ring = np.flatnonzero(morph.dilate_cross(nuclei > 0, iterations=max(1, int(ring_px))) & (nuclei == 0))
    if nearest is None:
        _, (iy, ix) = distance_with_indices(nuclei == 0)
        nearest = _at(nuclei, iy, ix)
    # ``ndi.mean(xgal, labels=owner, index=ids)`` with owner = nearest on the
    # ring, 0 elsewhere: the same per-label sums (float64, raster order),
    # over the ring's pixels only
    owner = np.asarray(nearest).ravel()[ring].astype(np.intp)
    n = max(int(owner.max(initial=0)), int(ids[-1])) + 1
    sums = np.bincount(owner, np.asarray(xgal_smoothed).ravel()[ring].astype(np.float64), n)[ids]
    counts = np.bincount(owner, minlength=n)[ids].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nan_to_num(sums / counts, nan=0.0)
    if learn and mean.size >= 10:
        from .classify import negative_anchored_threshold

        learnt, _ = negative_anchored_threshold(mean, floor=level, positive_like=RING_POSITIVE_LIKE_OD)
        if learnt > level:  # (NaN: no unstained population to anchor on)
            level = learnt
    return ids[mean > level]


def seam_map(od: np.ndarray, foreground: np.ndarray, *, sigma_px: float,
             min_px: int = 100) -> np.ndarray | None:
    """How pale each pixel is against the cells' own density, for
    :func:`size_weighted_territories`: ``od`` smoothed at ``sigma_px``,
    scaled so that its 95th percentile over ``foreground`` reads 0 and its
    5th reads 1 (clipped to 0-1.5; glass reads high). Scaling to the cells'
    own range makes the seams count alike in faint and dense fields. None
    where ``foreground`` has fewer than ``min_px`` pixels."""
    smooth = filters.gaussian_filter(np.asarray(od, dtype=np.float32), max(float(sigma_px), 0.5))
    values = smooth[foreground]
    if values.size < min_px:
        return None
    lo, hi = np.percentile(values, [5, 95])
    out = (np.float32(hi) - smooth) / np.float32(max(hi - lo, 1e-6))
    return np.clip(out, 0.0, 1.5, out=out)


def seeded_flood(land: np.ndarray, markers: np.ndarray, region: np.ndarray, *, step: int = 1) -> np.ndarray:
    """The seeded watershed of ``land`` from ``markers`` within ``region``
    (0 where no marker's flood reaches), run on ``step`` x ``step`` blocks:
    the landscape averaged, a block holding any marker pixel seeded by the
    highest label among them, a block with any region pixel flooded; the
    result repeated back to pixels and cut to ``region``. A flood costs
    time with the pixels it visits, and a border placed to within ``step``
    pixels is as good as exact for cells tens of pixels across."""
    seeds = np.where(region, markers, 0)
    if step <= 1:
        return watershed(land, seeds, mask=region).astype(np.int32, copy=False)
    flooded = watershed(block_reduce_mean_padded(land, step), block_reduce_padded(seeds, step, np.maximum),
                        mask=block_reduce_padded(region, step, np.logical_or))
    return np.where(region, block_expand(flooded.astype(np.int32, copy=False), step, land.shape), 0)


def size_weighted_territories(markers: np.ndarray, region: np.ndarray, voronoi: np.ndarray, *,
                              max_reach_px: float, stain: np.ndarray | None = None,
                              stained_ids: np.ndarray | None = None,
                              stain_penalty: float = 5.0, drop_unanchored: bool = False,
                              seam: np.ndarray | None = None, seam_weight: float = 0.0,
                              seam_step: int = 1) -> np.ndarray:
    """Territories of a multiplicatively weighted Voronoi partition.

    A pixel goes to the nucleus that minimises (distance to its centre) /
    (its equivalent radius): cell size scales with nucleus size (the
    karyoplasmic ratio, and senescent cells enlarge both), so a large
    nucleus claims a proportionally larger share of the space between it
    and a small neighbour than the midline. Each nucleus is evaluated in a
    box reaching twice the distance to its third-nearest neighbour (scaled
    by its relative size, at most ``max_reach_px``); region pixels no box
    covers keep their plain Voronoi owner from ``voronoi``, and pieces cut
    off from their nucleus go to the cell that borders them most
    (``drop_unanchored``: those still cut off then are cleared, as
    :func:`drop_unanchored_pieces` would).

    With ``stain`` (X-gal presence, 0-1 per pixel) and ``stained_ids`` (the
    nuclei of stained cells), an unstained cell's distance to a pixel is
    multiplied by 1 + ``stain_penalty`` x presence: X-gal lies only in
    stained cells, so blue cytoplasm goes to a stained neighbour unless an
    unstained nucleus is six times closer, relative to the nuclei's sizes
    (haze spilling over a border, a stained nucleus taken for unstained;
    at 2, three times, unstained cells wedged between stained ones still
    took a third of their neighbours' blue periphery in dense fields, and
    came out 1.5x their size). Stained cells pay nothing for
    unstained pixels (their X-gal need not fill them). Senescent cells are
    enlarged far more than their nuclei (~3x the area against 1.2-1.8x), so
    without this the nucleus-size weighting leaves their periphery to the
    small unstained cells around them.

    With ``seam`` (:func:`seam_map`: 0 where the cells are densest, 1 where
    palest) and ``seam_weight`` > 0, the nuclei flood a landscape of that
    weighted distance (its square root: in nucleus radii) plus
    ``seam_weight`` x ``seam`` instead (a seeded watershed): a cell is
    thickest round its nucleus and thins towards its edge, so two touching
    cells meet along a pale seam, and the border follows it where the image
    shows one, the weighted distance deciding where it shows none. Region
    pixels the flood cannot reach from a nucleus keep their Voronoi owner.
    ``seam_step``: the flood runs on blocks of that many pixels a side
    (:func:`seeded_flood`).
    """
    from scipy.spatial import cKDTree

    ids = _present(markers)
    if ids.size < 2:
        return drop_unanchored_pieces(voronoi, markers) if drop_unanchored else voronoi
    cy, cx = _centroids(markers, ids).T
    r = np.sqrt(np.bincount(markers[markers != 0])[ids] / np.pi)
    rel = r / np.median(r)
    k = min(4, ids.size)
    d, _ = cKDTree(np.c_[cy, cx]).query(np.c_[cy, cx], k=k)
    half = np.minimum(max_reach_px, 2.0 * d[:, -1] * np.maximum(rel, 1.0)) + 1
    best = np.full(markers.shape, np.inf, dtype=np.float32)
    owner = np.zeros(markers.shape, dtype=np.int32)
    is_st = np.isin(ids, stained_ids) if stained_ids is not None else np.zeros(ids.size, dtype=bool)
    # squared, as the distances are: (1 + stain_penalty x presence)^2, formed once
    penalty = None
    if stain is not None:
        penalty = np.asarray(stain, dtype=np.float32) * np.float32(stain_penalty)
        penalty += 1
        np.square(penalty, out=penalty)
    m, w = markers.shape
    # (per nucleus: its box, and its centre and 1 / radius^2 as float32,
    # formed for all at once; the loop runs a thousand times a field)
    box_y0 = np.maximum(0, (cy - half).astype(int)).tolist()
    box_y1 = np.minimum(m, (cy + half).astype(int) + 1).tolist()
    box_x0 = np.maximum(0, (cx - half).astype(int)).tolist()
    box_x1 = np.minimum(w, (cx + half).astype(int) + 1).tolist()
    cy32, cx32 = cy.astype(np.float32), cx.astype(np.float32)
    inv32 = (1.0 / (r * r)).astype(np.float32)
    rows, cols = np.arange(m, dtype=np.float32), np.arange(w, dtype=np.float32)
    penalised = (~is_st).tolist() if penalty is not None else [False] * ids.size
    for i in range(ids.size):
        y0, y1, x0, x1 = box_y0[i], box_y1[i], box_x0[i], box_x1[i]
        # squared (distance / radius): same order, no square root
        inv = inv32[i]
        yy = (rows[y0:y1] - cy32[i]) ** 2 * inv
        xx = (cols[x0:x1] - cx32[i]) ** 2 * inv
        q = np.add(yy[:, None], xx[None, :])
        if penalised[i]:
            q *= penalty[y0:y1, x0:x1]
        b = best[y0:y1, x0:x1]
        win = np.less(q, b)
        np.copyto(b, q, where=win)
        np.copyto(owner[y0:y1, x0:x1], ids[i], where=win)
    # a nucleus always owns its own pixels
    np.copyto(owner, markers, where=markers > 0)
    # region pixels no box covers keep their Voronoi owner
    np.copyto(owner, voronoi, where=owner == 0)
    owner[~region] = 0
    if seam is not None and seam_weight > 0:
        land = np.sqrt(best, where=np.isfinite(best), out=np.full(best.shape, 100.0, dtype=np.float32))
        land += np.float32(seam_weight) * seam.astype(np.float32, copy=False)
        flooded = seeded_flood(land, markers, region, step=seam_step)
        owner = np.where(flooded > 0, flooded, owner).astype(np.int32, copy=False)
        np.copyto(owner, markers, where=markers > 0)
    out = owner
    # a large nucleus can win a detached sliver beyond a small neighbour: such
    # pieces (not connected to their nucleus) go to the cell that borders
    # them most
    _absorb_orphans(out, markers, voronoi, drop_unanchored=drop_unanchored)
    return out


# Bare glass lies beyond the cells' cytoplasm: a "glass" mask with more than
# this share of its pixels within one nucleus diameter of a nucleus lies on
# cells (a lamp fitted to the faint cytoplasm of unstained cells).
GLASS_NEAR_NUCLEI_MAX = 0.25

# An adherent cell's cytoplasm surrounds its nucleus at least half a nucleus
# diameter wide nearly all the way round: when more than this share of that
# band around the nuclei is "glass", the mask lies on cells, however much
# true glass the field also has.
GLASS_IN_NUCLEUS_BAND_MAX = 0.10

# Bare glass avoids the zone within one nucleus diameter of the nuclei (the
# cells are there): a "glass" mask lying in that zone at this fraction or
# more of the rate it lies in the field as a whole is on the cells, however
# small a share of the mask the zone holds (in a confluent sheet whose
# lamp was fitted to the faint cytoplasm between nuclei, the zone holds a
# fifth of the mask where it covers half the field).
GLASS_NEAR_NUCLEI_RATIO = 0.4


def glass_among_nuclei(glass: np.ndarray, nuclei: np.ndarray, *, diameter_px: float,
                       max_share: float = GLASS_NEAR_NUCLEI_MAX,
                       max_band_share: float = GLASS_IN_NUCLEUS_BAND_MAX,
                       max_ratio: float = GLASS_NEAR_NUCLEI_RATIO,
                       dist: np.ndarray | None = None) -> bool:
    """True when the ``glass`` mask lies on the cells rather than between
    them: more than ``max_share`` of its pixels lie within one nucleus
    diameter of a nucleus, or that share is more than ``max_ratio`` x the
    share of the field that zone covers, or it covers more than
    ``max_band_share`` of the band half a nucleus diameter wide around the
    nuclei. Cells reach well
    past their nucleus (their cytoplasm is at least about a nucleus radius
    wide), so such "glass" is the faint cytoplasm of unstained cells, not
    the gaps between them. ``dist``: the distance to the nearest nucleus
    pixel, when the caller has it (exact up to one diameter is enough:
    :func:`sabgal.filters.distance_within`)."""
    n = int(np.count_nonzero(glass))
    if n == 0 or not nuclei.any():
        return False
    if dist is None:
        dist = filters.distance_within(nuclei, diameter_px)
    near, zone = _near_nuclei(glass, dist, diameter_px)
    if near > max_share * n or near > max_ratio * zone * n:
        return True
    band = (dist > 0) & (dist <= 0.5 * diameter_px)
    return np.count_nonzero(glass & band) > max_band_share * max(1, np.count_nonzero(band))


def _near_nuclei(glass: np.ndarray, dist: np.ndarray, diameter_px: float) -> tuple[int, float]:
    """The ``glass`` pixels within one nucleus diameter of a nucleus (``dist``:
    distance to the nearest nucleus pixel), and the share of the field that
    zone, nuclei left out, covers."""
    near = np.count_nonzero(glass & (dist <= diameter_px))
    return near, np.count_nonzero((dist > 0) & (dist <= diameter_px)) / dist.size


def glass_near_nuclei_ratio(glass: np.ndarray, nuclei: np.ndarray, *, diameter_px: float,
                            dist: np.ndarray | None = None) -> float:
    """How many times its field-wide rate the ``glass`` mask lies within one
    nucleus diameter of a nucleus: the share of the mask in that zone over
    the share of the field the zone covers (:func:`glass_among_nuclei`'s
    ``max_ratio`` test). 0 without glass or nuclei; inf when the zone is
    empty but holds glass on the nuclei themselves.

    >>> nuc = np.zeros((1, 8), int); nuc[0, 0] = 1
    >>> glass_near_nuclei_ratio(np.arange(8)[None] >= 4, nuc, diameter_px=2)
    0.0
    """
    n = int(np.count_nonzero(glass))
    if n == 0 or not nuclei.any():
        return 0.0
    if dist is None:
        dist = filters.distance_within(nuclei, diameter_px)
    near, zone = _near_nuclei(glass, dist, diameter_px)
    if zone * n == 0:
        return float("inf") if near else 0.0
    return float(near / (zone * n))


def enclosed_nuclei_share(glass: np.ndarray, nuclei: np.ndarray, *, radius_px: float) -> float:
    """Share of the ``nuclei`` (labels) round which ``glass`` lies: over half
    of the circle ``radius_px`` from the nucleus's centre in the mask. A
    nucleus has its cell's body round it, so a "glass" that rings nuclei is
    the faint cytoplasm of their cells. 0 without nuclei.

    >>> nuc = np.zeros((21, 41), int); nuc[10, 10] = 1; nuc[10, 30] = 2
    >>> glass = np.zeros((21, 41), bool); glass[:, 22:] = True
    >>> enclosed_nuclei_share(glass, nuc, radius_px=5)
    0.5
    """
    ids = _present(nuclei)
    if ids.size == 0:
        return 0.0
    ring = _ring_fraction(np.asarray(glass, dtype=bool), _centroids(nuclei, ids), radius_px)
    return float(np.mean(ring > 0.5))


def glass_depth(glass: np.ndarray, *, quantile: float = 0.9) -> float:
    """How deep the glass mask runs: the ``quantile`` of its pixels' distance
    (px) to the nearest pixel off it (0 for an empty mask). Glass between
    separate cells is at least as wide as the gaps between their bodies; a
    lamp "glass" that is really the thinnest margins of a sheet's cells is a
    thin network between them.

    >>> g = np.zeros((9, 40), bool); g[:, 10:13] = True
    >>> glass_depth(g, quantile=1.0)
    2.0
    """
    g = np.asarray(glass, dtype=bool)
    if not g.any():
        return 0.0
    return float(np.quantile(filters.distance_transform(g)[g], quantile))


def trim_blur_halo(cells: np.ndarray, nuclei: np.ndarray, smoothed: np.ndarray, level: float, *,
                   band_px: float, min_cut: float, fraction: float = 0.5,
                   nucleus_dist: np.ndarray | None = None,
                   keep: np.ndarray | None = None) -> np.ndarray:
    """Move each cell's outer edge to where the signal falls to ``fraction``
    of the cell's own level above ``level`` (glass).

    A foreground found a few noise SDs above glass reaches out into the
    optical blur (and the smoothing) around each cell: for a blurred step
    of height C the limit is crossed about 1-2 blur widths outside the true
    edge when it is a small fraction of C, and small cells gain a ring as
    wide as they are. The edge of a blurred step is where it is half way
    up. Per cell, its level is the mean of ``smoothed`` over its pixels
    between ``band_px`` and 2 ``band_px`` from its outer edge (the part of
    the cell next to the edge, at least ``band_px`` from its nucleus), and
    its pixels within ``band_px`` of that edge below the half-way level are
    removed. Edges against other cells, and nuclei, are not touched; nor are
    cells whose half-way level is below ``min_cut`` (the foreground's own
    detection limit: such a cell is too faint to have a halo, and what lies
    around its nucleus is its minimum extent, not blur). ``nucleus_dist``:
    the distance to the nearest pixel of ``nuclei``, when the caller has it.
    ``keep``: (``cells.max() + 1``,) bool, per label, cells to leave as they are.
    """
    inside = cells > 0
    if not inside.any():
        return cells
    depth = filters.distance_transform(inside)
    n = int(cells.max()) + 1
    ref = (depth >= band_px) & (depth < 2 * band_px)
    ref &= (filters.distance_within(nuclei, band_px) if nucleus_dist is None else nucleus_dist) >= band_px
    cnt = np.bincount(cells[ref], minlength=n)
    tot = np.bincount(cells[ref], weights=smoothed[ref], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        body = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    cut = level + fraction * (body - level)
    cut[~(cut >= min_cut)] = np.nan  # too faint, or no reference pixels
    if keep is not None:
        cut[keep] = np.nan
    band = inside & (depth < band_px) & (nuclei == 0)
    lab = cells[band]
    lim = cut[lab]
    drop = np.zeros(cells.shape, dtype=bool)
    drop[band] = smoothed[band] < lim  # (False where lim is NaN)
    out = cells.copy()
    out[drop] = 0
    return out


def untrimmable_cells(cells: np.ndarray, foreground: np.ndarray, *, max_outside: float = 0.1) -> np.ndarray:
    """Brightfield cells whose edge is not a blurred step of their own body
    (per label, for :func:`trim_blur_halo`'s ``keep``): cells of which more
    than ``max_outside`` lies outside the ``foreground`` -- too faint to
    stand out of the glass: their extent is a minimum reach around a
    nucleus, not a body with a blurred edge.

    >>> cells = np.zeros((1, 8), np.int32); cells[0, :4] = 1; cells[0, 4:] = 2
    >>> fg = np.ones((1, 8), bool); fg[0, :2] = False
    >>> untrimmable_cells(cells, fg).tolist()
    [False, True, False]
    """
    inside, area = _inside_and_area(cells, foreground)
    keep = area - inside > max_outside * area
    keep[0] = False
    return keep


def mostly_within(cells: np.ndarray, mask: np.ndarray, *, share: float = 0.5) -> np.ndarray:
    """Per label of ``cells``, whether at least ``share`` of it lies in ``mask``.

    >>> cells = np.array([[1, 1, 2, 2]]); mask = np.array([[True, False, False, False]])
    >>> mostly_within(cells, mask).tolist()
    [False, True, False]
    """
    inside, area = _inside_and_area(cells, mask)
    out = inside >= share * area
    out[0] = False
    return out


def _inside_and_area(cells: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label of ``cells`` (0 too): its pixels in ``mask``, and all its pixels."""
    n = int(cells.max()) + 1
    return np.bincount(cells[mask].ravel(), minlength=n), np.bincount(cells.ravel(), minlength=n)


def fill_sheet_gaps(cells: np.ndarray, *, reach_px: float, glass: np.ndarray | None = None) -> np.ndarray:
    """Give the unclaimed pixels of a confluent sheet to the nearest cell.

    In a sheet, every pixel belongs to some cell; what the foreground left
    between cells there is the faint cytoplasm of their margins. Pixels no
    cell holds, within ``reach_px`` of one and not known ``glass``, go to the
    nearest cell (its edge, not its nucleus: where the foreground showed a
    border between two cells it stays, and a gap is shared down its middle).

    >>> cells = np.zeros((1, 9), np.int32); cells[0, :2] = 1; cells[0, 6:] = 2
    >>> fill_sheet_gaps(cells, reach_px=3).tolist()
    [[1, 1, 1, 1, 2, 2, 2, 2, 2]]
    """
    gap = cells == 0
    if not gap.any() or gap.all():
        return cells
    dist, owner = nearest_nucleus(cells)
    take = gap & (dist <= reach_px)
    if glass is not None:
        take &= ~glass
    return np.where(take, owner, cells).astype(cells.dtype, copy=False)


def speck_area_limit(cells: np.ndarray, *, min_px: float, max_px: float, fraction: float,
                     min_cells: int = 10) -> float:
    """Largest area (px) of a speck of debris among ``cells``: ``fraction`` of
    the typical cell's area, kept between ``min_px`` and ``max_px`` (``min_px``
    with fewer than ``min_cells`` cells to take a median of). A speck is far
    smaller than the cells of its field; a fixed limit in nucleus areas alone
    misses the specks whose blur halo doubles them in a field of large cells.
    The typical area is the area-weighted median (:func:`_area_weighted_median`):
    specks that made "nuclei" of their own can outnumber a sparse field's
    cells, and pulled a plain median down to their own size (a negative-control
    development field: 31 cells, 68 found; 37 with the weighting).

    >>> lab = np.zeros((100, 100), np.int32)
    >>> for i in range(10):
    ...     lab[i * 10:(i + 1) * 10, :60] = i + 1
    >>> speck_area_limit(lab, min_px=20, max_px=200, fraction=0.15)
    90.0
    """
    areas = np.bincount(np.asarray(cells).ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < min_cells:
        return float(min_px)
    return float(np.clip(fraction * _area_weighted_median(areas), min_px, max(min_px, max_px)))


def _area_weighted_median(areas: np.ndarray) -> float:
    """The area of the object a pixel of them lies in, at the median pixel:
    the cells that hold most of the field's cell area set it, however many
    small specks there are."""
    a = np.sort(np.asarray(areas, dtype=np.float64))
    c = np.cumsum(a)
    return float(a[np.searchsorted(c, 0.5 * c[-1])])


def drop_specks_on_glass(cells: np.ndarray, glass: np.ndarray, *, max_area_px: float,
                         min_glass_fraction: float = 0.5) -> np.ndarray:
    """Remove small objects standing alone on bare glass: cells of at most
    ``max_area_px`` whose one-pixel outer ring is at least
    ``min_glass_fraction`` known ``glass``. Without a nuclear stain a dark
    speck of debris makes its own "nucleus" and a cell as big as itself;
    a real cell, even a faint one, reaches well past its nucleus. (A small
    cell squeezed among others, its ring on cells, is kept.) ``glass`` may
    be any mask of "no cell here": the brightfield pipeline passes known
    glass or no cell body, since the lamp's glass mask stops short of every
    dark object (on 40 synthetic fields, seed 7272, that took the cell-count
    error from 8.0 to 7.1 %).
    """
    return drop_labels(cells, specks_on_glass(cells, glass, max_area_px=max_area_px,
                                              min_glass_fraction=min_glass_fraction))


def specks_on_glass(cells: np.ndarray, glass: np.ndarray, *, max_area_px: float,
                    min_glass_fraction: float = 0.5) -> np.ndarray:
    """One flag per label of ``cells``: the objects :func:`drop_specks_on_glass`
    removes (at most ``max_area_px``, their one-pixel outer ring at least
    ``min_glass_fraction`` ``glass``)."""
    areas = np.bincount(cells.ravel())
    small = (areas > 0) & (areas <= max_area_px)
    small[0] = False
    if not small.any():
        return small
    grown = ndi.grey_dilation(cells, size=(3, 3))
    ring = (cells == 0) & (grown > 0)
    owner = grown[ring]
    n = areas.size
    ring_px = np.bincount(owner, minlength=n)
    on_glass = np.bincount(owner, weights=glass[ring], minlength=n)
    return small & (ring_px > 0) & (on_glass >= min_glass_fraction * np.maximum(ring_px, 1))


# Specks on "glass" that are the nuclei of a sheet (speck_lattice): at least
# this many of them ...
LATTICE_MIN_SPECKS = 100
# ... spaced this evenly: the coefficient of variation of each one's distance
# to the nearest other object. Debris and noise blobs fall where they may
# (randomly placed points: 0.52); the nuclei of a sheet keep their distance.
LATTICE_MAX_SPACING_CV = 0.25


def speck_lattice(cells: np.ndarray, specks: np.ndarray, *, min_specks: int = LATTICE_MIN_SPECKS,
                  max_spacing_cv: float = LATTICE_MAX_SPACING_CV) -> float | None:
    """The spacing (px, median distance to the nearest other object) of the
    ``specks`` (one flag per label of ``cells``) when they are the nuclei of
    a confluent sheet rather than debris, else None.

    Where a sheet's cytoplasm is as faint as glass (the lamp fitted to it)
    and its nuclei too faint for the nucleus searches, each nucleus shows
    only as a small dense object standing on "glass": hundreds of specks.
    Debris and noise blobs are scattered at random; a sheet's nuclei are
    spread evenly, each its cell's width from the next. At least
    ``min_specks`` of them whose distances to their nearest neighbour (any
    object) vary by at most ``max_spacing_cv`` are a lattice. (On 400
    plain-brightfield development fields, four dropped 100 specks or more:
    three with 96-99 % of them on true nuclei read a spacing CV of
    0.14-0.23, the fourth, 65 %, 0.35; the debris fields with the most
    specks next, 50-76, read 0.24-0.60.)
    """
    specks = np.asarray(specks, dtype=bool)
    if np.count_nonzero(specks) < max(2, min_specks):
        return None
    ids = _present(cells)
    nn = _neighbour_distances(cells, ids)[specks[ids]]
    if nn.mean() <= 0 or nn.std() > max_spacing_cv * nn.mean():
        return None
    return float(np.median(nn))


def drop_small_clear_cells_on_glass(cells: np.ndarray, glass: np.ndarray, stain: np.ndarray, *,
                                    max_area_px: float, min_glass: float = 0.1,
                                    max_stain: float = 0.01) -> np.ndarray:
    """Remove "cells" smaller than ``max_area_px``, clear of X-gal (mean
    ``stain``, clipped at zero, under ``max_stain`` OD), with at least
    ``min_glass`` of their pixels on known ``glass``.

    A cell's body reaches well past its nucleus (a few nucleus areas at
    the least); without a nuclear stain, noise blobs and specks on glass
    pass for nuclei, and the territories drawn round a cluster of them
    touch one another, so neither the speck test (a ring of glass) nor
    :func:`drop_bodiless_cells` (no body at all) removes them. Stained
    cells are kept (a small stained fragment is the merge step's to
    judge). On 40 synthetic development fields (plain brightfield, seed
    7272) cells under 4 nucleus areas, under 0.01 OD of X-gal and a tenth
    on glass were 14 false cells and no true one (one sharp, sparse JPEG
    field went from 28.9 to 10.3 pp); on 110 others and 28 of a second
    renderer, no true one either.

    >>> cells = np.zeros((10, 30), np.int32); cells[2:6, 2:6] = 1; cells[2:6, 12:16] = 2; cells[2:6, 22:26] = 3
    >>> glass = np.zeros(cells.shape, bool); glass[:, 10:] = True
    >>> stain = np.zeros(cells.shape, np.float32); stain[2:6, 22:26] = 0.2
    >>> np.unique(drop_small_clear_cells_on_glass(cells, glass, stain, max_area_px=20)).tolist()
    [0, 1, 3]
    """
    cells = np.asarray(cells)
    if not cells.any():
        return cells
    area, (on_glass, mean_stain) = _cell_means(cells, np.asarray(glass, dtype=bool), np.maximum(stain, 0))
    return drop_labels(cells, (area < max_area_px) & (on_glass >= min_glass) & (mean_stain < max_stain))


def drop_dense_specks(cells: np.ndarray, nuclei: np.ndarray, grey: np.ndarray, stain: np.ndarray, *,
                      max_area_px: float, density_ratio: float = 2.0, max_stain: float = 0.01,
                      min_nuclei: int = 10, large_area_factor: float = 1.0,
                      large_density_ratio: float = np.inf) -> np.ndarray:
    """Remove "cells" smaller than ``max_area_px`` whose nucleus is at least
    ``density_ratio`` times as dense (mean neutral ``grey`` OD) as the
    field's median nucleus, clear of X-gal (mean ``stain``, clipped at zero,
    under ``max_stain`` OD) over the cell -- and those up to
    ``large_area_factor`` times that size whose nucleus is at least
    ``large_density_ratio`` times as dense (a larger clump of dirt, with
    the blur round it in its territory).

    Without a nuclear stain a dark speck of debris passes for a nucleus and
    gets a small territory; where its blur halo lies in the foreground no
    ring of glass marks it (:func:`drop_specks_on_glass`). Debris absorbs
    far more than a nucleus, whose extra density over the cytoplasm is a
    few hundredths of OD: on one sparse synthetic field the specks' "nuclei"
    read 0.12-0.19 OD, the 45 real nuclei 0.04-0.06. ``nuclei`` carry their
    cell's label; the median is taken over at least ``min_nuclei`` of them
    (else nothing is dropped).
    """
    if not cells.any():
        return cells
    has, dens = _label_density(np.where(nuclei > 0, cells, 0), grey, n=int(cells.max()) + 1)
    ref = _median_present(has, dens, min_nuclei=min_nuclei)
    if ref is None:
        return cells
    area, (mean_stain,) = _cell_means(cells, np.maximum(stain, 0))
    dense = ((dens >= density_ratio * ref) & (area < max_area_px)) | (
        (dens >= large_density_ratio * ref) & (area < large_area_factor * max_area_px))
    return drop_labels(cells, has & dense & (mean_stain < max_stain))


def drop_dense_bodies(cells: np.ndarray, nuclei: np.ndarray, grey: np.ndarray, stain: np.ndarray, *,
                      density_ratio: float = 2.0, max_stain: float = 0.01, min_nuclei: int = 10) -> np.ndarray:
    """Remove "cells" of any size whose median neutral ``grey`` OD over the
    whole cell is at least ``density_ratio`` times the field's median
    nucleus density (:func:`median_nucleus_density` over ``nuclei``), clear
    of X-gal (mean ``stain``, clipped at zero, under ``max_stain`` OD).

    A cell is mostly cytoplasm, which absorbs less than its nucleus; a
    body several times denser than the nuclei is a piece of debris (a
    fibre, a clump of dirt) that, without a nuclear stain, was seeded as a
    cell whose nucleus did not show (a foreground piece holding no nucleus,
    a lobe of a clump: :func:`segment_cells`, :func:`add_lobe_seeds`).
    :func:`drop_dense_specks` reads the nucleus of small cells; this reads
    the body, so it holds for debris too large for that rule.
    """
    if not cells.any():
        return cells
    ref = median_nucleus_density(np.where(cells > 0, nuclei, 0), grey, min_nuclei=min_nuclei)
    if ref is None:
        return cells
    # (a median at or over the level: at least half the cell's pixels are;
    # a label not present reads 0)
    _, (dense, mean_stain) = _cell_means(cells, np.asarray(grey) >= density_ratio * ref, np.maximum(stain, 0))
    return drop_labels(cells, (dense >= 0.5) & (mean_stain < max_stain))


def _label_density(labels: np.ndarray, grey: np.ndarray, *, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per label (index = label, at least ``n`` of them): present?, and its mean of ``grey``."""
    n = max(int(labels.max()) + 1, n or 0)
    on = labels > 0
    lab = labels[on]
    count = np.bincount(lab, minlength=n)
    dens = np.bincount(lab, weights=np.asarray(grey, dtype=np.float32)[on], minlength=n) / np.maximum(count, 1)
    return count > 0, dens


def median_nucleus_density(nuclei: np.ndarray, grey: np.ndarray, *, min_nuclei: int = 10) -> float | None:
    """The field's typical nucleus density: the median over ``nuclei`` of
    each one's mean neutral ``grey`` OD; None with fewer than
    ``min_nuclei`` of them, or a median not above 0."""
    if not np.any(nuclei):
        return None
    return _median_present(*_label_density(nuclei, grey), min_nuclei=min_nuclei)


def _median_present(has: np.ndarray, dens: np.ndarray, *, min_nuclei: int) -> float | None:
    """Median of ``dens`` over the labels present (``has``); None with fewer
    than ``min_nuclei`` of them, or a median not above 0."""
    if np.count_nonzero(has) < min_nuclei:
        return None
    ref = float(np.median(dens[has]))
    return ref if ref > 0 else None


def _cell_means(cells: np.ndarray, *maps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each label's area (at least 1) and the mean of each of ``maps`` over it
    (label 0, the background, gets 0: only the cells' pixels are read, and a
    boolean map is counted rather than summed as weights)."""
    flat = cells.ravel()
    n = int(cells.max()) + 1
    on = flat != 0
    lab = flat[on]
    area = np.maximum(np.bincount(lab, minlength=n), 1)
    means = []
    for m in maps:
        m = np.asarray(m).ravel()[on]
        total = np.bincount(lab[m], minlength=n) if m.dtype == bool else np.bincount(lab, weights=m, minlength=n)
        means.append(total / area)
    return area, means


def drop_labels(cells: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """``cells`` with the labels where ``drop`` (one flag per label) is True set to 0.

    >>> drop_labels(np.array([[1, 2, 3]]), np.array([False, False, True, False])).tolist()
    [[1, 0, 3]]
    """
    drop = np.asarray(drop, dtype=bool).copy()
    drop[0] = False
    if not drop.any():
        return cells
    return np.where(drop[cells], 0, cells).astype(cells.dtype, copy=False)


def close_glass_margin(glass: np.ndarray, foreground: np.ndarray, smoothed: np.ndarray, *,
                       max_od: float, margin_px: int) -> np.ndarray:
    """``glass`` grown into the margin it leaves around objects: pixels
    within ``margin_px`` of it, off the ``foreground``, whose ``smoothed``
    density is at most ``max_od`` (the glass level plus a few of its noise
    SDs).

    The lamp estimate marks glass in blocks and erodes them, so its mask
    stops a few pixels short of every cell and speck. Those pixels are
    neither glass nor cell body, and the least extent a nucleus gets (for
    cells too faint to show) claims them: small unstained cells came out
    twice their area. On 150 synthetic development fields (plain
    brightfield) detection F1 went from 0.917 to 0.918, mean fraction error
    from 1.98 to 1.82 pp and cell-count error from 6.3 to 5.4 %; a
    confluent field whose cytoplasm is as clear as glass (body 0.01 OD)
    lost (0.67 to 0.46): its margins were cytoplasm.

    >>> glass = np.zeros((1, 12), bool); glass[0, :4] = True
    >>> fg = np.zeros_like(glass); fg[0, 8:] = True
    >>> od = np.zeros((1, 12), np.float32); od[0, 6:] = 0.05
    >>> close_glass_margin(glass, fg, od, max_od=0.01, margin_px=3).astype(int).tolist()
    [[1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]
    """
    import cv2

    glass = np.asarray(glass, dtype=bool)
    if margin_px < 1 or not glass.any():
        return glass
    near = cv2.dilate(glass.view(np.uint8), morph.disc(margin_px)).view(bool)
    return glass | (near & ~np.asarray(foreground, dtype=bool) & (np.asarray(smoothed) <= max_od))


def drop_bodiless_cells(cells: np.ndarray, foreground: np.ndarray, glass: np.ndarray, *,
                        max_body: float = 0.05, min_glass: float = 0.2) -> np.ndarray:
    """Remove "cells" the image shows no body for, lying on known glass:
    under ``max_body`` of their pixels in the cell-body ``foreground`` and
    at least ``min_glass`` of them known ``glass``.

    Without a nuclear stain, a noise blob on bare glass (JPEG blocks on a
    sharp, sparse field) can pass for an unstained cell's nucleus, and the
    territory drawn around it -- the least extent every nucleus gets, for
    cells too faint to show -- makes a cell of a few nucleus areas, larger
    than a speck. A faint real cell whose body the foreground misses still
    lies off the lamp's glass (its cytoplasm darkens the glass estimate);
    these lie on it. On 40 synthetic development fields (plain brightfield,
    seed 7272) this removed 29 false cells and no true one; on 60 others
    (seed 5151) nothing.

    >>> cells = np.zeros((20, 40), np.int32); cells[2:10, 2:10] = 1; cells[2:10, 20:28] = 2
    >>> fg = np.zeros_like(cells, bool); fg[2:10, 2:10] = True
    >>> glass = ~fg
    >>> np.unique(drop_bodiless_cells(cells, fg, glass)).tolist()
    [0, 1]
    """
    cells = np.asarray(cells)
    if not cells.any():
        return cells
    _, (body, on_glass) = _cell_means(cells, np.asarray(foreground, dtype=bool), np.asarray(glass, dtype=bool))
    return drop_labels(cells, (body < max_body) & (on_glass >= min_glass))


def merge_stained_fragments(cells: np.ndarray, stain: np.ndarray, *, level: float,
                            max_area_ratio: float = 0.4, min_shared: float = 0.4) -> np.ndarray:
    """Give small pieces of stained cells back to the stained cell they
    lie against. Without a nuclear stain, pale gaps between X-gal granules
    can pass for nuclei, and a large stained cell comes out with a small
    wedge of its own cut off by such a "nucleus". A stained cell (mean of
    ``stain`` >= ``level``) of at most ``max_area_ratio`` x the area of the
    neighbour it shares the most border with, that neighbour stained too,
    and sharing at least ``min_shared`` of its outline with it, is merged
    into that neighbour. (A small unstained cell beside a stained one keeps
    its own label, as does a stained cell whose outline lies mostly
    elsewhere.)
    """
    n = int(cells.max()) + 1
    if n <= 2:
        return cells
    areas = np.bincount(cells.ravel(), minlength=n).astype(np.float64)
    mean = np.bincount(cells.ravel(), weights=stain.ravel(), minlength=n) / np.maximum(areas, 1)
    stained = (mean >= level) & (areas > 0)
    stained[0] = False
    if np.count_nonzero(stained) < 2:
        return cells
    outline = np.zeros(n)
    keys = []
    for a, b in ((cells[:, 1:], cells[:, :-1]), (cells[1:, :], cells[:-1, :])):
        diff = a != b
        aa, bb = a[diff].astype(np.int64), b[diff].astype(np.int64)
        outline += np.bincount(aa, minlength=n) + np.bincount(bb, minlength=n)
        both = (aa > 0) & (bb > 0) & stained[aa] & stained[bb]
        keys.append(np.r_[aa[both] * n + bb[both], bb[both] * n + aa[both]])
    keys = np.concatenate(keys)
    if keys.size == 0:
        return cells
    pair, shared = np.unique(keys, return_counts=True)
    a, b = pair // n, pair % n
    # each cell's stained neighbour with the longest shared border
    order = np.lexsort((shared, a))
    last = np.r_[a[order][1:] != a[order][:-1], True]
    a, b, shared = a[order][last], b[order][last], shared[order][last]
    merge = (areas[a] <= max_area_ratio * areas[b]) & (shared >= min_shared * np.maximum(outline[a], 1))
    if not merge.any():
        return cells
    lut = np.arange(n, dtype=cells.dtype)
    src, dst = a[merge], b[merge]
    # (a cell merged away receives nothing: its pieces go to the larger one)
    keep = ~np.isin(dst, src)
    lut[src[keep]] = dst[keep]
    return lut[cells]


def _run_components(first: np.ndarray, length: np.ndarray, lab: np.ndarray, cols: int) -> np.ndarray:
    """4-connected component of each run (of :func:`sabgal.measure.label_runs`): runs of
    one label in adjacent rows that share a column are joined. Components
    are numbered by their first run (so by their first pixel in raster
    order, as ``skimage.measure.label`` numbers them), from 0."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = first.size
    y, x0 = np.divmod(first.astype(np.int64), cols)
    x1 = x0 + length - 1
    order = np.argsort(lab, kind="stable")  # by label, then raster order
    group = lab[order].astype(np.int64) * (int(y.max(initial=0)) + 2) + y[order]  # (label, row)
    key0, key1 = group * cols + x0[order], group * cols + x1[order]
    # the runs one row down with the same label that overlap run i: those
    # in its (label, row + 1) group ending at or after x0 and starting at or before x1
    below = (group + 1) * cols
    lo = np.searchsorted(key1, below + x0[order], side="left")
    hi = np.searchsorted(key0, below + x1[order], side="right")
    cnt = np.maximum(hi - lo, 0)
    src = np.repeat(order, cnt)
    dst = order[np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))]
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # renumber by first run
    firsts = np.full(int(comp.max(initial=-1)) + 1, n, dtype=np.int64)
    np.minimum.at(firsts, comp, np.arange(n))
    rank = np.empty(firsts.size, dtype=np.int64)
    rank[np.argsort(firsts, kind="stable")] = np.arange(firsts.size)
    return rank[comp]


def _orphan_runs(cells: np.ndarray, markers: np.ndarray):
    """The runs of equal labels along the rows of ``cells``
    (:func:`sabgal.measure.label_runs`: first flat index, length, label),
    the piece (4-connected component of one label) of each run, and the
    indices of the runs in pieces that hold none of their label's
    ``markers`` pixels; None when no pixel is labelled."""
    flat = cells.reshape(-1)
    first, length, lab = label_runs(cells)
    if first.size == 0:
        return None
    comp = _run_components(first, length, lab, cells.shape[1])
    anchored = np.zeros(int(comp.max()) + 1, dtype=bool)
    # the run holding each marker pixel that carries its own label (runs
    # cover every labelled pixel)
    seeds = np.flatnonzero(markers)
    seeds = seeds[(flat[seeds] != 0) & (flat[seeds] == markers.reshape(-1)[seeds])]
    anchored[comp[np.searchsorted(first, seeds, side="right") - 1]] = True
    return first, length, comp, np.flatnonzero(~anchored[comp])


def _run_pixels(first: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels of the runs (``first``, ``length``), run by run."""
    return np.repeat(first - np.cumsum(length) + length, length) + np.arange(int(length.sum()))


def _absorb_orphans(out: np.ndarray, markers: np.ndarray, voronoi: np.ndarray, *,
                    drop_unanchored: bool = False) -> None:
    """Give each piece of ``out`` (a 4-connected component of one label;
    C-contiguous, changed in place) that holds none of its ``markers`` the
    label most common among the pixels 4-adjacent to it (the smallest on
    ties; 0 and its own label do not count), or else its ``voronoi`` label
    at its first pixel. Pieces go in raster order of their first pixels, so
    a piece sees the new labels of the pieces before it. Components come
    from runs along rows, pieces' pixels and neighbours are gathered for all
    pieces at once; only the vote runs per piece.

    ``drop_unanchored``: then clear the pieces that are still cut off from
    their nucleus (:func:`drop_unanchored_pieces` of the result, without
    finding the pieces again): a relabelled piece is anchored when it
    touches an anchored pixel of its new label, or touches such a piece.
    """
    rows, cols = out.shape
    flat = out.reshape(-1)
    runs = _orphan_runs(out, markers)
    if runs is None or runs[3].size == 0:
        return
    first, length, comp, orphan_run = runs
    # orphan pixels in raster order, with their piece
    ln = length[orphan_run]
    pix = _run_pixels(first[orphan_run], ln)
    pc = np.repeat(comp[orphan_run], ln)
    y, x = np.divmod(pix, cols)
    pairs = []
    for ok, step in ((y > 0, -cols), (y < rows - 1, cols), (x > 0, -1), (x < cols - 1, 1)):
        q = pix[ok] + step
        # (a 4-neighbour with the same label is in the same piece)
        other = flat[q] != flat[pix[ok]]
        pairs.append(pc[ok][other] * flat.size + q[other])
    key = np.unique(np.concatenate(pairs))  # each neighbour pixel once per piece, by piece
    nb_piece, nb = np.divmod(key, flat.size)
    order = np.argsort(pc, kind="stable")  # by piece, raster order within
    by_pix, by_pc = pix[order], pc[order]
    pieces, p_start = np.unique(by_pc, return_index=True)
    p_end = np.r_[p_start[1:], by_pc.size]
    n_start = np.searchsorted(nb_piece, pieces)
    n_end = np.searchsorted(nb_piece, pieces, side="right")
    head = by_pix[p_start]
    own = flat[head]
    for i in range(pieces.size):
        around = flat[nb[n_start[i]:n_end[i]]]
        around = around[(around > 0) & (around != own[i])]
        flat[by_pix[p_start[i]:p_end[i]]] = np.bincount(around).argmax() if around.size else voronoi.flat[head[i]]
    if drop_unanchored:
        _drop_still_orphaned(flat, pix, pc, pieces, head, nb_piece, nb)


def _drop_still_orphaned(flat: np.ndarray, pix: np.ndarray, pc: np.ndarray, pieces: np.ndarray,
                         head: np.ndarray, nb_piece: np.ndarray, nb: np.ndarray) -> None:
    """After :func:`_absorb_orphans`' vote, clear the relabelled pieces not
    joined to a piece that holds their new label's marker. Pixels outside
    the pieces were never relabelled and each lies in an anchored piece, so
    a piece is anchored when one of its 4-neighbours outside the pieces
    carries its new label, or when it is joined (neighbours of the same new
    label) to such a piece. ``pix``: the pieces' pixels in raster order
    (ascending), ``pc`` their pieces; ``head``: each of ``pieces``' first
    pixel; ``nb_piece``, ``nb``: each piece's 4-neighbours outside it."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    new = flat[head]  # each piece's new label (one label per piece)
    piece_of = np.full(int(pieces.max()) + 1, -1, dtype=np.intp)
    piece_of[pieces] = np.arange(pieces.size)
    at = np.searchsorted(pix, nb).clip(max=pix.size - 1)
    in_piece = pix[at] == nb  # the neighbour is itself a piece's pixel
    src = piece_of[nb_piece]
    same = flat[nb] == new[src]
    anchored = np.zeros(pieces.size, dtype=bool)
    anchored[src[same & ~in_piece & (new[src] > 0)]] = True
    joined = same & in_piece
    dst = piece_of[pc[at[joined]]]
    graph = coo_matrix((np.ones(dst.size, dtype=np.int8), (src[joined], dst)), shape=(pieces.size,) * 2)
    _, comp = connected_components(graph, directed=False)
    comp_anchored = np.zeros(int(comp.max()) + 1, dtype=bool)
    comp_anchored[comp[anchored]] = True
    lost = ~comp_anchored[comp]
    if lost.any():
        flat[pix[lost[piece_of[pc]]]] = 0


def drop_unanchored_pieces(cells: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """``cells`` without the pieces (4-connected components of one label)
    that hold none of that label's ``markers`` pixels.

    >>> c = np.array([[1, 1, 0, 1], [0, 0, 0, 1]])
    >>> drop_unanchored_pieces(c, np.array([[1, 0, 0, 0], [0, 0, 0, 0]])).tolist()
    [[1, 1, 0, 0], [0, 0, 0, 0]]
    """
    out = np.ascontiguousarray(cells).copy()
    runs = _orphan_runs(out, markers)
    if runs is not None and runs[3].size:
        first, length, _, orphan = runs
        out.reshape(-1)[_run_pixels(first[orphan], length[orphan])] = 0
    return out


def segment_cells(nuclei: np.ndarray, foreground: np.ndarray, *, max_reach_px: float,
                  min_cell_area_px: float, elevation: np.ndarray | None = None,
                  unseeded: str = "drop", diameter_px: float = 14.0,
                  min_extent_nuclei: float = 0.0,
                  glass: np.ndarray | None = None,
                  size_weighted: bool = False, xgal: np.ndarray | None = None,
                  stain_level: float = 0.03,
                  nearest: tuple[np.ndarray, np.ndarray] | None = None,
                  seam: np.ndarray | None = None, seam_weight: float = 0.0, seam_step: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Grow cell territories from nuclei over the foreground.

    Parameters
    ----------
    nuclei : (M, N) int ndarray
        Nucleus labels (the seeds).
    foreground : (M, N) bool ndarray
        Cell-body mask.
    max_reach_px : float
        A cell reaches at most this far from its nucleus.
    min_cell_area_px : float
        Foreground pieces without a nucleus smaller than this are debris.
    elevation : (M, N) float ndarray, optional
        Border evidence (e.g. rim darkness) added to the distance landscape.
    min_extent_nuclei : float
        Each cell covers at least min(half the distance to the nearest other
        nucleus, this many nucleus diameters) around its nucleus, foreground
        or not, except on known glass (0 = off).
    glass : (M, N) bool ndarray, optional
        Pixels known to be bare glass (from the lamp estimate).
    size_weighted : bool
        Divide touching cells by distance from each nucleus centre in units
        of that nucleus's radius (:func:`size_weighted_territories`) instead
        of plain distance.
    xgal : (M, N) float ndarray, optional
        Smoothed X-gal OD: with ``size_weighted``, cells whose surroundings
        are stained (:func:`stained_nuclei`, above ``stain_level``) keep
        their blue cytoplasm (:func:`size_weighted_territories`).
    stain_level : float
        X-gal OD that counts as stained (the positivity floor).
    unseeded : {"drop", "seed"}
        What to do with foreground components holding no nucleus: drop them
        as debris (a nuclear stain is present) or give each a seed at its
        distance-transform maxima (no nuclear stain: the nucleus was missed).
    nearest : tuple, optional
        ``nearest_nucleus(nuclei)``, when the caller has it.
    seam, seam_weight, seam_step : optional
        With ``size_weighted``: borders between touching cells follow the
        pale seams of ``seam`` (:func:`seam_map`), weighted so, found on
        blocks of ``seam_step`` pixels (:func:`size_weighted_territories`).

    Returns
    -------
    cells : (M, N) int32 ndarray
        Cell labels; a cell grown from nucleus ``k`` has label ``k``.
    nuclei : (M, N) int32 ndarray
        The nuclei, restricted to the nuclei that own a cell.
    """
    nuclei = nuclei.astype(np.int32, copy=False)
    reach, nearest_id = nearest_nucleus(nuclei) if nearest is None else nearest
    # a hole in the foreground that holds a nucleus is a cell too faint to see
    foreground = morph.fill_holes(foreground, touching=nuclei > 0)
    region = (foreground & (reach <= max_reach_px)) | (nuclei > 0)
    if min_extent_nuclei > 0 and nuclei.max() > 0:
        # Every cell reaches at least a little way past its nucleus, even
        # where its body is too faint to see: min(half the distance to the
        # nearest other nucleus, min_extent_nuclei x the nucleus diameter).
        ids = _present(nuclei)
        cents = _centroids(nuclei, ids)
        present = np.ones(ids.size, dtype=bool)
        radius = np.zeros(int(nuclei.max()) + 1)
        if present.sum() >= 2:
            from scipy.spatial import cKDTree

            d, _ = cKDTree(cents[present]).query(cents[present], k=2)
            radius[ids[present]] = np.minimum(d[:, 1] / 2, min_extent_nuclei * diameter_px)
        elif present.sum() == 1:
            radius[ids[present]] = min_extent_nuclei * diameter_px
        disc = reach <= radius[nearest_id]
        if glass is not None:
            disc &= ~glass
        region |= disc
    markers = nuclei.copy()
    if unseeded == "seed":
        comp, ncomp = morph.label(foreground)
        if ncomp:
            seeded = np.unique(comp[nuclei > 0])
            sizes = np.bincount(comp[comp != 0], minlength=ncomp + 1)  # (sizes[0] unused)
            free = np.setdiff1d(np.arange(1, ncomp + 1), seeded)
            free = free[sizes[free] >= min_cell_area_px]
            if free.size:
                fmask = _lut(free, ncomp + 1)[comp]
                extra = split_objects(fmask, diameter_px=diameter_px * 2.2)
                extra_lab = np.where(extra > 0, extra + int(nuclei.max()), 0).astype(np.int32)
                # Seeds are small disks at the extra objects' centres.
                centres = _centroids(extra, _present(extra))
                r = max(2, int(diameter_px / 4))
                for cy, cx in centres:
                    cy, cx = int(round(cy)), int(round(cx))
                    lab_here = extra_lab[cy, cx] if (0 <= cy < extra.shape[0] and 0 <= cx < extra.shape[1]) else 0
                    if lab_here == 0:
                        continue
                    y0, y1 = max(0, cy - r), min(markers.shape[0], cy + r + 1)
                    x0, x1 = max(0, cx - r), min(markers.shape[1], cx + r + 1)
                    window = markers[y0:y1, x0:x1]
                    window[(window == 0) & (extra_lab[y0:y1, x0:x1] == lab_here)] = lab_here
                region |= fmask
    if elevation is None:
        # Flooding the distance-to-nearest-seed landscape is the Voronoi
        # partition of the region: read it straight off the nearest-seed
        # labels (no flooding cost).
        owner = nearest_nucleus_label(markers) if (markers != nuclei).any() else nearest_id
        cells = np.where(region, owner, 0).astype(np.int32, copy=False)
        if size_weighted:
            stain = stained = None
            if xgal is not None:
                # (markers, not nuclei: a brightfield seed can be a stained cell)
                stain = stain_presence(xgal, level=stain_level)
                stained = stained_nuclei(markers, xgal, level=stain_level,
                                         ring_px=max(1, int(round(diameter_px / 2))), nearest=owner)
            cells = size_weighted_territories(markers, region, cells, max_reach_px=max_reach_px, stain=stain,
                                              stained_ids=stained, drop_unanchored=unseeded == "drop",
                                              seam=seam, seam_weight=seam_weight, seam_step=seam_step)
    else:
        e = elevation.astype(np.float32)
        scale = np.percentile(e[region], 95) if region.any() else 1.0
        land = reach + (max_reach_px / 4) * np.clip(e / max(scale, 1e-6), 0, 2)
        cells = watershed(land, markers, mask=region).astype(np.int32)
    if unseeded == "drop" and not (elevation is None and size_weighted):
        # with a nuclear stain, a piece of a cell cut off from its nucleus
        # that no neighbouring cell took over is debris (a dark speck or
        # ring on glass within reach of a few cells), not cell (the
        # size-weighted territories clear them as they hand pieces over)
        cells = drop_unanchored_pieces(cells, markers)
    # Drop cells smaller than the minimum (fragments) and debris without seeds.
    areas = np.bincount(cells.ravel(), minlength=int(markers.max()) + 1)
    tiny = np.flatnonzero((areas > 0) & (areas < min_cell_area_px))
    tiny = tiny[tiny > 0]
    if tiny.size:
        kill = _lut(tiny, areas.size)[cells]
        cells[kill] = 0
    nuclei_kept = np.where(cells == nuclei, nuclei, 0)
    nuclei_kept[_lut(tiny, areas.size)[nuclei_kept]] = 0
    return cells, nuclei_kept.astype(np.int32)


def drop_large_objects(labels: np.ndarray, max_area_px: float) -> np.ndarray:
    """``labels`` without the objects larger than ``max_area_px``."""
    areas = _areas(labels)
    big = np.flatnonzero(areas > max_area_px)
    big = big[big > 0]
    if not big.size:
        return labels
    return np.where(_lut(big, areas.size)[labels], 0, labels).astype(labels.dtype)


def _min_along(image: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per row i, the minimum of ``image`` on the segment from p[i] to q[i]
    ((K, 2) row, column coordinates), sampled at least once a pixel."""
    n = int(np.ceil(np.hypot(*(q - p).T).max(initial=0.0))) + 2
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    pts = p[:, None, :] * (1 - t) + q[:, None, :] * t
    return _value_at(image, pts).min(axis=1)


def _distinct_peaks(image: np.ndarray, peaks: np.ndarray, height: np.ndarray, cand: np.ndarray, *,
                    radius: np.ndarray, neck: float, reach: float | None = None) -> list[int]:
    """Of the candidate peaks ``cand`` (indices into ``peaks``, (K, 2) row,
    col, taken in order), those that are separate objects: a candidate within
    ``radius[k]`` of a peak already kept, or joined to it -- ``image`` staying
    at or above ``neck`` x the lower of their ``height`` all along the
    straight way between them -- is part of that one. With ``reach``, only
    kept peaks that near are compared (farther ones are other objects)."""
    kept: list[int] = []
    for i in np.asarray(cand).tolist():
        if kept:
            k = np.asarray(kept)
            dist = np.hypot(*(peaks[k] - peaks[i]).T)
            if (dist <= radius[k]).any():
                continue
            if reach is not None:
                k = k[dist <= reach]
            if k.size and (_min_along(image, np.repeat(peaks[i][None], k.size, axis=0), peaks[k])
                           >= neck * np.minimum(height[i], height[k])).any():
                continue
        kept.append(i)
    return kept


# Two stain-blob seeds farther apart than this many nucleus diameters are
# different cells whatever lies between (a stained cell's perinuclear blob
# spans 2-3 diameters; an enlarged cell's up to ~4)
STAIN_BLOB_REACH_NUCLEI = 4.0


def add_stain_blob_seeds(nuclei: np.ndarray, xgal: np.ndarray, *, diameter_px: float, level: float,
                         sigma_nuclei: float = 0.75, min_level: float = 2.0, clear_nuclei: float = 1.0,
                         neck: float = 0.7, min_found: int = 10, rel_found: float = 0.5,
                         seed_nuclei: float = 0.3, region: np.ndarray | None = None) -> np.ndarray:
    """Seed the stained cells whose nucleus was not seen, from their stain blob.

    SA-beta-gal activity concentrates round the nucleus (lysosomes gather
    there), so smoothed at a cell's scale (Gaussian sigma = ``sigma_nuclei``
    nucleus diameters, which averages the granules away) each stained cell
    is one blob of X-gal. In a dense field whose stained cells touch, the
    hole of a small nucleus under the stain's haze can stay unseen; the cell
    then falls to its neighbours' territories. A blob peak (a maximum within
    a nucleus diameter, at least ``min_level`` x the positivity ``level``,
    in ``region``) gets a seed when it lies over ``clear_nuclei`` diameters
    from every nucleus and, on the straight way to the nearest one, the
    smoothed stain dips below ``neck`` x the peak: it is another cell's
    stain, not the perinuclear stain of the nucleus beside it. Peaks go
    highest first; one within a diameter of a seed already made, or with no
    dip on the way to it, is part of the same cell.

    Only in a field whose stained cells were found as well: at least
    ``min_found`` nuclei sit on such a blob, and a peak must reach
    ``rel_found`` x their median blob level (a negative control's haze or a
    crystal is no cell). Each seed is a disc of ``seed_nuclei`` diameters'
    radius.
    """
    import cv2
    from scipy.spatial import cKDTree

    ids = _present(nuclei)
    if ids.size < max(min_found, 1):
        return nuclei
    blob = filters.gaussian_filter(np.maximum(np.asarray(xgal, dtype=np.float32), 0), sigma_nuclei * diameter_px)
    found = _value_at(blob, _centroids(nuclei, ids))
    found = found[found >= min_level * level]
    if found.size < max(min_found, 1):
        return nuclei
    r = max(1, int(round(diameter_px)))
    top = cv2.dilate(blob, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    ok = (blob >= top) & (blob >= max(min_level * level, rel_found * float(np.median(found))))
    if region is not None:
        ok &= region
    peaks = np.argwhere(ok)
    if not len(peaks):
        return nuclei
    val = blob[tuple(peaks.T)]
    order = np.argsort(-val, kind="stable")
    peaks, val = peaks[order].astype(np.float64), val[order]
    inside = nuclei > 0
    pix = np.argwhere(inside & ~morph.erode_cross(inside))  # (the nearest nucleus pixel is on an edge)
    gap, j = cKDTree(pix).query(peaks)
    dip = _min_along(blob, peaks, pix[j].astype(np.float64)) < neck * val
    # (seeds over STAIN_BLOB_REACH_NUCLEI apart are other cells, whatever lies between)
    kept = _distinct_peaks(blob, peaks, val, np.flatnonzero((gap > clear_nuclei * diameter_px) & dip),
                           radius=np.full(len(peaks), clear_nuclei * diameter_px), neck=neck,
                           reach=STAIN_BLOB_REACH_NUCLEI * diameter_px)
    if not kept:
        return nuclei
    return _add_discs(nuclei, peaks[kept], np.full(len(kept), max(1.0, seed_nuclei * diameter_px)))


def add_lobe_seeds(nuclei: np.ndarray, depth: np.ndarray, *, min_radius_px: float,
                   neck: float = 0.7) -> np.ndarray:
    """Seed, from the clump's shape, the cells whose nuclei were not seen.

    Without a nuclear stain an unstained cell's nucleus can be invisible
    while its body shows; touching bodies make one foreground piece with a
    stained cell's nucleus, and the unstained cells fall to that cell's
    territory. A cell body is a lobe of its piece: a maximum of ``depth``
    (the distance to the edge of the hole-filled cell bodies; the centre of
    the lobe's largest inscribed disc, radius R of at least
    ``min_radius_px``) joined to the rest through a neck. A lobe gets a seed
    when no nucleus pixel lies within its disc and, on the straight way to
    the nearest one, the depth dips below ``neck`` x the smaller of R and
    its value at that pixel (an elongated cell with its nucleus off centre
    has no dip). Lobes go largest first; one within another seed's disc, or
    with no dip on the way to it, is part of the same cell.

    Each seed is a disc of R times the nuclei's median ratio of radius to
    depth at their centres, so a lobe is as large against its neighbours in
    :func:`size_weighted_territories` as a cell of its size with a nucleus
    would be, and the border falls near the neck.
    """
    import cv2
    from scipy.spatial import cKDTree

    if not (depth >= min_radius_px).any():
        return nuclei
    score = filters.gaussian_filter(depth.astype(np.float32, copy=False), 1.0)
    r = max(1, int(min_radius_px))
    top = cv2.dilate(score, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    peaks = np.argwhere((score >= top) & (depth >= min_radius_px))
    if not len(peaks):
        return nuclei
    rad = depth[tuple(peaks.T)].astype(np.float64)
    order = np.argsort(-rad, kind="stable")
    peaks, rad = peaks[order].astype(np.float64), rad[order]
    nuclei = nuclei.astype(np.int32, copy=False)
    ids = _present(nuclei)
    if ids.size:
        cents = _centroids(nuclei, ids)
        r_nuc = np.sqrt(_areas(nuclei)[ids] / np.pi)
        ratio = float(np.median(r_nuc / np.maximum(_value_at(depth, cents), 1.0)))
        inside = nuclei > 0
        pix = np.argwhere(inside & ~morph.erode_cross(inside))  # (the nearest nucleus pixel is on an edge)
        gap, j = cKDTree(pix).query(peaks)
        dip = _min_along(depth, peaks, pix[j].astype(np.float64)) < neck * np.minimum(rad, depth[pix[j, 0], pix[j, 1]])
        cand = np.flatnonzero((gap > rad) & dip)
    else:
        ratio = 0.5
        cand = np.arange(len(peaks))
    kept = _distinct_peaks(depth, peaks, rad, cand, radius=rad, neck=neck)
    if not kept:
        return nuclei
    return _add_discs(nuclei, peaks[kept], np.maximum(1.0, min(ratio, 0.9) * rad[kept]))
