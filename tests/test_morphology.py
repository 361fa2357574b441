"""The fast binary morphology equals scipy.ndimage / scikit-image exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from sabgal import morphology as mo

SQ = np.ones((3, 3), bool)


def _masks():
    rng = np.random.default_rng(0)
    for trial in range(24):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40))) if trial % 3 else (90, 130)
        if trial % 2:
            yield ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > rng.uniform(0.3, 0.7)
        else:
            yield rng.random(shape) < rng.uniform(0.05, 0.95)


@pytest.mark.parametrize("it", [1, 2, 3])
def test_iterated_ops_match_scipy(it):
    for m in _masks():
        assert np.array_equal(mo.erode_square(m, it), ndi.binary_erosion(m, SQ, iterations=it))
        assert np.array_equal(mo.dilate_square(m, it), ndi.binary_dilation(m, SQ, iterations=it))
        assert np.array_equal(mo.close_square(m, it), ndi.binary_closing(m, SQ, iterations=it))
        assert np.array_equal(mo.erode_cross(m, it), ndi.binary_erosion(m, iterations=it))
        assert np.array_equal(mo.dilate_cross(m, it), ndi.binary_dilation(m, iterations=it))


def test_opening_fill_and_boundaries_match():
    rng = np.random.default_rng(1)
    for m in _masks():
        assert np.array_equal(mo.open_square(m), ndi.binary_opening(m, structure=SQ))
        assert np.array_equal(mo.open_cross(m), ndi.binary_opening(m, iterations=1))
        assert np.array_equal(mo.fill_holes(m), ndi.binary_fill_holes(m))
        lab, _ = ndi.label(m)
        many = (rng.integers(0, 5, m.shape) * m).astype(np.uint32)
        for labels in (lab, many):
            assert np.array_equal(mo.inner_boundaries(labels), find_boundaries(labels, mode="inner"))


def test_label_peaks_matches_skimage():
    from skimage.feature import peak_local_max

    from sabgal.segment import label_peaks

    rng = np.random.default_rng(2)
    for trial in range(80):
        shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
        img = ndi.gaussian_filter(rng.random(shape), rng.uniform(0, 3)).astype(np.float32)
        if trial % 4 == 0:
            img = np.round(img * 20) / 20  # plateaus and ties
        if trial % 7 == 0:
            img[:] = 0.5  # flat objects
        m = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > rng.uniform(0.3, 0.7)
        lab, _ = ndi.label(m)
        if trial % 5 == 0:
            lab = rng.integers(0, 4, shape) * m  # labels that touch each other
        md = int(rng.integers(1, 7))
        expected = peak_local_max(img, min_distance=md, labels=lab, exclude_border=False)
        assert np.array_equal(label_peaks(img, lab, md), expected), (trial, shape, md)


def test_local_peaks_match_skimage():
    from skimage.feature import peak_local_max

    from sabgal.segment import local_peaks

    rng = np.random.default_rng(3)
    for trial in range(60):
        shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        img = ndi.gaussian_filter(rng.normal(0, 1, shape), rng.uniform(0, 3)) * rng.uniform(1, 20)
        if trial % 4 == 0:
            img = np.round(img)  # plateaus and ties
        if trial % 7 == 0:
            img[:] = 0.5  # a flat image
        if trial % 3 == 0:
            img = img.astype(np.float32)
        md, thr = int(rng.integers(1, 12)), float(rng.uniform(-1, 3))
        if trial % 5 == 1:
            # float64 values closer than float32 can tell apart: rounding
            # ties them, the exact check must part them again
            img, thr = 1000.0 + img.astype(np.float64) * 1e-6, 1000.0
        expected = peak_local_max(img, min_distance=md, threshold_abs=thr, exclude_border=False)
        assert np.array_equal(local_peaks(img, min_distance=md, threshold=thr), expected), (trial, shape, md)


def test_distance_transform_matches_edt():
    from sabgal.filters import distance_transform

    rng = np.random.default_rng(3)
    for trial in range(60):
        shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
        m = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 4)) > rng.uniform(0.3, 0.8)
        if trial % 10 == 0:
            m[:] = True  # no background at all
        expected = ndi.distance_transform_edt(m).astype(np.float32)
        np.testing.assert_allclose(distance_transform(m), expected, rtol=1e-6, err_msg=str(trial))
    big = ndi.gaussian_filter(rng.random((700, 900)), 5) > 0.5
    np.testing.assert_allclose(distance_transform(big), ndi.distance_transform_edt(big), rtol=1e-6)


def test_distance_transform_by_component_boxes_is_exact():
    from sabgal.filters import distance_transform

    rng = np.random.default_rng(7)
    for trial in range(40):
        shape = (int(rng.integers(2, 160)), int(rng.integers(2, 160)))
        # sparse blobs (some touching the border, some concave), 8- or 4-connected components
        m = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.7, 3)) > rng.uniform(0.6, 0.75)
        structure = np.ones((3, 3)) if trial % 2 else None
        boxes = ndi.find_objects(ndi.label(m, structure=structure)[0])
        expected = ndi.distance_transform_edt(m).astype(np.float32)
        np.testing.assert_allclose(distance_transform(m, boxes), expected, rtol=1e-6, err_msg=str(trial))
    ring = np.zeros((400, 400), bool)  # a concave component: its hole's pixels belong to the box
    yy, xx = np.mgrid[:400, :400]
    ring[((yy - 100) ** 2 + (xx - 100) ** 2 < 60 ** 2) & ((yy - 100) ** 2 + (xx - 100) ** 2 > 40 ** 2)] = True
    ring[95:105, 95:105] = True  # another component inside the hole
    boxes = ndi.find_objects(ndi.label(ring)[0])
    np.testing.assert_allclose(distance_transform(ring, boxes), ndi.distance_transform_edt(ring), rtol=1e-6)


def test_distance_within_is_exact_near_the_objects():
    from sabgal import filters

    rng = np.random.default_rng(8)
    used_boxes = 0
    for trial in range(30):
        shape = (int(rng.integers(2, 300)), int(rng.integers(2, 300)))
        blobs = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.7, 2)) > rng.uniform(0.62, 0.7)
        objects = ndi.label(blobs)[0] if trial % 3 else blobs
        max_px = float(rng.uniform(0, 12))
        exact = ndi.distance_transform_edt(objects == 0).astype(np.float32)
        got = filters.distance_within(objects, max_px)
        near = exact <= max_px
        np.testing.assert_allclose(got[near], exact[near], rtol=1e-6, err_msg=str(trial))
        assert (got[~near] > max_px).all(), trial
        used_boxes += bool(np.isinf(got).any())
    assert used_boxes >= 5  # (the per-box path ran)


def test_distance_transform_gives_the_same_bits_every_time():
    from sabgal.filters import distance_transform

    # (OpenCV's result depended on where its output happened to be allocated)
    m = ndi.gaussian_filter(np.random.default_rng(5).random((512, 680)), 6) > 0.5
    outs = [distance_transform(m) for _ in range(8)]  # (all alive: eight addresses)
    assert all(np.array_equal(o, outs[0]) for o in outs)
    # rows a multiple of 1 KiB go through row-padded buffers: the same values
    wide = ndi.gaussian_filter(np.random.default_rng(6).random((300, 1024)), 6) > 0.5
    got = distance_transform(wide)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_allclose(got, ndi.distance_transform_edt(wide), rtol=1e-6)
    import cv2

    from sabgal.filters import _aligned_empty

    plain = _aligned_empty(wide.shape, np.float32)  # (unpadded, 64-byte aligned: the same bits)
    cv2.distanceTransform(wide.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dst=plain)
    assert np.array_equal(got, plain)


def test_distance_with_indices_matches_scipy():
    from sabgal.segment import distance_with_indices

    rng = np.random.default_rng(4)
    for trial in range(40):
        shape = (int(rng.integers(1, 50)), int(rng.integers(1, 50)))
        m = rng.random(shape) < rng.uniform(0, 1)
        if trial == 0:
            m[:] = True
        d0, (y0, x0) = ndi.distance_transform_edt(m, return_indices=True)
        d1, (y1, x1) = distance_with_indices(m)
        assert d1.dtype == d0.dtype and np.array_equal(d1, d0), trial
        assert np.array_equal(y1, y0) and np.array_equal(x1, x0), trial


def test_median_filter_matches_scipy():
    from sabgal.segment import _median_filter

    rng = np.random.default_rng(5)
    for shape, size in [((40, 57), 9), ((13, 20), 7), ((9, 12), 9), ((5, 9), 3), ((3, 4), 9), ((20, 20), 4)]:
        x = rng.random(shape).astype(np.float32)
        x[::3] = np.round(x[::3], 1)  # ties
        assert np.array_equal(_median_filter(x, size), ndi.median_filter(x, size=size, mode="reflect"))


def test_convex_areas_match_qhull():
    from scipy.spatial import ConvexHull, QhullError

    from sabgal.measure import convex_areas

    def qhull_areas(labels, ids):
        out = []
        edge = np.pad(labels, 1)
        inner = edge[1:-1, 1:-1]
        e = ((inner != edge[:-2, 1:-1]) | (inner != edge[2:, 1:-1]) | (inner != edge[1:-1, :-2])
             | (inner != edge[1:-1, 2:])) & (inner > 0)
        for k in ids:
            pts = np.argwhere(e & (labels == k)).astype(float)
            try:
                h = ConvexHull(pts) if len(pts) >= 3 else None
                out.append(h.volume + h.area / 2 + 1 if h else len(pts))
            except QhullError:  # collinear
                out.append(len(pts))
        return np.array(out)

    rng = np.random.default_rng(6)
    for trial in range(60):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        labels = rng.integers(0, 6, shape) * (rng.random(shape) < rng.uniform(0.05, 1))
        if trial % 3 == 0:  # lines, dots and diagonals (collinear pixels)
            labels = np.zeros(shape, int)
            for k in range(1, 6):
                y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
                n, d = rng.integers(1, 9), rng.integers(0, 3)
                for q in range(n):
                    yy, xx = y + q * (d != 1), x + q * (d != 0)
                    if yy < shape[0] and xx < shape[1]:
                        labels[yy, xx] = k
        ids = np.flatnonzero(np.bincount(labels.ravel())[1:]) + 1
        if ids.size:
            np.testing.assert_allclose(convex_areas(labels, ids), qhull_areas(labels, ids), rtol=1e-9)


def test_label_matches_scipy():
    rng = np.random.default_rng(8)
    for trial in range(80):
        shape = (int(rng.integers(1, 150)), int(rng.integers(1, 150)))
        m = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.3, 4)) > rng.uniform(0.3, 0.7)
        for conn, structure in ((4, None), (8, np.ones((3, 3), bool))):
            ref, n_ref = ndi.label(m, structure=structure)
            ours, n = mo.label(m, connectivity=conn)
            assert np.array_equal(ours, ref) and n == n_ref and ours.dtype == ref.dtype, (trial, conn)
        ours, n, boxes = mo.label_boxes(m)
        assert np.array_equal(ours, ndi.label(m)[0]) and boxes == ndi.find_objects(ours), trial
    ints = rng.integers(0, 3, (40, 60))  # any nonzero value is foreground
    assert np.array_equal(mo.label(ints)[0], ndi.label(ints)[0])


def test_nonzero_matches_numpy():
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (0, 4), (3, 0), (40, 70), (257, 129)]:
        for density in (0.0, 0.05, 0.7):
            m = rng.random(shape) < density
            ours, ref = mo.nonzero(m), np.nonzero(m)
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(ours, ref))
    labels = rng.integers(0, 4, (30, 20))
    assert all(np.array_equal(a, b) for a, b in zip(mo.nonzero(labels), np.nonzero(labels)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_laplace_ladder_matches_the_direct_filter(dtype):
    from sabgal import filters

    rng = np.random.default_rng(11)
    for shape in [(200, 301), (97, 64), (64, 400)]:
        img = ndi.gaussian_filter(rng.random(shape), 2).astype(dtype) * 3
        sigmas = [0.8, 1.5, 2.6, 4.0, 7.0, 7.6]  # both sides of the Fourier threshold
        sigmas = [s for s in sigmas if 2 * int(4 * s + 0.5) < min(shape)]
        got = list(filters.gaussian_laplace_ladder(img, sigmas))
        assert len(got) == len(sigmas)
        for out, s in zip(got, sigmas):
            assert out.shape == img.shape and out.dtype == img.dtype
            ref = ndi.gaussian_laplace(img.astype(np.float64), s)  # scipy's reflect border
            tol = 1e-5 if dtype == np.float32 else 1e-10  # (float32 rounding; float64: the FFT's ~1e-13)
            np.testing.assert_allclose(out, ref, atol=tol * np.abs(ref).max())
    # too small for the largest kernel: every rung falls back to the direct filter
    tiny = rng.random((20, 20)).astype(dtype)
    for out, s in zip(filters.gaussian_laplace_ladder(tiny, [1.0, 3.0]), [1.0, 3.0]):
        np.testing.assert_allclose(out, ndi.gaussian_laplace(tiny.astype(np.float64), s), atol=1e-5)


def test_padded_filters_match_scipy():
    from sabgal import filters

    rng = np.random.default_rng(7)
    for shape in [(128, 1024), (70, 2048), (100, 512), (90, 130)]:
        for dtype in (np.float32, np.float64):
            x = rng.random(shape).astype(dtype)
            out = filters.gaussian_filter(x, 1.7)
            assert out.dtype == dtype and out.flags.c_contiguous
            np.testing.assert_allclose(out, ndi.gaussian_filter(x, 1.7), atol=1e-6)  # OpenCV path
            exact = filters.gaussian_filter(x, 1.7, mode="reflect")  # scipy path, padded rows
            assert np.array_equal(exact, ndi.gaussian_filter(x, 1.7))
            np.testing.assert_allclose(filters.gaussian_laplace(x, 1.5), ndi.gaussian_laplace(x, 1.5),
                                       atol=1e-6)  # OpenCV path
            assert np.array_equal(filters.gaussian_laplace(x, 1.5, mode="reflect"), ndi.gaussian_laplace(x, 1.5))
            assert np.array_equal(filters.laplace(x[::2, ::2]), ndi.laplace(x[::2, ::2]))


@pytest.mark.parametrize("shape", [(40, 50), (1024, 1360), (300, 17)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_filter_matches_scipy(shape, dtype):
    from sabgal import filters

    img = np.random.default_rng(0).random(shape).astype(dtype)
    for sigma in (0.7, 1.0, 2.5, 6.0):
        out = filters.gaussian_filter(img, sigma)
        assert out.dtype == img.dtype
        np.testing.assert_allclose(out, ndi.gaussian_filter(img, sigma), atol=1e-5)


def test_grey_closing_matches_scipy():
    from sabgal import filters

    img = np.random.default_rng(3).random((120, 90)).astype(np.float32)
    for size in (3, 9, 15):
        assert np.array_equal(filters.grey_closing(img, size), ndi.grey_closing(img, size=(size, size)))
