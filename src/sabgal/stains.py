"""Optical density and colour deconvolution.

Beer–Lambert: a stain of concentration ``c`` and unit OD vector ``v`` (R, G, B)
attenuates light by ``10**(-c v)``; stains add in OD space. With the lamp
``I0`` known, ``OD = -log10(I / I0)`` and the stain concentrations are the
least-squares solution of ``OD = C @ M`` for the stain matrix ``M``
(Ruifrok & Johnston 2001). sabgal unmixes three channels:

* X-gal (the blue indigo of SA-β-gal),
* the nuclear counterstain when there is one (else a third vector orthogonal
  to the other two, which soaks up colour the model cannot explain),
* a neutral grey channel, so dark debris, refractive cell rims and defocus
  (which absorb all colours about equally) do not read as blue.

Published vectors are module constants; per-image refinement estimates the
X-gal and counterstain directions from the image's own strongly stained
pixels (in the spirit of Macenko et al. 2009), accepted only within a set
angle of the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sabgal import filters
from sabgal import morphology as morph
from sabgal.illumination import block_reduce_mean
from sabgal.measure import convex_areas

__all__ = [
    "XGAL",
    "NUCLEAR_FAST_RED",
    "EOSIN",
    "NEUTRAL_RED",
    "HEMATOXYLIN",
    "GREY",
    "COUNTERSTAINS",
    "normalize",
    "angle_deg",
    "rgb_to_od",
    "stain_matrix",
    "unmix",
    "StainModel",
    "detect_counterstain",
    "detect_hematoxylin",
    "refine_vector",
    "estimate_stain_vector",
]


def normalize(v) -> np.ndarray:
    """Unit vector (float64).

    >>> normalize([3, 4, 0]).tolist()
    [0.6, 0.8, 0.0]
    """
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# X-gal product 5,5'-dibromo-4,4'-dichloro-indigo: absorbs red/orange most.
# Reference OD direction measured on SA-β-gal stained cultures (R, G, B).
XGAL = normalize([0.722, 0.557, 0.411])
# Nuclear fast red (Kernechtrot), a red nuclear counterstain: absorbs green most.
NUCLEAR_FAST_RED = normalize([0.214, 0.851, 0.478])
# Eosin Y (Ruifrok & Johnston 2001, as in scikit-image's rgb_from_hed).
EOSIN = normalize([0.07, 0.99, 0.11])
# Neutral red, a red lysosomal/nuclear counterstain: close to nuclear fast red, bluer.
NEUTRAL_RED = normalize([0.190, 0.780, 0.597])
# Hematoxylin (Ruifrok & Johnston 2001): ~12° from X-gal, unmixing is ill-conditioned.
HEMATOXYLIN = normalize([0.650, 0.704, 0.286])
# Neutral density: absorbs all channels equally (debris, rims, defocus).
GREY = normalize([1.0, 1.0, 1.0])

COUNTERSTAINS = {
    "nuclear_fast_red": NUCLEAR_FAST_RED,
    "eosin": EOSIN,
    "neutral_red": NEUTRAL_RED,
    "hematoxylin": HEMATOXYLIN,
}


def angle_deg(a, b) -> float:
    """Angle between two vectors in degrees.

    >>> round(angle_deg([1, 0, 0], [0, 1, 0]), 1)
    90.0
    """
    c = float(np.clip(np.dot(normalize(a), normalize(b)), -1.0, 1.0))
    return float(np.degrees(np.arccos(c)))


# JPEG keeps brightness (luma) per pixel but colour (chroma) only per 2x2
# pixels in most files (4:2:0), each chroma plane then cut into 8x8-sample
# DCT blocks -- 16x16 pixels -- and quantised coarsely: at a stained cell's
# edge the blue bleeds over the rest of its block and rings past it, and
# colour deconvolution turns that colour error at the brightness of glass
# into X-gal on one side and an equal and opposite grey density on the other
# (blocky "nuclei" beside stained cells). A JPEG's colour is detected by its
# chroma stepping at those block edges; its chroma can then be re-estimated
# from the luma (smooth_chroma: a guided filter over one block's width), which
# removes the block pattern while the luma -- where nuclei and cell outlines
# are seen -- keeps every pixel.
CHROMA_BLOCK_PX = 16
CHROMA_MIN_BLOCKINESS = 1.5  # (never-compressed images read 1.00-1.01; JPEG fields 2-30)
CHROMA_SMOOTH_PX = 8  # (window radius: one block across)
CHROMA_GUIDE_CONTRAST = 0.01

# ITU-R BT.601 luma weights, as JPEG uses them
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def chroma_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The blue and red colour differences (B - Y, R - Y; Y the BT.601 luma)
    of an RGB image, as float32 in its own scale."""
    a = np.asarray(rgb, dtype=np.float32)
    y = a[..., :3] @ _LUMA
    return a[..., 2] - y, a[..., 0] - y


def chroma_blockiness(rgb: np.ndarray, block: int = CHROMA_BLOCK_PX, *, every: int = 4) -> float:
    """How strongly the image's colour steps at the edges of ``block``-pixel
    blocks (:func:`filters.jpeg_blockiness` of the blue and red colour
    differences, the larger; the steps read along every ``every``-th row
    and column): about 1 for an image never JPEG-compressed, well over 1.5
    for one whose colour was."""
    a = np.asarray(rgb)
    if min(a.shape[:2]) < 2 * block + 1:
        return 1.0
    along_rows = chroma_planes(a[::every])  # (column steps)
    along_cols = chroma_planes(a[:, ::every])  # (row steps)
    return max(min(filters.block_step_ratio(r, block), filters.block_step_ratio(c.T, block))
               for r, c in zip(along_rows, along_cols))


def smooth_chroma(rgb: np.ndarray, radius_px: int, *, contrast: float = CHROMA_GUIDE_CONTRAST) -> np.ndarray:
    """``rgb`` (float32) with its colour differences from the luma re-estimated
    from the luma itself: a guided filter (He, Sun & Tang 2013) over
    (2 ``radius_px`` + 1)-pixel windows models each colour difference as a
    linear function of the luma within a window, so colour follows the edges
    the luma shows (a stained cell's blue stops at its edge) while what the
    luma does not show -- the block pattern and ringing of a JPEG's coarse
    colour -- is averaged away. ``contrast``: luma variations below this
    share of the field's mean luma count as flat (the regulariser). The luma
    is unchanged (each pixel's 0.299 R + 0.587 G + 0.114 B stays what it was).

    >>> img = np.ones((40, 40, 3), np.float32); img[:, 20:] = [0.4, 0.6, 0.9]
    >>> out = smooth_chroma(img, 4)
    >>> bool(np.allclose(out @ _LUMA, img @ _LUMA, atol=1e-5))
    True
    """
    a = np.ascontiguousarray(rgb, dtype=np.float32)
    y = a @ _LUMA
    eps = np.float32((contrast * float(y.mean())) ** 2)
    mean_y = filters.box_mean(y, radius_px)
    var_y = filters.box_mean(y * y, radius_px) - mean_y * mean_y
    out = []
    for c in chroma_planes(a):
        mean_c = filters.box_mean(c, radius_px)
        slope = (filters.box_mean(y * c, radius_px) - mean_y * mean_c) / (var_y + eps)
        offset = mean_c - slope * mean_y
        out.append(filters.box_mean(slope, radius_px) * y + filters.box_mean(offset, radius_px))
    cb, cr = out
    # G from the luma and the two differences: Y = 0.299 R + 0.587 G + 0.114 B
    g = y - (_LUMA[0] * cr + _LUMA[2] * cb) / _LUMA[1]
    return np.stack([y + cr, g, y + cb], axis=-1)


def rgb_to_od(rgb: np.ndarray, lamp: np.ndarray, *, floor: float = 1e-3) -> np.ndarray:
    """Beer–Lambert optical density ``-log10(I / I0)`` per channel.

    Parameters
    ----------
    rgb : (M, N, 3) float ndarray
        Intensities.
    lamp : (M, N, 3) or (3,) float ndarray
        Incident intensity ``I0`` in the same scale.
    floor : float
        Transmittance floor, so black pixels give a finite OD (3 by default).

    Returns
    -------
    od : (M, N, 3) float32 ndarray
        Optical density; ~0 on background, may be slightly negative with noise.

    >>> [round(float(v), 3) + 0.0 for v in rgb_to_od(np.array([[[0.1, 1.0, 0.5]]]), np.ones(3)).ravel()]
    [1.0, 0.0, 0.301]
    """
    t = np.asarray(rgb, dtype=np.float32) / np.asarray(lamp, dtype=np.float32)
    np.maximum(t, np.float32(floor), out=t)
    # natural log, scaled: numpy vectorises float32 log (not log10), ~3x faster
    od = np.log(t, out=t)
    od *= np.float32(-1.0 / np.log(10.0))
    return od


def stain_matrix(*vectors) -> np.ndarray:
    """Stack unit stain vectors into a (k, 3) matrix; with two vectors a third,
    orthogonal one (their cross product) completes the basis.

    >>> stain_matrix([1, 0, 0], [0, 1, 0]).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    vs = [normalize(v) for v in vectors]
    if len(vs) == 2:
        vs.append(normalize(np.cross(vs[0], vs[1])))
    m = np.stack(vs)
    if np.linalg.matrix_rank(m) < m.shape[0]:
        raise ValueError("stain vectors are linearly dependent; cannot unmix")
    return m


def unmix(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Stain concentrations from OD by least squares: solve ``od = c @ matrix``.

    Parameters
    ----------
    od : (..., 3) ndarray
    matrix : (k, 3) ndarray of unit stain vectors.

    Returns
    -------
    (..., k) float32 ndarray of concentrations (OD units along each vector).

    >>> m = stain_matrix([1, 1, 0], [0, 1, 1], [1, 0, 1])
    >>> od = 0.5 * m[0] + 0.2 * m[2]
    >>> [round(float(v), 6) + 0.0 for v in unmix(od, m)]
    [0.5, 0.0, 0.2]
    """
    inv = np.linalg.pinv(np.asarray(matrix, dtype=np.float64)).astype(np.float32)  # (3, k)
    return np.asarray(od, dtype=np.float32) @ inv


@dataclass(frozen=True)
class StainModel:
    """The stain vectors used for one image.

    names: channel names in unmixing order, e.g. ("xgal", "counterstain", "grey").
    matrix: (3, 3) unit vectors, rows in the order of ``names``.
    counterstain: the counterstain's name or "none".
    xgal_angle_deg: angle between the X-gal vector used and the reference.
    condition: condition number of the matrix (large = ill-conditioned).
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    counterstain: str
    xgal_angle_deg: float
    counterstain_angle_deg: float
    condition: float

    @classmethod
    def build(cls, xgal, counterstain_name: str, counterstain_vec=None, *, xgal_ref=XGAL,
              counterstain_ref=None, min_grey_angle_deg: float = 0.0, neutral=GREY) -> "StainModel":
        """Stain model for X-gal (+ counterstain) (+ neutral grey).

        The grey channel is left out when X-gal lies within
        ``min_grey_angle_deg`` of neutral, or neutral lies within half that
        angle of the plane of X-gal and the counterstain: separating them would
        amplify noise (and JPEG colour blocks) many-fold, a worse error than
        letting the faint neutral density of cells read as a little X-gal.
        ``neutral``: the colour of the grey channel (pure grey, or the
        unstained cells' own colour from :func:`estimate_neutral_vector`).
        """
        xgal = normalize(xgal)
        grey = normalize(neutral)
        use_grey = angle_deg(xgal, grey) >= min_grey_angle_deg
        if use_grey and counterstain_vec is not None and counterstain_name != "none":
            # complementary colours (teal X-gal + a red counterstain) mix to
            # grey: then grey lies in their plane and cannot be told apart
            normal = normalize(np.cross(xgal, normalize(counterstain_vec)))
            off_plane = 90.0 - angle_deg(normal, grey) if normal @ grey >= 0 else angle_deg(normal, grey) - 90.0
            use_grey = off_plane >= min_grey_angle_deg / 2
        if counterstain_name == "none" or counterstain_vec is None:
            if use_grey:
                matrix, names = stain_matrix(xgal, grey), ("xgal", "grey", "residual")
            else:
                u = normalize(np.cross(xgal, GREY))
                matrix, names = stain_matrix(xgal, u), ("xgal", "residual", "residual2")
            cs_angle = float("nan")
            counterstain_name = "none"
        else:
            if use_grey:
                matrix, names = stain_matrix(xgal, counterstain_vec, grey), ("xgal", "counterstain", "grey")
            else:
                matrix, names = stain_matrix(xgal, counterstain_vec), ("xgal", "counterstain", "residual")
            ref = counterstain_vec if counterstain_ref is None else counterstain_ref
            cs_angle = angle_deg(counterstain_vec, ref)
        return cls(names, matrix, counterstain_name, angle_deg(xgal, xgal_ref), cs_angle,
                   float(np.linalg.cond(matrix)))

    def channel(self, name: str) -> int:
        return self.names.index(name)

    @property
    def has_grey(self) -> bool:
        return "grey" in self.names

    def neutral_density(self, od: np.ndarray, conc: np.ndarray) -> np.ndarray:
        """The cells' own neutral (grey) OD: the grey channel when unmixed,
        else what the stains leave of the total OD, spread evenly over R, G, B."""
        if self.has_grey:
            return np.ascontiguousarray(conc[..., self.channel("grey")])
        rest = (od[..., 0] + od[..., 1]) + od[..., 2] - conc[..., 0] * np.float32(self.matrix[0].sum())
        if self.counterstain != "none":
            rest = rest - conc[..., 1] * np.float32(self.matrix[1].sum())
        return (rest / np.float32(np.sqrt(3))).astype(np.float32)


def _row_norms(v: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(v, axis=1)`` of (n, 3) rows, the same values without a
    slow reduction over the short last axis."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    return np.sqrt((x * x + y * y) + z * z)


def _directions(od: np.ndarray, min_od: float, max_pixels: int = 200_000, seed_step: int = 1):
    """Unit OD directions of pixels whose summed OD exceeds ``min_od`` (subsampled)."""
    flat = od.reshape(-1, 3)
    if flat.shape[0] > max_pixels * 4:
        step = int(np.ceil(flat.shape[0] / (max_pixels * 4)))
        flat = flat[::step]
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    sel = flat[((r + g) + b > min_od) & (r > -0.05) & (g > -0.05) & (b > -0.05)]
    if sel.shape[0] == 0:
        return sel, sel[:, 0] if sel.size else np.zeros(0)
    norms = _row_norms(sel)
    return sel / norms[:, None], norms


def detect_counterstain(od: np.ndarray, *, candidates=("nuclear_fast_red", "eosin", "neutral_red"),
                        max_angle_deg: float = 15.0, min_fraction: float = 0.002) -> tuple[str, np.ndarray | None, float]:
    """Decide whether a red nuclear counterstain is present, and which.

    Pixels with clear absorbance (summed OD > 0.15) whose colour lies within
    ``max_angle_deg`` of a candidate counterstain, and closer to it than to
    X-gal or grey, are counted. If they make up at least ``min_fraction`` of
    the field the counterstain is present; its vector is their robust mean
    direction.

    Returns
    -------
    name : str ("none" when absent)
    vector : (3,) unit vector or None
    fraction : share of the field with counterstain colour
    """
    dirs, norms = _directions(od, 0.15)
    n_total = od.shape[0] * od.shape[1] / max(1, int(np.ceil(od.shape[0] * od.shape[1] / 800_000)))
    if dirs.shape[0] < 50:
        return "none", None, 0.0
    refs = {name: COUNTERSTAINS[name] for name in candidates}
    cos_x = dirs @ XGAL
    cos_g = dirs @ GREY
    cos_lim = np.cos(np.radians(max_angle_deg))
    red_like = np.zeros(dirs.shape[0], dtype=bool)
    for name, ref in refs.items():
        c = dirs @ ref
        red_like |= (c > cos_lim) & (c > cos_x) & (c > cos_g)
    count = int(red_like.sum())
    fraction = count / max(n_total, 1)
    if fraction < min_fraction:
        return "none", None, fraction
    # Mean direction of the strongest red pixels, weighted by OD.
    w = norms[red_like]
    top = w >= np.percentile(w, 50)
    vec = normalize((dirs[red_like][top] * w[top, None]).sum(axis=0))
    best_name = min(refs, key=lambda name: angle_deg(vec, refs[name]))
    return best_name, vec, fraction


# Hematoxylin detection (see detect_hematoxylin): a pixel is hematoxylin-like
# when its colour (smoothed at 1.5 px) is at least this far from grey (OD,
# in the plane perpendicular to grey) and within this hue angle of the
# published hematoxylin.
HEMATOXYLIN_MIN_CHROMA = 0.03
HEMATOXYLIN_MAX_HUE_DEG = 15.0
# ... and a blob counts as a stained nucleus only where its colour peaks at
# least this far from grey. Hematoxylin lies ~19 degrees from grey, so even
# a light counterstain (nuclear OD ~0.2) peaks at ~0.06 and rendered
# hematoxylin nuclei peak at 0.09-0.22; faint X-gal patches whose hue falls
# inside the cone only tip over the pixel threshold (peaks 0.03-0.05: a
# pink-lamp sRGB field, decoded, showed 56 such "solid nuclei" and was
# analysed as hematoxylin-counterstained, 39 pp off).
HEMATOXYLIN_MIN_PEAK_CHROMA = 0.06


def _chroma_basis(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of the plane perpendicular to grey, the first axis
    along the hue of ``ref``."""
    u = normalize(ref - (ref @ GREY) * GREY)
    return u, np.cross(GREY, u)


def detect_hematoxylin(od: np.ndarray, *, min_chroma: float = HEMATOXYLIN_MIN_CHROMA,
                       max_hue_deg: float = HEMATOXYLIN_MAX_HUE_DEG,
                       min_peak_chroma: float = HEMATOXYLIN_MIN_PEAK_CHROMA, min_area_px: int = 30,
                       min_solidity: float = 0.9, min_blobs: int = 20,
                       min_solid_fraction: float = 0.6) -> tuple[bool, int, float]:
    """Decide whether nuclei are stained with hematoxylin.

    Hematoxylin's colour is too close to X-gal's (~12 degrees; a navy X-gal
    can be closer still) for colour alone to tell them apart. What does is
    where the colour sits: hematoxylin fills every nucleus, so its pixels
    form many compact, solid blobs, one per cell, stained or not. X-gal
    fills the cytoplasm of some cells around a paler nucleus, in granular,
    irregular patches. Pixels whose smoothed colour is hematoxylin-like
    (chroma above ``min_chroma`` OD, hue within ``max_hue_deg`` of the
    published vector) are grouped into 8-connected blobs; blobs of at least
    ``min_area_px`` px with solidity (area / convex-hull area) at least
    ``min_solidity`` whose chroma peaks at ``min_peak_chroma`` or more are
    nucleus-like (a stained nucleus is coloured through; a faint patch of
    X-gal barely over ``min_chroma`` is not). Hematoxylin is present when there
    are at least ``min_blobs`` of them and they are at least
    ``min_solid_fraction`` of all blobs that large (counted, not by area:
    a few large patches of navy X-gal must not hide hundreds of nuclei).
    A sparse field whose X-gal is as navy as hematoxylin and fills most
    cells merges their nuclei into irregular patches and is not detected
    (it is analysed as plain brightfield).

    Returns
    -------
    found : bool
    n_blobs : number of nucleus-like blobs
    solid_fraction : their share of the blobs of at least ``min_area_px``
    """
    u, w = (v.astype(np.float32) for v in _chroma_basis(HEMATOXYLIN))
    tan_max = np.float32(np.tan(np.radians(max_hue_deg)))
    # (a quick look at every 7th pixel first: fields without a stained
    # nucleus in every cell have few such pixels, under 0.2 % of the field)
    sub = od.reshape(-1, 3)[::7]
    p, q = sub @ u, sub @ w
    like = (p > min_chroma) & (np.abs(q) < tan_max * p)
    if np.count_nonzero(like) < max(min_blobs * min_area_px / 7, 2e-3 * like.size):
        return False, 0, 0.0
    p = filters.gaussian_filter((od @ u).astype(np.float32), 1.5)
    q = filters.gaussian_filter((od @ w).astype(np.float32), 1.5)
    # (within the hue cone the chroma is p to 1.04 p: p alone is the test)
    like = (p > min_chroma) & (np.abs(q) < tan_max * p)
    lab, n = morph.label(like, connectivity=8)
    if n == 0:
        return False, 0, 0.0
    area = np.bincount(lab.ravel(), minlength=n + 1)
    ids = np.flatnonzero(area >= min_area_px)
    ids = ids[ids > 0]
    if ids.size == 0:
        return False, 0, 0.0
    solidity = area[ids] / np.maximum(convex_areas(lab, ids), 1)
    peak = np.asarray(ndi.maximum(p, lab, ids))
    solid = (solidity >= min_solidity) & (peak >= min_peak_chroma)
    n_blobs = int(np.count_nonzero(solid))
    fraction = n_blobs / ids.size
    return n_blobs >= min_blobs and fraction >= min_solid_fraction, n_blobs, fraction


def refine_vector(od: np.ndarray, concentration: np.ndarray, reference, *, max_angle_deg: float,
                  top_fraction: float = 0.003, min_pixels: int = 200) -> tuple[np.ndarray, bool]:
    """Refine a stain's direction from the pixels where it is most concentrated.

    The OD directions of the ``top_fraction`` pixels with the highest
    concentration of the stain (from a first unmixing with the reference),
    among pixels with clear absorbance, are averaged, weighted by OD. The
    estimate is accepted only if it lies within ``max_angle_deg`` of
    ``reference`` and enough pixels carry the stain.

    Returns
    -------
    vector : (3,) unit vector (the reference when not accepted)
    accepted : bool
    """
    ref = normalize(reference)
    flat_c = concentration.reshape(-1)
    flat_od = od.reshape(-1, 3)
    step = max(1, flat_c.size // 1_000_000)
    c = flat_c[::step]
    o = flat_od[::step]
    k = max(min_pixels, int(c.size * top_fraction))
    if c.size <= k:
        return ref, False
    idx = np.argpartition(c, c.size - k)[c.size - k:]
    sel = o[idx]
    norms = _row_norms(sel)
    good = (norms > 0.08) & (c[idx] > 0.04)
    if good.sum() < min_pixels:
        return ref, False
    vec = normalize((sel[good]).sum(axis=0))
    if np.any(vec < 0) or angle_deg(vec, ref) > max_angle_deg:
        return ref, False
    return vec, True


# Coloured pixels a stain-vector estimate looks at, at most.
MAX_STAIN_PIXELS = 250_000


# estimate_stain_vector: pixels at the stain's hue at least as strongly
# coloured as the top 1 % at the opposite hue must outnumber those this many
# times (noise alone: about once).
STAIN_HUE_EXCESS = 3.0

# An X-gal estimate too close to grey to unmix a grey channel is kept
# (pipeline.prepare_image) only where the pixels it rests on (coloured,
# within 20 degrees of its hue) cover at least this share of the field. A
# negative control's faint haze over dense nuclei can pass the hue test on a
# few hundred pixels and, mixed with the nuclei's grey density, read far
# closer to grey than any X-gal (4 degrees): the cells' density then all
# reads as X-gal and their nuclei vanish. Fields with stained cells had
# 0.56 % or more, negative fields 0.11 % or less (development sets); where
# the estimate leaves a grey channel, a few hundred pixels (crystals, haze)
# gave the true colour to a degree, and are trusted.
NO_GREY_MIN_STAIN_SHARE = 0.0025


def estimate_stain_vector(od: np.ndarray, reference, *, avoid=(), max_angle_deg: float = 25.0,
                          min_od: float = 0.1, min_pixels: int = 150, min_share: float = 0.0,
                          debug: bool = False) -> tuple[np.ndarray, bool]:
    """Estimate a stain's colour in this image from its own stained pixels
    (X-gal from the blue ones, the counterstain from the nuclei).

    Works in the plane perpendicular to the neutral (grey) axis: a pixel's
    colour there has an *azimuth* (hue) and a *polar angle* from grey
    (saturation). Mixtures of X-gal with grey cell density lie on the arc
    from grey towards pure X-gal, so the X-gal hue is the OD-weighted median
    hue of the clearly coloured pixels near the reference hue, and its
    saturation is the high end (95th percentile) of their polar angles:
    the most strongly stained granules are nearly pure X-gal. Pixels closer
    to a colour in ``avoid`` (the counterstain) than to the reference are
    left out. The estimate is accepted within ``max_angle_deg`` of the
    reference, and only where the stain is there at all: noise and the
    cells' own faint tint scatter hues round grey evenly, so the pixels at
    the reference hue at least as coloured as the top 1 % at the opposite
    hue must outnumber those ``STAIN_HUE_EXCESS`` times (a field with no
    X-gal, such as a negative control, keeps the reference). So does one
    whose pixels near the estimated hue cover under ``min_share`` of the
    field (a stain too scarce to say what pure stain looks like).

    Returns
    -------
    vector : (3,) unit vector (the reference when not accepted)
    accepted : bool
    """
    ref = normalize(reference)
    flat = od.reshape(-1, 3)
    step = max(1, flat.shape[0] // 1_500_000)
    flat = flat[::step]
    norms = _row_norms(flat)
    sel = np.flatnonzero(norms > min_od)
    if sel.size < min_pixels:
        return ref, False
    # a regular subsample of the coloured pixels is as good as all of them
    # (medians and percentiles of hundreds of thousands), and sparse staining
    # keeps every pixel it has
    stride = -(-sel.size // MAX_STAIN_PIXELS)
    sel = sel[::stride]
    d = flat[sel] / norms[sel, None]
    w = norms[sel]
    # orthonormal basis of the plane perpendicular to grey, e1 along the reference hue
    e1, e2 = _chroma_basis(ref)
    polar = np.degrees(np.arccos(np.clip(d @ GREY, -1, 1)))
    az = np.degrees(np.arctan2(d @ e2, d @ e1))
    keep = (np.abs(az) < 75) & (polar > 3)
    opposite = (np.abs(az) > 180 - 75) & (polar > 3)
    for other in avoid:
        o = normalize(other)
        keep &= (d @ ref) > (d @ o)
        opposite &= (d @ ref) > (d @ o)
    if keep.sum() < min_pixels:
        return ref, False
    # Noise scatters the hues of near-grey pixels evenly round grey; a stain
    # gathers its pixels at its own hue. Where no more pixels near the
    # reference hue than STAIN_HUE_EXCESS times those at the opposite hue are
    # as strongly coloured as the top 1 % of the opposite ones (chroma: OD
    # off the grey axis), the "stain" is noise and the cells' own faint tint
    # -- a field without it, such as a negative control.
    chroma_all = w * np.sin(np.radians(polar))
    if np.count_nonzero(opposite) >= 100:
        level = np.percentile(chroma_all[opposite], 99)
        n_opp = np.count_nonzero(chroma_all[opposite] > level)
        if np.count_nonzero(chroma_all[keep] > level) < max(min_pixels, STAIN_HUE_EXCESS * n_opp):
            return ref, False
    az_k, pol_k = az[keep], polar[keep]
    chroma = chroma_all[keep]
    strong = chroma >= np.percentile(chroma, 50)
    # Hue: the OD-weighted median hue of the strongly coloured pixels. When a
    # colour to avoid is present, pixels mixing both stains lie between the
    # two hues, so the stain's own hue is the far edge of the distribution.
    q = 0.5
    if len(avoid):
        o = normalize(avoid[0])
        side = np.sign(o @ e2 - 0.0) if abs(o @ e2) > 1e-9 else 1.0
        q = 0.1 if side > 0 else 0.9
    a_s, w_s = az_k[strong], chroma[strong]
    order = np.argsort(a_s)
    cw = np.cumsum(w_s[order])
    hue = float(a_s[order][min(np.searchsorted(cw, cw[-1] * q), a_s.size - 1)])
    near = np.abs(az_k - hue) < 20
    if near.sum() < min_pixels or near.sum() * stride * step < min_share * od.shape[0] * od.shape[1]:
        return ref, False
    sat = float(np.percentile(pol_k[near], 95))
    if debug:
        print("hue", hue, "sat", sat, "n", int(keep.sum()), int(near.sum()), "ref polar",
              float(np.degrees(np.arccos(ref @ GREY))))
    hue_r, sat_r = np.radians(hue), np.radians(sat)
    vec = normalize(np.cos(sat_r) * GREY + np.sin(sat_r) * (np.cos(hue_r) * e1 + np.sin(hue_r) * e2))
    if np.any(vec < 0) or angle_deg(vec, ref) > max_angle_deg:
        return ref, False
    return vec, True


# Where X-gal lies within stains.min_grey_angle_deg of neutral and the cells'
# own colour gives no grey channel either, pure grey is still unmixed down to
# this angle from X-gal (brightfield without a counterstain: the pipeline's
# prepare_image). Dropping the grey channel sends the cells' own density to
# X-gal: their nuclei vanish from the nuclear map and unstained cells read
# as faintly positive (development fields with a navy X-gal 5-8 degrees from
# grey: 14-17 pp fraction errors, 0.4-0.5 pp with the grey channel).
GREY_MIN_ANGLE_DEG = 3.0


# The unstained cells' own colour (estimate_neutral_vector): OD is read on
# blocks this many pixels square (noise down ~4x), from blocks whose OD norm
# is at least NEUTRAL_MIN_OD (faint cytoplasm, not glass) and below the
# NEUTRAL_MAX_QUANTILE of such blocks (debris, dense stain).
NEUTRAL_BLOCK_PX = 4
NEUTRAL_MIN_OD = 0.012
NEUTRAL_MAX_QUANTILE = 0.9
# ... and accepted only within this angle of pure grey.
NEUTRAL_MAX_ANGLE_DEG = 12.0


def estimate_neutral_vector(od: np.ndarray, xgal, *, avoid=(), min_blocks: int = 200) -> tuple[np.ndarray, bool]:
    """The colour of the cells' own (unstained) density in this image.

    Unstained cytoplasm and nuclei absorb and scatter a little light with
    no strong hue, but not exactly neutral grey: scattering takes a little
    more blue, a lamp's spectrum or a mounting medium tints it. When X-gal
    is nearly grey (a grey-navy stain) the difference matters: X-gal and
    "grey" are then too close to unmix, while X-gal and the cells' actual
    colour may lie on opposite sides of grey and far enough apart.

    Faint absorbing blocks (``NEUTRAL_BLOCK_PX`` square, OD norm from
    ``NEUTRAL_MIN_OD`` up to the ``NEUTRAL_MAX_QUANTILE`` of such blocks)
    are split into X-gal-like and other by their hue (2-means on the
    chromaticity plane perpendicular to grey, the X-gal centre held at
    X-gal's own colour, and one more held at each colour in ``avoid``: a
    counterstain); the median colour of the others is the cells' colour. Accepted with at least ``min_blocks`` such blocks and within
    ``NEUTRAL_MAX_ANGLE_DEG`` of grey; else pure grey and False.
    """
    xgal = normalize(xgal)
    if min(od.shape[:2]) < NEUTRAL_BLOCK_PX:
        return GREY, False
    blocks = block_reduce_mean(od, NEUTRAL_BLOCK_PX).reshape(-1, 3)
    norms = _row_norms(blocks)
    sel = norms >= NEUTRAL_MIN_OD
    if np.count_nonzero(sel) < min_blocks:
        return GREY, False
    sel &= norms <= np.quantile(norms[sel], NEUTRAL_MAX_QUANTILE)
    d = blocks[sel] / norms[sel, None]
    e1, e2 = _chroma_basis(xgal)
    pts = np.column_stack([d @ e1, d @ e2])
    fixed = [np.array([v @ e1, v @ e2]) for v in (xgal, *(normalize(a) for a in avoid))]
    cb = np.zeros(2)
    for _ in range(20):
        near = ((pts - cb) ** 2).sum(axis=1)
        other = np.ones(len(pts), dtype=bool)
        for c in fixed:
            other &= near < ((pts - c) ** 2).sum(axis=1)
        if np.count_nonzero(other) < min_blocks:
            return GREY, False
        new = np.median(pts[other], axis=0)
        if np.allclose(new, cb, atol=1e-5):
            break
        cb = new
    r2 = float(cb @ cb)
    if r2 >= 1:
        return GREY, False
    vec = normalize(np.sqrt(1 - r2) * GREY + cb[0] * e1 + cb[1] * e2)
    if np.any(vec < 0) or angle_deg(vec, GREY) > NEUTRAL_MAX_ANGLE_DEG:
        return GREY, False
    return vec, True
