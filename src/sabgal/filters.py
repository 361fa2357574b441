"""``scipy.ndimage`` filters with the same results, faster.

The Gaussian runs on OpenCV's vectorised separable filter when the call is
one scipy would make with its defaults (2-D float image, scalar sigma,
``mode="reflect"``, ``truncate=4``): the same kernel radius
(``int(4 sigma + 0.5)``) and border rule (``BORDER_REFLECT`` is scipy's
``reflect``), values equal to ~1e-7, 3-7x faster. sabgal parallelises over
images, so OpenCV is held to one thread.

Otherwise scipy is used, faster on power-of-two widths:

scipy filters a 2-D image along its columns by reading lines with the row
stride; when that stride is a multiple of 4 KiB (1024 or 2048 float32
columns) every element of a column falls into the same few cache sets, and
the column pass runs 2-3x slower than on a slightly wider image. Filtering a
copy whose rows are padded by 64 bytes (the image itself is a view of it, the
padding never read) gives identical values at a fraction of the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage as ndi

cv2.setNumThreads(1)

__all__ = ["gaussian_filter", "gaussian_laplace", "gaussian_laplace_ladder", "laplace", "grey_closing",
           "distance_transform", "median", "box_mean", "jpeg_blockiness"]

_ALIAS_BYTES = 4096
_PAD_BYTES = 64


def _apply(fn: Callable[..., np.ndarray], image: np.ndarray, *args, **kwargs) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] < 64 or (image.shape[1] * image.itemsize) % _ALIAS_BYTES:
        return fn(image, *args, **kwargs)
    rows, cols = image.shape
    wide = cols + max(1, _PAD_BYTES // image.itemsize)
    src = np.empty((rows, wide), dtype=image.dtype)[:, :cols]
    src[...] = image
    out = np.empty((rows, wide), dtype=image.dtype)[:, :cols]
    fn(src, *args, output=out, **kwargs)
    return np.ascontiguousarray(out)


def gaussian_filter(image: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    """``ndi.gaussian_filter(image, sigma, **kwargs)`` of a 2-D image (same dtype out)."""
    image = np.asarray(image)
    if (not kwargs and np.isscalar(sigma) and sigma > 0 and image.ndim == 2
            and image.dtype in (np.float32, np.float64) and min(image.shape) > 2 * int(4 * sigma + 0.5)):
        k = 2 * int(4.0 * float(sigma) + 0.5) + 1
        return cv2.GaussianBlur(np.ascontiguousarray(image), (k, k), float(sigma), sigmaY=float(sigma),
                                borderType=cv2.BORDER_REFLECT)
    return _apply(ndi.gaussian_filter, image, sigma, **kwargs)


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean of a 2-D float image over the (2 ``radius`` + 1)-pixel square
    round each pixel (borders reflected as scipy's ``reflect``)."""
    k = 2 * int(radius) + 1
    return cv2.blur(np.ascontiguousarray(image), (k, k), borderType=cv2.BORDER_REFLECT)


def _gauss_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """scipy's 1-D Gaussian kernel (radius int(4 sigma + 0.5)) and its second derivative."""
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / sigma) ** 2)
    phi /= phi.sum()
    return phi, phi * (x * x / sigma ** 4 - 1.0 / sigma ** 2)


def gaussian_laplace(image: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    """``ndi.gaussian_laplace(image, sigma, **kwargs)`` of a 2-D image."""
    image = np.asarray(image)
    if (not kwargs and np.isscalar(sigma) and sigma > 0 and image.ndim == 2
            and image.dtype in (np.float32, np.float64) and min(image.shape) > 2 * int(4 * sigma + 0.5)):
        g, d2 = _gauss_kernels(float(sigma))
        src = np.ascontiguousarray(image)
        ddepth = cv2.CV_32F if image.dtype == np.float32 else cv2.CV_64F
        kw = dict(borderType=cv2.BORDER_REFLECT)
        return (cv2.sepFilter2D(src, ddepth, d2, g, **kw) + cv2.sepFilter2D(src, ddepth, g, d2, **kw))
    return _apply(ndi.gaussian_laplace, image, sigma, **kwargs)


# Kernels at least this long (sigma >= 2.4) go through the Fourier transform
# in gaussian_laplace_ladder: one 2-D inverse transform costs about what a
# 19-tap separable pass pair does on the same image (the forward transform
# is shared), and the 101-tap passes of the largest rungs cost 8x that.
LADDER_FFT_MIN_TAPS = 21
# ... and a lone such rung (nothing to share the forward transform with)
# only from this length (sigma >= 5): both transforms cost what a 41-tap
# pass pair does.
SINGLE_FFT_MIN_TAPS = 41


def gaussian_laplace_ladder(image: np.ndarray, sigmas):
    """:func:`gaussian_laplace` of a 2-D float image at each of ``sigmas``
    in turn (a generator: one response held at a time).

    Rungs whose kernel is at least ``LADDER_FFT_MIN_TAPS`` long (when
    there are two or more; ``SINGLE_FFT_MIN_TAPS`` for one alone) are
    filtered by multiplication in the Fourier domain, all from one forward
    transform of the image padded by reflection (scipy's ``reflect``,
    OpenCV's ``BORDER_REFLECT``) by the largest kernel radius, so the
    circular convolution never wraps: the same sampled kernels and borders
    as the direct filter, the values equal to float32 rounding (closer to
    the exact float64 result than the direct float32 passes), and a scale
    ladder of 20 rungs on a 1024 x 1024 image about 3x faster.

    >>> img = np.zeros((64, 64), np.float32); img[20:30, 25:40] = 1
    >>> all(np.allclose(a, gaussian_laplace(img, s), atol=1e-6)
    ...     for a, s in zip(gaussian_laplace_ladder(img, [1.0, 3.0, 6.0]), [1.0, 3.0, 6.0]))
    True
    """
    import scipy.fft as sfft

    image = np.asarray(image)
    sigmas = [float(s) for s in sigmas]
    radii = [int(4.0 * s + 0.5) for s in sigmas]
    direct = (image.ndim != 2 or image.dtype not in (np.float32, np.float64)
              or min(image.shape, default=0) <= 2 * max(radii, default=0))
    big = [r for r in radii if 2 * r + 1 >= LADDER_FFT_MIN_TAPS]
    if len(big) == 1 and 2 * big[0] + 1 < SINGLE_FFT_MIN_TAPS:
        big = []
    spectrum = None
    for s, r in zip(sigmas, radii):
        if direct or r not in big:
            yield gaussian_laplace(image, s)
            continue
        if spectrum is None:
            pad = max(big)
            m, n = image.shape
            ly, lx = sfft.next_fast_len(m + 2 * pad, real=True), sfft.next_fast_len(n + 2 * pad, real=True)
            padded = np.zeros((ly, lx), dtype=image.dtype)
            padded[: m + 2 * pad, : n + 2 * pad] = np.pad(image, pad, mode="symmetric")
            spectrum = sfft.rfft2(padded, workers=1)
            product = np.empty_like(spectrum)
            del padded
        g, d2 = _gauss_kernels(s)
        gy, dy = _kernel_response(g, ly, False, image.dtype), _kernel_response(d2, ly, False, image.dtype)
        gx, dx = _kernel_response(g, lx, True, image.dtype), _kernel_response(d2, lx, True, image.dtype)
        transfer = dy[:, None] * gx[None, :]
        transfer += gy[:, None] * dx[None, :]
        np.multiply(spectrum, transfer, out=product)
        out = sfft.irfft2(product, s=(ly, lx), workers=1, overwrite_x=True)
        yield np.ascontiguousarray(out[pad: pad + m, pad: pad + n])


def _kernel_response(kernel: np.ndarray, length: int, half: bool, dtype) -> np.ndarray:
    """The Fourier transform of a symmetric odd-length 1-D ``kernel`` centred
    on index 0 of a circular line of ``length`` (real, as the kernel is
    symmetric): the full transform, or ``half`` (rfft) for the last axis."""
    r = kernel.size // 2
    line = np.zeros(length)
    line[: r + 1], line[length - r:] = kernel[r:], kernel[:r]
    return (np.fft.rfft(line) if half else np.fft.fft(line)).real.astype(dtype)


def laplace(image: np.ndarray, **kwargs) -> np.ndarray:
    """``ndi.laplace(image, **kwargs)`` of a 2-D image."""
    return _apply(ndi.laplace, image, **kwargs)


def grey_closing(image: np.ndarray, size: int) -> np.ndarray:
    """``ndi.grey_closing(image, size=(size, size))`` of a 2-D float image
    (OpenCV, reflected borders as scipy's default; identical values)."""
    image = np.asarray(image)
    if image.ndim == 2 and image.dtype in (np.float32, np.float64) and min(image.shape) > size:
        return cv2.morphologyEx(np.ascontiguousarray(image), cv2.MORPH_CLOSE, np.ones((size, size), np.uint8),
                                borderType=cv2.BORDER_REFLECT)
    return ndi.grey_closing(image, size=(size, size))


def distance_transform(mask: np.ndarray, boxes: list | None = None) -> np.ndarray:
    """``ndi.distance_transform_edt(mask)`` as float32: the exact Euclidean
    distance of each True pixel to the nearest False one (pixels outside the
    image do not count), on OpenCV's linear-time exact algorithm
    (``DIST_MASK_PRECISE``): scipy's values to float32 rounding (the last
    bit of the square root can differ), 10-20x faster.

    ``boxes``: the bounding boxes (``ndi.find_objects`` slices) of the
    mask's connected components, when the caller has them. Where they cover
    a small part of the image, each box (grown by one pixel) is transformed
    on its own: a pixel's nearest False pixel always lies in its own
    component's box grown by one (the open disc up to it is True and
    4-connected, so inside the component), and a box can only overstate the
    distance of another component's pixels, so the minimum over boxes is
    exact. A sparse mask (nuclei) then takes a fraction of the time.

    >>> distance_transform(np.array([[0, 1, 1, 1]], bool)).tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or min(mask.shape) == 0 or mask.all():  # (no False pixel: scipy's convention)
        return ndi.distance_transform_edt(mask).astype(np.float32)
    if boxes is not None:
        grown = _grown_boxes(boxes, mask.shape)
        if _boxes_pay(grown, mask.size):
            return _distance_in_boxes(mask, grown)
    # OpenCV's square roots round differently on its SIMD path and its scalar
    # one, and which pixels take which follows the output's address (32-byte
    # alignment): into a buffer allocated anywhere, the same mask gave values
    # one bit apart from run to run. A 64-byte-aligned output makes it repeatable.
    rows, cols = mask.shape
    if (cols * 4) % _EDT_ALIAS_BYTES:
        src = np.ascontiguousarray(mask).view(np.uint8)
        out = _aligned_empty(mask.shape, np.float32)
    else:
        # Rows a multiple of 1 KiB long (1024, 1536, 2048 ... pixels wide)
        # alias in the cache on the column pass: about twice the time. Views
        # of row-padded buffers, as _apply gives scipy's filters (each output
        # row still starting 64-byte aligned, so the same bits), avoid it;
        # the copies cost a few per cent of that.
        src = np.empty((rows, cols + _PAD_BYTES), dtype=np.uint8)[:, :cols]
        src[...] = mask
        out = _aligned_empty((rows, cols + _PAD_BYTES // 4), np.float32)[:, :cols]
    out = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=out)
    return np.ascontiguousarray(out)  # (no copy unless padded)


def distance_within(objects: np.ndarray, max_px: float) -> np.ndarray:
    """The exact Euclidean distance (float32) of each pixel to the nearest
    nonzero pixel of the label image ``objects`` where it is at most
    ``max_px``; elsewhere some value above ``max_px`` (``inf`` far from all
    objects). ``distance_transform(objects == 0)`` where only a near zone
    counts (a band around the nuclei): when the objects are few, each one's
    box grown by ``max_px`` is transformed alone -- the nearest object pixel
    of a pixel within ``max_px`` lies in a box that holds it, and a box can
    only overstate distances -- at a fraction of the time.

    >>> (distance_within(np.array([[0, 1, 0, 0, 0]]), 2) <= 2).tolist()
    [[True, True, True, True, False]]
    """
    objects = np.asarray(objects)
    free = objects == 0
    if objects.ndim != 2 or not free.any() or free.all() or not max_px >= 0:
        return distance_transform(free)
    r = int(np.ceil(max_px))
    grown = _grown_boxes(ndi.find_objects(objects.astype(np.int32, copy=False) if objects.dtype == bool
                                          else objects), objects.shape, r + 1)
    return _distance_in_boxes(free, grown) if _boxes_pay(grown, objects.size) else distance_transform(free)


_EDT_ALIAS_BYTES = 1024
_BOX_SHARE = 0.3  # boxes covering less than this share of the image: per box


def _boxes_pay(grown: list[tuple[int, int, int, int]], size: int) -> bool:
    """Whether the boxes cover little enough of the image to transform one by one."""
    return sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in grown) < _BOX_SHARE * size


def _grown_boxes(boxes: list, shape: tuple[int, int], by: int = 1) -> list[tuple[int, int, int, int]]:
    h, w = shape
    return [(max(sl[0].start - by, 0), min(sl[0].stop + by, h), max(sl[1].start - by, 0), min(sl[1].stop + by, w))
            for sl in boxes if sl is not None]


def _distance_in_boxes(mask: np.ndarray, grown: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Minimum over the boxes of each box's own distance transform (``inf``
    where no box reaches a True pixel)."""
    out = np.where(mask, np.float32(np.inf), np.float32(0))
    if not grown:
        return out
    m8 = np.ascontiguousarray(mask).view(np.uint8)
    # one 64-byte-aligned buffer, each box's output a view of its start
    # (repeatable bits: see distance_transform; an allocation per box cost
    # more than many a small box's transform)
    buf = _aligned_empty((max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in grown),), np.float32)
    for y0, y1, x0, x1 in grown:
        sub = m8[y0:y1, x0:x1]
        d = buf[: sub.size].reshape(sub.shape)
        cv2.distanceTransform(sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=d)
        view = out[y0:y1, x0:x1]
        np.minimum(view, d, out=view)
    return out


def _aligned_empty(shape: tuple[int, int], dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an ``align``-byte boundary."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def median(values: np.ndarray):
    """``np.median(values)`` (all elements; the same value and scalar type)
    of a real floating-point array, by one partition at the middle: numpy
    selects the middle pair and the last element (its NaN check) at once,
    about twice the time on the large arrays sabgal takes medians of. With
    NaN, or any other dtype, ``np.median`` itself is used.

    >>> float(median(np.array([3.0, 1.0, 2.0, 10.0], np.float32)))
    2.5
    """
    v = np.asarray(values).ravel()
    if v.size == 0 or v.dtype.kind != "f":
        return np.median(v)
    k = v.size // 2
    part = np.partition(v, k)
    if np.isnan(part[k:]).any():  # (NaN sorts last)
        return np.median(v)
    if v.size % 2:
        return np.mean(part[k:k + 1])
    # the middle pair's mean, as np.median forms it (in the array's dtype)
    return np.mean(np.array([part[:k].max(), part[k]], dtype=v.dtype))


def jpeg_blockiness(image: np.ndarray, block: int = 8) -> float:
    """How strongly ``image`` steps at the edges of ``block``-pixel blocks:
    per axis, the mean absolute difference between neighbouring columns at
    the strongest of the ``block`` phases over its median over the phases;
    the smaller of the two axes. About 1 for an image never JPEG-compressed
    (no phase stands out), 1.3-3.4 for JPEG fields whose 8x8 blocks sit at
    slightly different levels: at a cell's scale such blocks look like
    faint cells.

    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(0, 1, (64, 64)).astype(np.float32)
    >>> blocky = img + np.kron(rng.normal(0, 1, (8, 8)), np.ones((8, 8))).astype(np.float32)
    >>> bool(jpeg_blockiness(img) < 1.1 < jpeg_blockiness(blocky))
    True
    """
    a = np.asarray(image, dtype=np.float32)
    if min(a.shape) < 2 * block + 1:
        return 1.0
    return min(block_step_ratio(a, block), block_step_ratio(a.T, block))


def block_step_ratio(lines: np.ndarray, block: int) -> float:
    """The mean absolute step between neighbouring columns of ``lines`` (2-D,
    the steps averaged over its rows) at the strongest of the ``block``
    column phases over the median over the phases (the measure
    :func:`jpeg_blockiness` takes per axis; any subset of rows reads it)."""
    step = np.abs(np.diff(np.asarray(lines, dtype=np.float32), axis=1)).mean(axis=0)
    if step.size < 2 * block:
        return 1.0
    phase = np.bincount(np.arange(step.size) % block, weights=step, minlength=block)
    phase /= np.bincount(np.arange(step.size) % block, minlength=block)
    med = float(np.median(phase))
    return float(phase.max()) / med if med > 0 else 1.0
