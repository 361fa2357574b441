"""Illumination: the lamp's white level per channel and across the field.

Optical density needs the incident intensity ``I0`` at every pixel and in every
channel. A brightfield image carries its own estimate: the background (glass
with no cell on it) transmits everything, so its brightness *is* the lamp,
vignetting and colour cast included. :func:`estimate_lamp` finds background
pixels (bright relative to a first lamp guess, and locally smooth) and fits a
low-order 2-D polynomial per channel to them, robustly. A blank (flat-field)
image from the same set-up can be used instead (:func:`lamp_from_blank`).

All functions are pure: arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from sabgal import filters

__all__ = ["Lamp", "decode", "rebuild_clipped", "estimate_lamp", "lamp_from_blank", "flat_lamp",
           "block_reduce_mean", "upsample_bilinear"]


@dataclass(frozen=True)
class Lamp:
    """Incident light per pixel and channel.

    image: (M, N, 3) float32 white level in the same scale as the RGB image.
    background_fraction: share of the field judged to be background.
    nonuniformity: relative spread (max-min)/mean of the fitted lamp brightness
      (vignetting strength).
    residual_od: robust SD (OD units) of background pixels around the fit, i.e.
      how well the lamp model explains the background.
    method: which estimate was used.
    background: (M, N) bool mask of the pixels judged to be bare glass, or
      None when the estimate did not find any (confluent field, flat field).
    glass_from_peak: the glass was read off its own histogram peak
      (:func:`_fit_lamp_small` step 2b: JPEG glass, faint cells); such glass
      can hold the insides of cells as clear as it.
    """

    image: np.ndarray | None  # (None once sabgal.pipeline.analyze_image has read what it needs)
    background_fraction: float
    nonuniformity: float
    residual_od: float
    method: str
    background: np.ndarray | None = None
    glass_from_peak: bool = False


def block_reduce_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor`` x ``factor`` blocks (edges cropped).

    >>> block_reduce_mean(np.arange(16.).reshape(4, 4), 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if factor <= 1:
        return image.astype(np.float32, copy=False)
    return _block_mean(image, factor)


def block_reduce_mean_padded(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (edges padded, so the reduced image covers
    the whole field); ``image`` itself when ``factor`` is 1."""
    if factor == 1:
        return image
    return block_reduce_mean(_pad_to_blocks(image, factor), factor)


def _pad_to_blocks(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` with its last rows and columns repeated up to a multiple of
    ``factor`` (itself where it already is one): the block grid of the
    padded reductions."""
    m, n = image.shape[:2]
    if not (m % factor or n % factor):
        return image
    pad = ((0, (-m) % factor), (0, (-n) % factor)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="edge")


def block_reduce_padded(image: np.ndarray, factor: int, op: np.ufunc) -> np.ndarray:
    """``op`` (``np.maximum``, ``np.logical_or`` ...) over ``factor`` x
    ``factor`` blocks of a 2-D image, edges padded as
    :func:`block_reduce_mean_padded`'s (the same grid), as ``factor**2``
    strided slices: several times faster than a multi-axis reduction of a
    4-D view; ``image`` itself when ``factor`` is 1.

    >>> block_reduce_padded(np.arange(6).reshape(2, 3), 2, np.maximum).tolist()
    [[4, 5]]
    """
    if factor == 1:
        return image
    image = _pad_to_blocks(image, factor)
    out = image[::factor, ::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                op(out, image[i::factor, j::factor], out=out)
    return out


def block_expand(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement by ``factor``, cropped to ``shape``
    (the inverse of :func:`block_reduce_mean_padded`'s grid)."""
    if factor == 1:
        return labels
    return np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """float32 block mean as a sum of ``factor**2`` strided slices: no
    (M, N) temporary, and several times faster than a multi-axis ``mean``,
    whose summation order it keeps (2-D: each block row first; with
    channels: block pixels in raster order)."""
    m, n = image.shape[0] // factor, image.shape[1] // factor
    v = image[: m * factor, : n * factor].reshape((m, factor, n, factor) + image.shape[2:])
    if image.ndim == 2 and factor >= 8:  # numpy sums long block rows pairwise
        return v.mean(axis=(1, 3), dtype=np.float32)

    def add(total, i, j):
        p = v[:, i, :, j]
        if total is None:
            return p.astype(np.float32)
        return np.add(total, p, out=total, dtype=np.float32)

    if image.ndim == 2:
        total = None
        for i in range(factor):
            row = None
            for j in range(factor):
                row = add(row, i, j)
            total = row if total is None else total + row
    else:
        total = None
        for i in range(factor):
            for j in range(factor):
                total = add(total, i, j)
    return total / np.float32(factor * factor)


def _block_moments(image: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 block means of a (M, N, C) image and of its squares: the
    values of :func:`_block_mean` (block pixels summed in raster order),
    from one copy reordered so that each block position is a contiguous
    plane (numpy's strided slices of a short channel axis are slow)."""
    m, n = image.shape[0] // factor, image.shape[1] // factor
    planes = image[: m * factor, : n * factor].reshape((m, factor, n, factor) + image.shape[2:])
    planes = np.ascontiguousarray(planes.transpose((1, 3, 0, 2) + tuple(range(4, image.ndim + 2))))
    planes = planes.reshape((factor * factor, m, n) + image.shape[2:])
    total = planes[0].astype(np.float32)
    squares = np.multiply(planes[0], planes[0], dtype=np.float32)
    sq = np.empty_like(squares)
    for k in range(1, factor * factor):
        np.add(total, planes[k], out=total, dtype=np.float32)
        np.multiply(planes[k], planes[k], out=sq, dtype=np.float32)
        squares += sq
    total /= np.float32(factor * factor)
    squares /= np.float32(factor * factor)
    return total, squares


def _poly_terms(yy: np.ndarray, xx: np.ndarray, degree: int) -> np.ndarray:
    # (each power formed once: the same values as yy ** i * xx ** j term by term)
    ypow = [yy ** i for i in range(degree + 1)]
    xpow = [xx ** j for j in range(degree + 1)]
    cols = [ypow[i] * xpow[j] for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, axis=-1)


def _grid_terms(ys: np.ndarray, xs: np.ndarray, degree: int) -> np.ndarray:
    """:func:`_poly_terms` of the full grid of row coordinates ``ys`` and
    column coordinates ``xs``, raveled ((len(ys) * len(xs), terms)): the same
    values, with each power formed on the 1-D coordinates only (a generic
    power of every block's coordinate cost ~80 ms per degree-4 lamp model
    at 2048 x 2048).

    >>> yy, xx = np.mgrid[0:3, 0:4] / 4.0
    >>> np.array_equal(_grid_terms(yy[:, 0], xx[0], 3), _poly_terms(yy.ravel(), xx.ravel(), 3))
    True
    """
    ypow = [ys ** i for i in range(degree + 1)]
    xpow = [xs ** j for j in range(degree + 1)]
    pairs = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    out = np.empty((ys.size, xs.size, len(pairs)), dtype=np.result_type(ys, xs))
    for k, (i, j) in enumerate(pairs):
        np.multiply.outer(ypow[i], xpow[j], out=out[..., k])
    return out.reshape(ys.size * xs.size, len(pairs))


def _robust_polyfit(yy, xx, values, degree, weights=None, iterations=3, terms=None):
    """Least-squares polynomial surface with iterative trimming of outliers.
    ``terms``: ``_poly_terms(yy, xx, degree)``, when the caller has it."""
    a = _poly_terms(yy, xx, degree) if terms is None else terms
    keep = np.ones(values.shape[0], dtype=bool)
    coef = None
    for _ in range(iterations):
        if keep.sum() < a.shape[1] * 3:
            break
        w = np.ones(keep.sum()) if weights is None else weights[keep]
        coef = _least_squares(a[keep] * w[:, None], values[keep] * w)
        resid = values - a @ coef
        mad = np.median(np.abs(resid[keep])) * 1.4826 + 1e-6
        keep = np.abs(resid) < 3.0 * mad
    return coef


# The normal equations square the terms' condition number: they are used
# where that stays under this (relative error ~1e-8), lstsq beyond.
NORMAL_EQUATIONS_MAX_COND2 = 1e8


def _least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients minimising ``|a @ coef - b|``.

    By the normal equations where they are well conditioned (polynomial
    terms on [-1, 1] over a spread of blocks: condition 4-120 for degrees
    2-6), else ``np.linalg.lstsq``: the same coefficients to ~1e-12 where
    both apply, several times faster, and ``np.dot`` releases the GIL where
    lstsq holds it (the lamp fits run in every worker thread of a batch).
    A mask of blocks bunched in one corner is ill conditioned and goes to
    lstsq.

    >>> a = np.c_[np.ones(4), np.arange(4.0)]
    >>> np.round(_least_squares(a, 1 + 2 * np.arange(4.0)), 6)
    array([1., 2.])
    """
    ata = np.dot(a.T, a)
    eig = np.linalg.eigvalsh(ata)
    if eig.size and eig[0] > eig[-1] / NORMAL_EQUATIONS_MAX_COND2:
        return np.linalg.solve(ata, np.dot(a.T, b))
    return np.linalg.lstsq(a, b, rcond=None)[0]


def decode(rgb: np.ndarray, encoding: str = "linear", gamma: float = 2.2) -> np.ndarray:
    """Light from pixel values a camera encoded (float, 0-1 of full scale):
    ``"linear"`` as is; ``"srgb"`` through the inverse sRGB curve (IEC
    61966-2-1: linear below 0.04045, a 2.4 power above); ``"gamma"``
    ``rgb ** gamma``. Beer-Lambert reads optical density off light; on
    encoded values every density reads about 1 / 2.2 of its value.

    >>> [round(float(v), 3) for v in decode(np.array([0.0, 0.5, 1.0]), "srgb")]
    [0.0, 0.214, 1.0]
    >>> decode(np.array([0.25]), "gamma", 2.0).tolist()
    [0.0625]
    """
    if encoding == "linear":
        return rgb
    x = np.clip(np.asarray(rgb, dtype=np.float32), 0, None)
    if encoding == "gamma":
        return np.power(x, np.float32(gamma), dtype=np.float32)
    if encoding == "srgb":
        return np.where(x <= 0.04045, x / np.float32(12.92),
                        np.power((x + np.float32(0.055)) / np.float32(1.055), np.float32(2.4))).astype(np.float32)
    raise ValueError(f"unknown encoding {encoding!r}: 'linear', 'srgb' or 'gamma'")


# Overexposed glass: a channel clipped at the image's maximum on at least
# CLIP_MIN_SHARE of the field, while another channel is clipped on at most
# CLIP_REFERENCE_MAX_SHARE of it, is rebuilt from that other channel
# (:func:`rebuild_clipped`).
CLIP_MIN_SHARE = 0.01
CLIP_REFERENCE_MAX_SHARE = 0.002
# ... or, where every channel clips somewhere, the least clipped one when it
# is clipped on at most CLIP_REFERENCE_FALLBACK_SHARE of the field and each
# other channel on CLIP_REFERENCE_FALLBACK_RATIO times as much or more (its
# own clipped pixels, and theirs there, stay clipped): a pink lamp's green
# clipped on 1 % of the field where red is on half of it (a plain-brightfield
# field read 64 pp off with its red and blue left clipped; 1 pp rebuilt).
CLIP_REFERENCE_FALLBACK_SHARE = 0.05
CLIP_REFERENCE_FALLBACK_RATIO = 4.0
# The channel ratio is read off the clipped channel's pixels just below
# clipping (this band of the maximum): faint absorbers, nearly colourless,
# whose two channels keep the lamp's own ratio ...
CLIP_RATIO_BAND = (0.85, 0.97)
# ... when at least this many pixels lie there. With two unclipped reference
# channels, only pixels they dim alike to within this OD (against each one's
# own glass), when as many are such: a stain's colour is not the lamp's.
CLIP_MIN_RATIO_PIXELS = 500
CLIP_NEUTRAL_MAX_OD = 0.004
# Only where the lamp exceeds the maximum by at least this fraction (the
# rebuilt glass's median over the clipped pixels): glass at the maximum give
# or take its noise loses no more than the noise, and the lamp fit, which
# leaves clipped blocks out, reads it better than a rebuild (an sRGB camera's lilac glass
# clipped on 3 % of the field in blue, 0.6 % over the maximum: rebuilt, the
# blue lamp rose with the ratio's error and a field of 371 cells read 30 pp
# more positive).
CLIP_MIN_EXCESS = 0.02


@dataclass(frozen=True)
class ClippedRebuild:
    """What :func:`rebuild_clipped` did: per rebuilt channel (0 = R, 1 = G,
    2 = B), the share of the field it had clipped and its ratio to the
    reference channels' mean; and those reference channels."""

    channels: tuple[int, ...]
    shares: tuple[float, ...]
    ratios: tuple[float, ...]
    reference: tuple[int, ...]

    def describe(self) -> str:
        names = "RGB"
        parts = ", ".join(f"{names[c]} ({100 * s:.0f} % of the field, {r:.3f}x)"
                          for c, s, r in zip(self.channels, self.shares, self.ratios))
        ref = "+".join(names[c] for c in self.reference)
        return f"overexposed: glass clipped in {parts}; rebuilt from {ref}"


def rebuild_clipped(rgb: np.ndarray, at_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, ClippedRebuild | None]:
    """Light in the channels an overexposed camera clipped, from the ones it did not.

    A tinted lamp exposed until its brightest channel saturates reads the
    glass (and the faintest cytoplasm) at the maximum in that channel only:
    every density there reads too low by the amount the lamp exceeds the
    maximum, the other channels' not at all. The colour of a faint cell
    turns to the unclipped channels' hue, and colour deconvolution reads it
    as stain (a counterstained field of 8 % positive cells came out 93 %).
    Where a channel is clipped on :data:`CLIP_MIN_SHARE` of the field or
    more and another on at most :data:`CLIP_REFERENCE_MAX_SHARE` (else the
    least clipped one, :data:`CLIP_REFERENCE_FALLBACK_SHARE`), the
    clipped pixels are rebuilt as the reference channels' mean times the
    lamp's ratio between them (at least the maximum: they were clipped),
    the highlight reconstruction of raw photo processing, where their
    glass (the reference's local glass times the ratio) comes out at least
    :data:`CLIP_MIN_EXCESS` over the maximum (glass only just at it loses no
    more than its noise). The ratio is the median of the two over the
    clipped channel's pixels just below clipping (:data:`CLIP_RATIO_BAND`
    of the maximum): there the light is absorbed a little, and nearly alike
    in every channel, so the ratio is the lamp's; with two reference
    channels, only over the pixels they dim alike
    (:data:`CLIP_NEUTRAL_MAX_OD`), where enough are such (a field of
    stained cells otherwise tints it). A clipped pixel the ratio puts below
    the maximum is put half way, in density, between the maximum and its
    glass. Pixels clipped in every channel (white labels, glass overexposed
    in every channel) are left: nothing says how bright they were.

    ``rgb``: (M, N, 3) light, float; ``at_max``: ``rgb >= rgb.max()``.
    Returns the image (a copy where rebuilt), ``at_max`` with the rebuilt
    pixels no longer at the maximum, and what was done (None: nothing).

    >>> rgb = np.full((40, 40, 3), 0.85, np.float32); rgb[..., 0] = 1.0  # R clipped on the glass
    >>> rgb[:30, :30] = (0.93, 0.75, 0.75)                               # a faint cell, R just unclipped
    >>> out, _, done = rebuild_clipped(rgb, rgb >= rgb.max())
    >>> round(float(out[35, 35, 0]), 3), done.channels, round(done.ratios[0], 3)
    (1.054, (0,), 1.24)
    """
    rgb = np.asarray(rgb)
    n_px = at_max.shape[0] * at_max.shape[1]
    if np.count_nonzero(at_max) < CLIP_MIN_SHARE * n_px:  # (nearly every image: no channel can qualify)
        return rgb, at_max, None
    share = np.array([np.count_nonzero(at_max[..., c]) for c in range(3)]) / n_px
    clipped = [c for c in range(3) if share[c] >= CLIP_MIN_SHARE]
    reference = [c for c in range(3) if share[c] <= CLIP_REFERENCE_MAX_SHARE]
    if not reference:
        least = int(np.argmin(share))
        if share[least] <= CLIP_REFERENCE_FALLBACK_SHARE and all(
                share[c] >= CLIP_REFERENCE_FALLBACK_RATIO * share[least] for c in range(3) if c != least):
            reference = [least]
            clipped = [c for c in clipped if c != least]
    if not clipped or not reference:
        return rgb, at_max, None
    top = rgb.max()
    ref = rgb[..., reference].mean(axis=-1, dtype=np.float32)
    ref_free = ~at_max[..., reference].any(axis=-1)
    white = _local_white(ref)  # (the reference's glass, where any lies near)
    if len(reference) >= 2:
        # with two reference channels, pixels whose light they dim alike
        # (against their own glass) are colourless there: the stains'
        # colours (X-gal dims red more than green) leave the ratio band
        a, b = (rgb[..., c].astype(np.float32, copy=False) for c in reference[:2])
        tint = np.abs(np.log10(np.maximum(a, 1e-6) / np.maximum(b, 1e-6))
                      - np.log10(_local_white(a) / _local_white(b)))
        colourless = ref_free & (tint <= np.float32(CLIP_NEUTRAL_MAX_OD))
    else:
        colourless = None
    out, at_max = rgb.astype(np.float32, copy=True), at_max.copy()
    done, shares, ratios = [], [], []
    for c in clipped:
        v = rgb[..., c]
        band = (v >= CLIP_RATIO_BAND[0] * top) & (v <= CLIP_RATIO_BAND[1] * top) & ref_free & (ref > 0)
        if colourless is not None and np.count_nonzero(band & colourless) >= CLIP_MIN_RATIO_PIXELS:
            band &= colourless
        if np.count_nonzero(band) < CLIP_MIN_RATIO_PIXELS:
            continue
        ratio = float(filters.median((v[band] / ref[band]).astype(np.float32)))
        lost = at_max[..., c] & ref_free
        if not lost.any():
            continue
        glass = np.float32(ratio) * white[lost]
        if float(filters.median(glass)) < (1 + CLIP_MIN_EXCESS) * top:
            continue  # (glass only just at the maximum)
        guess = np.float32(ratio) * ref[lost]
        # a pixel absorbing the reference's light more than this channel's
        # (a counterstain's colour) would read below the maximum it was
        # clipped at: its light lies between that maximum and the lamp's,
        # taken half way (in density) rather than at the maximum, which
        # read every such pixel as the absorber the clipped channel sees
        under = guess < top
        if under.any():
            guess[under] = np.sqrt(top * np.maximum(glass[under], top))
        out[..., c][lost] = guess
        at_max[..., c] &= ~lost
        done.append(c)
        shares.append(float(share[c]))
        ratios.append(ratio)
    if not done:
        return rgb, at_max, None
    return out, at_max, ClippedRebuild(tuple(done), tuple(shares), tuple(ratios), tuple(reference))


def _local_white(channel: np.ndarray, *, step: int = 8, window: int = 9) -> np.ndarray:
    """The brightest level of ``channel`` within about ``step`` x ``window``
    pixels of each pixel (a maximum over ``step``-pixel blocks' means): the
    local glass, where any lies near."""
    small = block_reduce_mean_padded(channel, step) if min(channel.shape) >= 4 * step else channel
    top = ndi.maximum_filter(small, size=window, mode="nearest")
    if top.shape == channel.shape:
        return top
    return upsample_bilinear(top, channel.shape)


def flat_lamp(rgb: np.ndarray) -> Lamp:
    """A spatially flat lamp: per channel, the 99.5th percentile of the image.

    Used with ``illumination.method = "none"``.
    """
    small = rgb[::4, ::4].reshape(-1, 3)
    white = np.percentile(small, 99.5, axis=0).astype(np.float32)
    white = np.maximum(white, 1e-3)
    image = np.broadcast_to(white, rgb.shape).astype(np.float32)
    return Lamp(image, float("nan"), 0.0, float("nan"), "none")


def lamp_from_blank(blank: np.ndarray, shape: tuple[int, ...]) -> Lamp:
    """Lamp from a blank (no cells) image of the same optics, smoothed.

    blank: (M, N, 3) float image; a median filter then a Gaussian reject dust.
    """
    if blank.shape != tuple(shape):
        raise ValueError(f"flat-field image has shape {blank.shape}, expected {tuple(shape)}")
    factor = max(1, min(blank.shape[:2]) // 128)
    small = block_reduce_mean(blank, factor)
    small = ndi.median_filter(small, size=(5, 5, 1))
    small = ndi.gaussian_filter(small, sigma=(2, 2, 0))
    image = upsample_bilinear(small, blank.shape[:2])
    image = np.maximum(image, 1e-4)
    lum = image.mean(axis=-1)
    return Lamp(image.astype(np.float32), float("nan"),
                float((lum.max() - lum.min()) / lum.mean()), 0.0, "flat_field")


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation neighbours (lo, hi) and weight of hi, pixel centres aligned."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def upsample_bilinear(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear enlargement of a smooth (M', N'[, C]) map to ``shape``:
    two neighbours per axis, pixel centres aligned, clamped at the edges.

    On OpenCV's resize where it takes the map (at least 2 x 2, up to 4
    channels); otherwise one axis at a time in numpy, in bands of output rows
    small enough to stay in cache (the same weights; the two agree to float32
    rounding, OpenCV 3-6x faster).

    >>> upsample_bilinear(np.ones((2, 3), np.float32), (4, 6)).shape
    (4, 6)
    """
    small = np.asarray(small, dtype=np.float32)
    chans = small.shape[2:]
    if small.ndim in (2, 3) and int(np.prod(chans)) <= 4 and min(small.shape[:2]) >= 2:
        import cv2

        out = cv2.resize(np.ascontiguousarray(small), (int(shape[1]), int(shape[0])),
                         interpolation=cv2.INTER_LINEAR)
        return out.reshape(tuple(shape) + chans)
    row_lo, row_hi, row_w = _interp_weights(shape[0], small.shape[0])
    row_w = row_w.reshape((-1,) + (1,) * (small.ndim - 1))
    lo, hi, w = _interp_weights(shape[1], small.shape[1])
    w = np.repeat(w, int(np.prod(chans)))[None, :]
    out = np.empty(tuple(shape) + chans, dtype=np.float32)
    # (rows, cols x channels) views keep the innermost loop long
    flat = out.reshape(shape[0], -1)
    band = max(1, (1 << 18) // max(1, flat.shape[1]))
    for r0 in range(0, shape[0], band):
        r1 = min(shape[0], r0 + band)
        rows = _lerp(small[row_lo[r0:r1]], small[row_hi[r0:r1]], row_w[r0:r1])
        flat[r0:r1] = _lerp(np.take(rows, lo, axis=1).reshape(r1 - r0, -1),
                            np.take(rows, hi, axis=1).reshape(r1 - r0, -1), w)
    return out


def _lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a + (b - a) * w``, in place in ``a`` and ``b`` (fresh copies)."""
    b -= a
    b *= w
    a += b
    return a


# Bare glass, as block means relative to the lamp, is flat to within this
# (0.5 % of the lamp = 0.002 OD); used only to accept a noise level measured
# from the glass itself when the texture-based one finds no glass (JPEG).
GLASS_MAX_SPREAD = 0.005


def _relative(lum: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Brightness relative to the lamp fit, minus one (flat, float64)."""
    return np.asarray(lum, dtype=np.float64).ravel() / np.maximum(fit, 1e-6) - 1


def _upper_spread(rel: np.ndarray) -> float:
    """SD of glass brightness from the pixels above the lamp envelope.

    Cells only darken, so relative to a lamp fitted at the envelope of the
    glass, the pixels above the fit are glass: their median excess is 0.674
    SD. Unlike local texture this sees JPEG's block-level noise and the lamp
    model's misfit.
    """
    up = rel[rel > 0]
    if up.size < 100:
        return 0.0
    up = up[up < np.percentile(up, 99.5)]  # dust, hot pixels
    return float(filters.median(up)) * 1.4826


def _glass_peak(rel: np.ndarray, *, half_range: float = 0.05, bins: int = 200,
                min_peak: float = 0.2) -> tuple[float, float]:
    """(position, SD) of bare glass in brightness relative to a lamp fit.

    Glass is the brightest population holding a fair share of the pixels
    (a histogram peak within ``half_range`` of the fit, at least
    ``min_peak`` of the highest); its SD comes from the peak's upper half
    width at half maximum, which cells (they only darken) do not widen.
    SD is inf when the peak has no upper half-maximum crossing in range.
    """
    h, edges = np.histogram(rel, bins=bins, range=(-half_range, half_range))
    c = (edges[:-1] + edges[1:]) / 2
    hs = ndi.gaussian_filter1d(h.astype(np.float64), 2)
    if hs.max() <= 0:
        return 0.0, float("inf")
    inner = hs[1:-1]
    peaks = np.flatnonzero((inner > hs[:-2]) & (inner >= hs[2:]) & (inner >= min_peak * hs.max())) + 1
    i = int(peaks[-1]) if peaks.size else int(np.argmax(hs))
    j = i
    while j < bins - 1 and hs[j] > 0.5 * hs[i]:
        j += 1
    if hs[j] > 0.5 * hs[i] or j == i:
        return float(c[i]), float("inf")
    t = (hs[j - 1] - 0.5 * hs[i]) / max(hs[j - 1] - hs[j], 1e-12)
    return float(c[i]), float((c[j - 1] + t * (c[j] - c[j - 1]) - c[i]) / 1.1774)


# A lamp fit that leaves at least this share of the field's smooth pixels
# more than UPPER_MIN_EXCESS (relative) above it sits on something darker
# than glass; and glass this scarce (0.5 % of a field) still anchors a lamp.
UPPER_MIN_FRACTION = 0.005
UPPER_MIN_EXCESS = 0.01
# ... and the refit may raise the lamp by at most this (relative, median)
UPPER_MAX_RISE = 0.2
# Bare glass relative to the lamp is flat to within this SD (JPEG blocks and
# the lamp model's misfit included); a brighter population spread wider is
# bright cytoplasm, not glass.
GLASS_ACCEPT_SPREAD = 0.008
# Where the few-noise-SD window finds glass on less than this share of the
# field, the brightest population's own histogram peak is tried for it
# (_fit_lamp_small, step 2b; only where the plain fits leave the glass scarce).
PEAK_GLASS_BELOW = 0.05


def _glass_peak_of(rel: np.ndarray, unclipped: np.ndarray) -> tuple[float, float]:
    """:func:`_glass_peak` of the unclipped blocks (``rel``: flat, relative
    to a lamp fit) that lie level with the fit or above it: the darker cells
    below ``-UPPER_MIN_EXCESS`` are not in question."""
    return _glass_peak(rel[unclipped.ravel() & (rel > -UPPER_MIN_EXCESS)])


def _refit_upper(lum: np.ndarray, a_full: np.ndarray, fit: np.ndarray, noise: float,
                 smooth: np.ndarray) -> np.ndarray | None:
    """Refit the lamp to the smooth pixels well above it; None when there
    are too few to matter.

    Nothing in a brightfield field is brighter than bare glass, so smooth
    pixels clearly above a lamp fit mean the fit lies on faint cytoplasm
    (a confluent sheet whose few gaps the envelope treated as outliers, or
    glass it never reached). The surface is refitted to that brighter
    population (pixels level with its median), until none is left above.
    """
    lum_flat = lum.ravel().astype(np.float64)
    sm = smooth.ravel()
    start = fit
    moved = False
    for _ in range(8):
        rel = _relative(lum_flat, fit)
        up = sm & (rel > max(4 * noise, UPPER_MIN_EXCESS))
        if up.mean() < UPPER_MIN_FRACTION or not _spread_out(up.reshape(lum.shape)):
            break
        up &= rel < np.percentile(rel[up], 99)
        # the brighter population and whatever lies level with it
        lvl = float(filters.median(rel[up]))
        keep = sm & (np.abs(rel - lvl) < max(4 * noise, UPPER_MIN_EXCESS))
        coef = _least_squares(a_full[keep], lum_flat[keep])
        fit = a_full @ coef
        moved = True
    if not moved or np.median(fit / np.maximum(start, 1e-12)) > 1 + UPPER_MAX_RISE:
        # (a lamp on faint cytoplasm is a few per cent below the glass; far
        # more is something else bright: an annotation, a reflection)
        return None
    return fit


def _spread_out(mask: np.ndarray) -> bool:
    """True when ``mask`` is spread over the field (at least 3 of its 4
    quadrants hold 5 % of it or more), not one compact bright thing such as
    a scale bar or a text label burnt into the image."""
    m, n = mask.shape
    total = max(int(mask.sum()), 1)
    quads = [mask[: m // 2, : n // 2], mask[: m // 2, n // 2:], mask[m // 2:, : n // 2], mask[m // 2:, n // 2:]]
    return sum(int(q.sum()) >= 0.05 * total for q in quads) >= 3


def _envelope_fit(lum: np.ndarray, a_full: np.ndarray, fit: np.ndarray, noise: float, *,
                  revise: bool = False, max_spread: float = GLASS_MAX_SPREAD) -> np.ndarray:
    """Iteratively refit a smooth surface to the pixels at or above it (within
    the noise of a block mean), so cells (darker) drop out and bare glass
    remains. ``revise``: re-measure the noise from the upper spread each round
    (at most ``max_spread``).
    """
    lum_flat = lum.ravel().astype(np.float64)
    step = max(1, int(np.sqrt(lum_flat.size / 12000)))
    sub = np.zeros(lum.shape, dtype=bool)
    sub[::step, ::step] = True
    sub = sub.ravel()
    noise0 = noise
    for it in range(10):
        rel = _relative(lum_flat, fit)
        if revise and it > 0:
            noise = max(noise0, min(_upper_spread(rel), max_spread))
        keep = (rel > -3 * noise) & (rel < 4 * noise)
        if it == 0 or keep.sum() < 0.02 * keep.size:
            # far from the envelope yet: take the brightest half as a start
            mid, top = np.percentile(rel, [50, 99.5])  # (one partition for both)
            keep = (rel >= mid) & (rel < top)
        sel = keep & sub
        if sel.sum() < a_full.shape[1] * 10:
            break
        coef = _least_squares(a_full[sel], lum_flat[sel])
        new_fit = a_full @ coef
        if it > 0 and np.max(np.abs(new_fit - fit) / np.maximum(fit, 1e-6)) < noise / 4:
            fit = new_fit
            break
        fit = new_fit
    return fit


def _glass(lum: np.ndarray, fit: np.ndarray, noise: float, smooth: np.ndarray, *,
           offset: float = 0.0) -> np.ndarray:
    """Block pixels within the noise of the lamp fit (plus ``offset``,
    relative) and smooth, eroded by one."""
    rel = _relative(lum, fit).reshape(lum.shape) - offset
    bg = (rel > -3 * noise) & (rel < 4 * noise) & smooth
    return ndi.binary_erosion(bg, iterations=1, border_value=1)


# When a lamp model of the configured degree finds too little glass to anchor
# on, one this much more flexible is tried: strong vignetting (a steep,
# non-quadratic fall-off towards the corners) leaves a quadratic envelope
# below the glass on one side and above it on the other.
ESCALATE_DEGREE_BY = 2
# ... and is kept when it finds at least this share of the field bare glass.
ESCALATED_MIN_GLASS = 0.05
# ... and it is tried too when the fit found bare glass on less than this share
# of the field (as the pipeline's SHEET_GLASS_FRACTION), and kept when it finds
# at least ESCALATE_GAIN times as much: one fresh JPEG field with 53 % glass,
# 5 % found by the quadratic and 42 % by the quartic (0.1 % of it on cells);
# the development sheets' quartic fits found no more than their quadratic ones.
ESCALATE_BELOW_GLASS = 0.15
ESCALATE_GAIN = 2.0
# ... and it is tried where the fit found plenty of glass but almost none along
# one edge: one of the 12 border regions of a 4 x 4 grid holding under this
# share of the field-wide glass fraction. It is kept when it finds at least as
# much glass and none of its border regions is starved. (Two fresh fields with
# strong off-centre vignetting: 0.07 and 0.00 of a border region glass against
# 0.57 and 0.50 overall; the quadratic lamp sat 2 % above the glass along that
# edge, whose strip came out as false cells -- 9.4 pp. Development sheets and
# even fields: their starkest border region at 0.5x the field's fraction;
# there a flexible lamp that finds more glass finds it on faint cytoplasm.)
BORDER_STARVED_SHARE = 0.25
BORDER_REGIONS = 4


def estimate_lamp(rgb: np.ndarray, *, block_px: int = 48, degree: int = 2,
                  at_max: np.ndarray | None = None, spread_factor: float = 1.0) -> Lamp:
    """Estimate the lamp (white level per channel and pixel) from the image itself.

    Fits the lamp with a polynomial vignetting model of ``degree``
    (:func:`_fit_lamp`); when that finds too little bare glass (it falls
    back to the bright-percentile guess), a model ``ESCALATE_DEGREE_BY``
    degrees more flexible is tried and kept if it finds at least
    ``ESCALATED_MIN_GLASS`` of the field bare glass. So it is when the fit
    finds glass on under ``ESCALATE_BELOW_GLASS`` of the field (the
    pipeline would call the field a confluent sheet): the flexible model is
    kept if it finds ``ESCALATE_GAIN`` times as much (a steep fall-off the
    quadratic misses by a few tenths of a per cent leaves most of the glass
    outside its few-noise-SD window; a sheet's faint cytoplasm does not
    become glass under a more flexible model). Where glass is plentiful but
    one region along the field's edge holds almost none of it
    (:func:`_border_starved`) the flexible model is tried too, and kept if it
    finds as much glass and starves no border region. Where glass is still scarce
    (or the fit fell back to the percentile guess), both degrees are fitted
    again reading the glass off its own histogram peak (JPEG glass, faint
    cells: :func:`_fit_lamp_small` step 2b), and a fit that finds more glass
    that way (at least ``ESCALATED_MIN_GLASS``) is kept. ``at_max``
    (``rgb >= rgb.max()``, (M, N, 3) bool) when the caller has it already.
    ``spread_factor``: the glass spreads the fits accept (``GLASS_MAX_SPREAD``,
    ``GLASS_ACCEPT_SPREAD``) times this: more than 1 only where the caller
    checks the glass found against the cells (noisy glass, such as an sRGB
    JPEG's after decoding, is as flat as a sheet's brightest cytoplasm).
    """
    if at_max is None:
        rgb = np.asarray(rgb, dtype=np.float32)
        at_max = rgb >= rgb.max()
    # (both fits read the same block statistics and are compared at block
    # resolution: only the one kept is brought to full resolution)
    blocks = _lamp_blocks(rgb, at_max, spread_factor=spread_factor)
    lamp = _fit_lamp_small(blocks, block_px=block_px, degree=degree)
    plain = {degree: lamp}
    flexible_degree = min(6, degree + ESCALATE_DEGREE_BY)
    if not _glass_scarce(lamp) and 0 < degree < 6 and _border_starved(lamp):
        # glass plentiful, but missing along one side: a fall-off steeper at
        # that edge than the model's leaves the glass there below its window
        flexible = _fit_lamp_small(blocks, block_px=block_px, degree=flexible_degree)
        if (flexible.method == "auto" and flexible.background_fraction >= lamp.background_fraction
                and not _border_starved(flexible)):
            lamp = flexible
    if _glass_scarce(lamp) and 0 < degree < 6:
        flexible = _fit_lamp_small(blocks, block_px=block_px, degree=flexible_degree)
        plain[flexible_degree] = flexible
        need = ESCALATED_MIN_GLASS if lamp.method == "auto-percentile" else max(
            ESCALATED_MIN_GLASS, ESCALATE_GAIN * lamp.background_fraction)
        if flexible.method == "auto" and (flexible.background_fraction >= need or _above_glass_of(flexible, lamp)):
            lamp = flexible
    if _glass_scarce(lamp):
        # glass still scarce: read off its histogram peak (step 2b), at both
        # degrees, where that finds more than the fit kept
        for deg in sorted(d for d, fit in plain.items() if fit.peak_helps):
            alt = _fit_lamp_small(blocks, block_px=block_px, degree=deg, peak=True)
            if alt.glass_from_peak and alt.background_fraction > max(
                    lamp.background_fraction if lamp.method == "auto" else 0.0, ESCALATED_MIN_GLASS):
                lamp = alt
    return _full_lamp(lamp)


# How far above the plain lamp model's glass a flexible model's may lie and
# still be taken for the true glass (_above_glass_of): the pale margins of
# a sheet's cells are a few per cent below it (two development sheets: 1.9
# and 2.5 %); a quartic bent up to a white bar burnt into a test image rose 13 %.
ABOVE_GLASS_MAX_RISE = 0.06


def _above_glass_of(flexible: "_LampFit", plain: "_LampFit") -> bool:
    """Whether the flexible model's glass is a flat population brighter
    than the glass the plain model found (step 3 of :func:`_fit_lamp_small`,
    its lamp over the plain one's glass at least UPPER_MIN_EXCESS higher,
    at most ABOVE_GLASS_MAX_RISE: more is no margin of a cell but a bright
    thing the flexible surface bent up to, such as a white scale bar):
    nothing in a brightfield field outshines bare glass, so the plain
    model's "glass" was faint cytoplasm, however much more of it there is
    (a sheet with 1 % of its field bare: the quadratic's glass, 13 % of the
    field, lay on the cells' pale margins; the quartic's 0.8 %, half of it
    on the true glass, was turned away for finding less)."""
    if not flexible.from_upper or plain.method != "auto" or plain.background_small is None:
        return False
    on = plain.background_small
    rise = flexible.lamp_small.mean(axis=-1)[on] / np.maximum(plain.lamp_small.mean(axis=-1)[on], 1e-6)
    return bool(1 + UPPER_MIN_EXCESS <= np.median(rise) <= 1 + ABOVE_GLASS_MAX_RISE)


def _border_starved(fit: "_LampFit") -> bool:
    """The fit's glass is missing from a region at the field's edge: of the
    4 x 4 regions, one of the 12 along the border holds under
    ``BORDER_STARVED_SHARE`` of the field-wide glass fraction."""
    bg = fit.background_small
    if bg is None or fit.background_fraction <= 0:
        return False
    m, n = bg.shape
    k = BORDER_REGIONS
    if m < 2 * k or n < 2 * k:
        return False
    rows = np.linspace(0, m, k + 1).astype(int)
    cols = np.linspace(0, n, k + 1).astype(int)
    share = np.array([[bg[rows[i]:rows[i + 1], cols[j]:cols[j + 1]].mean() for j in range(k)] for i in range(k)])
    border = np.ones((k, k), dtype=bool)
    border[1:-1, 1:-1] = False
    return bool(share[border].min() < BORDER_STARVED_SHARE * fit.background_fraction)


def _glass_scarce(fit: "_LampFit") -> bool:
    """The fit fell back to the percentile guess, or found bare glass on
    under ``ESCALATE_BELOW_GLASS`` of the field (:func:`estimate_lamp`)."""
    return fit.method == "auto-percentile" or fit.background_fraction < ESCALATE_BELOW_GLASS


@dataclass(frozen=True)
class _LampFit:
    """A lamp fit on the block-reduced image (:func:`_fit_lamp_small`), before
    it is brought to full resolution (:func:`_full_lamp`)."""

    lamp_small: np.ndarray  # (m', n', 3)
    background_fraction: float
    residual: float
    method: str
    background_small: np.ndarray | None  # (m', n') bool, None for the percentile fallback
    shape: tuple[int, int]
    factor: int
    glass_from_peak: bool = False  # the glass read off its histogram peak (step 2b)
    peak_helps: bool = False  # step 2b would find more glass (whether or not it was used)
    from_upper: bool = False  # the glass a brighter population above the envelope fit (step 3)


def _fit_lamp(rgb: np.ndarray, *, block_px: int, degree: int, at_max: np.ndarray) -> Lamp:
    """The lamp from the image itself, with a vignetting model of ``degree``
    (:func:`_fit_lamp_small`, at full resolution)."""
    return _full_lamp(_fit_lamp_small(_lamp_blocks(rgb, at_max), block_px=block_px, degree=degree))


def _full_lamp(fit: _LampFit) -> Lamp:
    """A block-reduced lamp fit brought to the image's resolution."""
    m, n = fit.shape
    f = fit.factor
    lamp_small = np.maximum(fit.lamp_small, 1e-4).astype(np.float32)
    image = upsample_bilinear(lamp_small, (m, n)) if f > 1 else lamp_small
    lum_fit = lamp_small.mean(axis=-1)
    nonuni = float((lum_fit.max() - lum_fit.min()) / max(lum_fit.mean(), 1e-6))
    bg_full = None
    if fit.background_small is not None:
        bg_full = np.zeros((m, n), dtype=bool)
        import cv2

        small = np.ascontiguousarray(fit.background_small).view(np.uint8)
        # (nearest-neighbour enlargement by a whole factor: np.repeat's blocks)
        up = cv2.resize(small, (small.shape[1] * f, small.shape[0] * f), interpolation=cv2.INTER_NEAREST)
        bg_full[: up.shape[0], : up.shape[1]] = up.view(bool)
    return Lamp(image.astype(np.float32, copy=False), fit.background_fraction, nonuni, fit.residual, fit.method,
                bg_full, fit.glass_from_peak)


@dataclass(frozen=True)
class _LampBlocks:
    """What every lamp fit of one image reads (:func:`_lamp_blocks`), whatever
    its model's degree: the block-reduced image and its glass noise."""

    small: np.ndarray  # (m', n', 3) block means
    lum: np.ndarray  # (m', n') their mean over R, G, B
    yy: np.ndarray  # (m', n') block centres, -1..1
    xx: np.ndarray
    noise: float  # relative noise of one block mean, from the smoothest blocks' texture
    smooth: np.ndarray  # (m', n') bool: texture at the smooth-glass level
    unclipped: np.ndarray  # (m', n') bool: smooth and clear of clipped pixels
    shape: tuple[int, int]
    factor: int
    max_spread: float = GLASS_MAX_SPREAD  # the glass spreads accepted (estimate_lamp's spread_factor applied)
    accept_spread: float = GLASS_ACCEPT_SPREAD
    _terms: dict = field(default_factory=dict, compare=False, repr=False)

    def terms(self, degree: int) -> np.ndarray:
        """The polynomial terms of every block (``_poly_terms(yy.ravel(),
        xx.ravel(), degree)``), formed once per degree for all the fits."""
        if degree not in self._terms:
            self._terms[degree] = _grid_terms(self.yy[:, 0], self.xx[0], degree)
        return self._terms[degree]


# A 4x4 block whose relative SD is under this is perfectly flat: JPEG's
# work (an 8-bit camera's noise alone is ~0.5 % of the glass).
FLAT_BLOCK_TEXTURE = 1e-5


def _lamp_blocks(rgb: np.ndarray, at_max: np.ndarray, *, spread_factor: float = 1.0) -> _LampBlocks:
    """The image reduced 4x by block means (noise drops, speed rises), each
    block's texture (SD within it) against the image's smooth-glass level,
    and the blocks clear of clipped pixels (``at_max``: ``rgb >= rgb.max()``,
    a white scale bar or label burnt in). ``spread_factor``: as
    :func:`estimate_lamp`'s."""
    rgb = np.asarray(rgb, dtype=np.float32)
    m, n = rgb.shape[:2]
    f = 4 if min(m, n) >= 128 else 1
    small, sq = _block_moments(rgb, f) if f > 1 else (rgb, rgb * rgb)  # (m', n', 3) means
    lum = small.mean(axis=-1)
    texture = np.sqrt(np.maximum(sq.mean(axis=-1) - (small * small).mean(axis=-1), 0)) / np.maximum(lum, 1e-6)
    sm, sn = lum.shape
    yy, xx = np.mgrid[0:sm, 0:sn].astype(np.float64)
    yy = (yy + 0.5) / sm * 2 - 1
    xx = (xx + 0.5) / sn * 2 - 1
    tex_ref = float(np.percentile(texture, 20))
    noise = max(tex_ref / f, 1e-4)  # relative noise of one block mean
    # JPEG flattens many blocks of glass to no texture at all (camera noise
    # never does) and leaves others with its quantisation ripple: the
    # smooth level is then read off the blocks that kept some texture, or
    # half the glass would fail it (a second renderer's JPEG field: 22 % of
    # its 85 % glass found, its cells grown over the rest)
    basis = texture
    flat = texture < FLAT_BLOCK_TEXTURE
    if flat.mean() >= 0.2 and np.count_nonzero(~flat) >= 100:
        basis = texture[~flat]
    smooth_ref = float(np.percentile(basis, 20))
    tex_spread = float(filters.median(np.abs(basis - smooth_ref))) * 1.4826 + 1e-6
    smooth = texture < smooth_ref + 4 * tex_spread
    saturated = at_max[..., 0] | at_max[..., 1] | at_max[..., 2]
    clipped = block_reduce_mean(saturated, f) > 0.25 if f > 1 else saturated
    clipped = ndi.binary_dilation(clipped[:sm, :sn], iterations=1)
    return _LampBlocks(small, lum, yy, xx, noise, smooth, smooth & ~clipped, (m, n), f,
                       GLASS_MAX_SPREAD * spread_factor, GLASS_ACCEPT_SPREAD * spread_factor)


def _tiles(a: np.ndarray, ty: int, tx: int, b: int) -> np.ndarray:
    """The top-left ``ty`` x ``tx`` tiles of ``b`` x ``b`` pixels of ``a``
    ((m, n) or (m, n, c)), each tile's pixels along axis 2: (ty, tx, b*b[, c])."""
    t = a[: ty * b, : tx * b].reshape(ty, b, tx, b, *a.shape[2:]).swapaxes(1, 2)
    return t.reshape(ty, tx, b * b, *a.shape[2:])


def _fit_lamp_small(blocks: _LampBlocks, *, block_px: int, degree: int, peak: bool = False) -> _LampFit:
    """The lamp from the image itself, with a vignetting model of ``degree``.

    Parameters
    ----------
    blocks : _LampBlocks
        The image's block statistics (:func:`_lamp_blocks`).
    block_px : int
        Tile size used for the first, percentile-based guess.
    degree : int
        Degree of the polynomial vignetting model per channel.

    Returns
    -------
    _LampFit

    Notes
    -----
    1. The image is reduced 4x by block means (noise drops, speed rises) and
       a first lamp guess is the 90th percentile of brightness in tiles of
       ``block_px``, fitted by a polynomial.
    2. Background = pixels within a few noise SDs of that guess whose local
       texture (SD within a 4x4 block) is at the image's smooth-glass level.
    2b. (``peak``) If that finds glass on under ``PEAK_GLASS_BELOW`` of the
       field, the brightest population's histogram peak relative to the fit
       (:func:`_glass_peak`) sets the window instead, when it lies within
       1 % of the fit and is flat to within ``GLASS_MAX_SPREAD``: JPEG reads
       the glass far flatter in texture than it is from block to block.
    3. If smooth pixels remain clearly above that fit (at least 0.5 % of the
       field, 1 % brighter), the "glass" was faint cytoplasm: the surface is
       refitted to the brighter population and kept when it forms one flat
       peak level with the new fit (:func:`_refit_upper`).
    4. Each channel's lamp is a robust polynomial fit to the background
       pixels (trimmed at 3 MAD). If under 2 % of the field is background
       (0.5 % when found in step 3; a confluent sheet), the percentile guess
       is used, each channel with its own smooth share of it (a lamp's colour
       can change from centre to edge) and its own level.
    """
    small, lum, yy, xx = blocks.small, blocks.lum, blocks.yy, blocks.xx
    noise, smooth, unclipped = blocks.noise, blocks.smooth, blocks.unclipped
    f = blocks.factor
    sm, sn = lum.shape

    # 1. First guess: bright percentile per tile.
    b = max(2, block_px // f)
    ty, tx = max(1, sm // b), max(1, sn // b)
    tile_hi = np.percentile(_tiles(lum, ty, tx, b), 90, axis=2)
    tyy, txx = np.mgrid[0:ty, 0:tx].astype(np.float64)
    tyy = ((tyy + 0.5) * b / sm) * 2 - 1
    txx = ((txx + 0.5) * b / sn) * 2 - 1
    deg0 = min(degree, 2 if ty * tx >= 12 else 0)
    coef0 = _robust_polyfit(tyy.ravel(), txx.ravel(), tile_hi.ravel(), deg0)
    guess = (blocks.terms(deg0).reshape(sm, sn, -1) @ coef0) if coef0 is not None else np.full_like(lum, np.median(tile_hi))
    guess = np.maximum(guess, 1e-6)

    # 2. Background = the upper envelope of brightness: iteratively refit the
    #    smooth surface to the pixels at or above it (within the noise of a
    #    block mean), so cells (darker) drop out and bare glass remains.
    a_full = blocks.terms(degree)
    max_spread = blocks.max_spread
    fit = _envelope_fit(lum, a_full, guess.ravel(), noise, max_spread=max_spread)
    bg = _glass(lum, fit, noise, smooth)
    # The texture-based noise can be too low: JPEG flattens bare glass
    # (texture ~ 0) while its block-to-block level and the lamp model's misfit
    # remain. Measure the spread of glass directly, from the pixels above the
    # envelope, and use it if that plateau is flat to within GLASS_MAX_SPREAD
    # (a confluent sheet's brightest cytoplasm is not).
    fit_up = _envelope_fit(lum, a_full, guess.ravel(), noise, revise=True, max_spread=max_spread)
    spread = _upper_spread(_relative(lum, fit_up))
    if noise < spread <= max_spread:
        bg_up = _glass(lum, fit_up, spread, smooth)
        if bg_up.mean() > bg.mean():
            fit, noise, bg = fit_up, spread, bg_up
    # 2b. JPEG with faint cells: block texture reads the glass ~5x flatter
    #     than its block-to-block spread, the few-noise-SD window catches
    #     almost none of it, and the upper spread is read off a fit that
    #     sits between glass and cells. The brightest population's own
    #     peak gives both where the glass lies and how wide it is.
    #     (Judged on every fit, used only with ``peak``: the caller refits
    #     with it where the plain fits leave glass scarce and it would help.)
    from_peak = peak_helps = False
    if bg.mean() < PEAK_GLASS_BELOW:
        offset, spread = _glass_peak_of(_relative(lum, fit), unclipped)
        if noise < spread <= max_spread and abs(offset) <= UPPER_MIN_EXCESS:
            bg_pk = _glass(lum, fit, spread, unclipped, offset=offset)
            peak_helps = bool(bg_pk.mean() > bg.mean())
            if peak and peak_helps:
                noise, bg, from_peak = spread, bg_pk, True
    # 3. Smooth pixels clearly brighter than that glass mean it was not glass
    #    (faint cytoplasm of a confluent sheet, or glass the envelope never
    #    reached): refit to them, and keep the result if they form one flat
    #    population level with the new fit (a broad upper tail of cytoplasm
    #    peaks below the fit, or spreads wider than glass).
    #    Clipped blocks (pixels at the image's maximum, and their neighbours)
    #    take no part: a white scale bar or label is brighter than glass but
    #    says nothing about the lamp.
    fit_hi = _refit_upper(lum, a_full, fit, noise, unclipped)
    min_frac = 0.02
    from_upper = False
    if fit_hi is not None:
        # judged on what lies level with the new fit or above it: the sheet
        # below (a taller peak when glass is scarce) is not in question
        offset, spread = _glass_peak_of(_relative(lum, fit_hi), unclipped)
        if spread <= blocks.accept_spread and offset >= -spread:
            bg_hi = _glass(lum, fit_hi, max(noise, spread), unclipped, offset=offset)
            if bg_hi.mean() >= UPPER_MIN_FRACTION:
                fit, noise, bg = fit_hi, max(noise, spread), bg_hi
                min_frac = UPPER_MIN_FRACTION
                from_upper = True
    frac = float(bg.mean())

    if frac < min_frac:
        # Confluent: every tile has cells; the bright percentile is the best we have.
        # Each channel keeps its own fall-off (a lamp whose colour shifts
        # from centre to edge, as many objectives' vignetting does): its
        # share of the brightness in each tile's bright pixels, fitted as
        # smoothly as the brightness, scales the guess; its level is the
        # channel's own bright percentile, as for a flat colour.
        tile_ch_hi = np.percentile(_tiles(small, ty, tx, b), 90, axis=2)  # (ty, tx, 3)
        lum_hi = np.percentile(lum, 97)
        chans = []
        for c in range(3):
            ch = small[..., c]
            level = np.percentile(ch, 97) / lum_hi
            share = tile_ch_hi[..., c] / np.maximum(tile_hi, 1e-6)
            coef_c = _robust_polyfit(tyy.ravel(), txx.ravel(), share.ravel(), deg0)
            if coef_c is None or deg0 == 0:
                shape_c = 1.0
            else:
                shape_c = blocks.terms(deg0).reshape(sm, sn, -1) @ coef_c
                shape_c = np.clip(shape_c / max(float(np.median(shape_c)), 1e-6), 0.8, 1.25)
            chans.append(level * shape_c * guess)
        lamp_small = np.stack(chans, axis=-1)
        resid = float("nan")
        method = "auto-percentile"
    else:
        step = max(1, int(np.sqrt(bg.sum() / 8000)))
        sel = np.zeros_like(bg)
        sel[::step, ::step] = True
        sel &= bg
        py, px = yy[sel], xx[sel]
        a_sel = a_full[sel.ravel()]
        chans = []
        resids = []
        for c in range(3):
            coef = _robust_polyfit(py, px, small[..., c][sel], degree, terms=a_sel)
            if coef is None:
                # too few glass blocks for the model: a flat lamp (the
                # constant is the first term)
                flat = _robust_polyfit(py, px, small[..., c][sel], 0)
                coef = np.zeros(a_full.shape[1])
                coef[0] = flat[0] if flat is not None else np.median(small[..., c][sel])
            fit = (a_full @ coef).reshape(sm, sn)
            chans.append(fit)
            r = np.log10(np.maximum(small[..., c][sel], 1e-6) / np.maximum(fit[sel], 1e-6))
            resids.append(np.median(np.abs(r - np.median(r))) * 1.4826)
        lamp_small = np.stack(chans, axis=-1)
        resid = float(np.mean(resids))
        method = "auto"
    return _LampFit(lamp_small, frac, resid, method, bg if frac >= min_frac else None, blocks.shape, f,
                    from_peak and method == "auto", peak_helps, from_upper and method == "auto")
