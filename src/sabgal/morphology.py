"""Fast binary morphology on 2-D masks, exactly equal to ``scipy.ndimage``'s.

scipy's ``binary_erosion``/``binary_dilation`` visit every pixel with a
generic structuring element, once per iteration. The few operations sabgal
needs -- a 3x3 square or a 4-neighbour cross, pixels outside the image
counting as background (scipy's default ``border_value=0``) -- are a handful
of whole-array logical operations on shifted slices instead, and filling
holes is a labelling of the background. Each function documents the scipy
call it replaces; ``tests/test_morphology.py`` checks they agree.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["disc", "erode_square", "dilate_square", "open_square", "close_square", "erode_cross", "dilate_cross",
           "open_cross", "fill_holes", "inner_boundaries", "nonzero", "label", "label_boxes"]


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    """A 2-D mask (any nonzero value is foreground) as contiguous 0/1 uint8,
    as OpenCV's connected components take it."""
    return np.ascontiguousarray(mask if mask.dtype == bool else mask != 0).view(np.uint8)


def label(mask: np.ndarray, *, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """``ndi.label(mask)`` of a 2-D mask (4-connected; ``connectivity=8``:
    with a 3x3 structure): the same int32 labels, numbered in raster order
    of each component's first pixel, and their count. 4-connected, on
    OpenCV's connected components: 3x faster (and OpenCV lets the batch's
    other worker threads run meanwhile). 8-connected, OpenCV numbers some
    components in another order: scipy's.

    >>> label(np.array([[1, 0, 1], [1, 0, 0]], bool))[0].tolist()
    [[1, 0, 2], [1, 0, 0]]
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0 or connectivity != 4:
        from scipy import ndimage as ndi

        structure = np.ones((3, 3), bool) if connectivity == 8 and m.ndim == 2 else None
        lab, n = ndi.label(m, structure=structure)
        return lab, int(n)
    n, lab = cv2.connectedComponents(_as_uint8(m), connectivity=connectivity, ltype=cv2.CV_32S)
    return lab, int(n) - 1


def label_boxes(mask: np.ndarray) -> tuple[np.ndarray, int, list[tuple[slice, slice]]]:
    """:func:`label` of a 2-D mask (4-connected) with its components'
    bounding boxes, ``ndi.find_objects(labels)``'s slices, from OpenCV's
    component statistics: no second pass over the image.

    >>> lab, n, boxes = label_boxes(np.array([[1, 0, 0], [0, 0, 1]], bool))
    >>> n, boxes
    (2, [(slice(0, 1, None), slice(0, 1, None)), (slice(1, 2, None), slice(2, 3, None))])
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        from scipy import ndimage as ndi

        lab, n = label(m)
        return lab, n, list(ndi.find_objects(lab))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(_as_uint8(m), connectivity=4, ltype=cv2.CV_32S)
    x0, y0, w, h = (stats[1:, k].tolist() for k in range(4))
    boxes = [(slice(a, a + dy), slice(b, b + dx)) for a, b, dy, dx in zip(y0, x0, h, w)]
    return lab, int(n) - 1, boxes


def nonzero(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero(image)`` of a 2-D array (the same row and column arrays,
    in the same raster order) from its flat indices: numpy's 2-D nonzero
    is 3-7x slower on a 2048 x 2048 mask.

    >>> [a.tolist() for a in nonzero(np.array([[0, 1], [1, 1]]))]
    [[0, 1, 1], [1, 0, 1]]
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"nonzero needs a 2-D array; got shape {image.shape}")
    return np.divmod(np.flatnonzero(image), max(image.shape[1], 1))


def _shift_and(m: np.ndarray, axis: int) -> np.ndarray:
    """AND of each pixel with its two neighbours along ``axis`` (outside = False)."""
    out = np.zeros_like(m)
    if m.shape[axis] < 3:
        return out
    a = np.moveaxis(m, axis, 0)
    o = np.moveaxis(out, axis, 0)
    np.logical_and(a[:-2], a[1:-1], out=o[1:-1])
    o[1:-1] &= a[2:]
    return out


def _shift_or(m: np.ndarray, axis: int) -> np.ndarray:
    """OR of each pixel with its two neighbours along ``axis`` (outside = False)."""
    out = m.copy()
    a = np.moveaxis(m, axis, 0)
    o = np.moveaxis(out, axis, 0)
    o[1:] |= a[:-1]
    o[:-1] |= a[1:]
    return out


def erode_square(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_erosion(mask, np.ones((3, 3)), iterations)``."""
    m = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        m = _shift_and(_shift_and(m, 0), 1)
    return m


def dilate_square(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_dilation(mask, np.ones((3, 3)), iterations)``."""
    m = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        m = _shift_or(_shift_or(m, 0), 1)
    return m


def open_square(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask, structure=np.ones((3, 3)))``."""
    return dilate_square(erode_square(mask))


def close_square(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_closing(mask, structure=np.ones((3, 3)), iterations=iterations)``
    (scipy's erosion step treats the outside as background, so a rim of
    ``iterations`` pixels along the image edge ends up False)."""
    return erode_square(dilate_square(mask, iterations), iterations)


def erode_cross(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_erosion(mask, iterations=iterations)`` (4-neighbour cross)."""
    m = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = m.copy()
        out[1:] &= m[:-1]
        out[:-1] &= m[1:]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        out[0] = out[-1] = False
        out[:, 0] = out[:, -1] = False
        m = out
    return m


def dilate_cross(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_dilation(mask, iterations=iterations)`` (4-neighbour cross)."""
    m = np.asarray(mask, dtype=bool)
    for _ in range(iterations):
        out = m.copy()
        out[1:] |= m[:-1]
        out[:-1] |= m[1:]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        m = out
    return m


def open_cross(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_opening(mask, iterations=1)`` (4-neighbour cross)."""
    return dilate_cross(erode_cross(mask))


def fill_holes(mask: np.ndarray, *, touching: np.ndarray | None = None,
               unless: np.ndarray | None = None) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``: background not 4-connected to the
    image edge becomes foreground (one labelling instead of a flood fill).

    ``touching``: fill only the holes that hold a pixel of this mask (e.g. a
    nucleus); ``unless``: never fill a hole that holds a pixel of this mask
    (e.g. known glass).
    """
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return m.copy()
    # the background's 4-connected components (``ndi.label(~m)``'s, possibly
    # numbered otherwise: only which pixels share a component matters here)
    n, lab = cv2.connectedComponents((~m).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    n -= 1
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 = the mask itself
    if touching is not None:
        outside |= np.bincount(lab[touching], minlength=n + 1) == 0
    if unless is not None:
        outside |= np.bincount(lab[unless], minlength=n + 1) > 0
    holes = ~outside
    if not holes.any():
        return m.copy()
    return m | holes[lab]


def disc(radius: float) -> np.ndarray:
    """A uint8 structuring element: the pixel offsets within ``radius``
    (Euclidean), so a dilation by it marks every pixel within ``radius`` of
    the mask, exactly.

    >>> disc(1.5).tolist()
    [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    """
    r = int(np.floor(max(radius, 0.0)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return ((y * y + x * x) <= radius * radius).astype(np.uint8)


def inner_boundaries(labels: np.ndarray, *, shared_only: bool = False) -> np.ndarray:
    """``skimage.segmentation.find_boundaries(labels, mode="inner")``: labelled
    pixels with a 4-neighbour inside the image that carries another label.

    ``shared_only``: only where that neighbour carries another nonzero label
    (the borders between touching objects, not their edges on background).

    >>> inner_boundaries(np.array([[0, 1, 1, 2]]), shared_only=True).astype(int).tolist()
    [[0, 0, 1, 1]]
    """
    b = np.zeros(labels.shape, dtype=bool)
    for a, c, here, there in ((labels[1:], labels[:-1], np.s_[1:], np.s_[:-1]),
                              (labels[:, 1:], labels[:, :-1], np.s_[:, 1:], np.s_[:, :-1])):
        d = a != c
        if shared_only:
            d &= (a != 0) & (c != 0)
        b[here] |= d
        b[there] |= d
    b &= labels != 0
    return b
