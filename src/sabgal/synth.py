"""Physically based synthetic SA-β-gal fields with exact ground truth.

A field is rendered the way a transmitted-light microscope forms it:

1. **Geometry.** Nuclei are placed by random sequential adsorption with a
   minimum spacing; each cell is a star-convex body
   ``r(θ) = R · e(θ) · (1 + Σ_k a_k cos(kθ + φ_k))`` (``k = 2..5``, ``e`` an
   area-preserving ellipse for elongated, fibroblast-like cells). Where cells
   compete for a pixel it goes to the cell with the smallest normalised distance
   ``d / r(θ)`` (a multiplicatively weighted, power-diagram-like partition), so
   touching cells meet along realistic borders. Each cell owns one elliptical
   nucleus that lies wholly inside it by construction.
2. **Stains.** Per pixel, optical density follows Beer–Lambert:
   ``OD_rgb = Σ_s c_s(row, col) · v_s`` with unit stain vectors ``v_s``. X-gal
   (5,5'-dibromo-4,4'-dichloro-indigo) forms perinuclear granules plus a diffuse
   cytoplasmic haze in SA-β-gal positive cells; an optional red counterstain
   colours nuclei (strongly) and cytoplasm (weakly); unstained cell bodies
   scatter a little light (grey OD ∝ thickness) with darker rims and nucleoli.
3. **Artefacts.** Grey debris, X-gal crystals (thin blue needles), out-of-focus
   dust on the optics, background X-gal haze.
4. **Optics and camera.** Gaussian defocus blur of the transmittance, a tinted,
   vignetted lamp, shot and read noise at a drawn full-well capacity, optional
   gamma, 8-bit or 12-bit (in ``uint16``) quantisation and optional JPEG.
   For set-up ``"fluorescence"`` a DAPI/Hoechst image (∝ DNA) is rendered too.

Every parameter of a field is drawn by :func:`random_params` over wide,
physically plausible ranges (no constant a pipeline could overfit to) and
stored in a frozen :class:`FieldParams`; :func:`render_field` turns parameters
and a :class:`numpy.random.Generator` into a :class:`SynthField` with the image,
the true cell and nucleus labels and a per-cell truth table. Rendering is
deterministic given the generator; no global random state is touched.

Ground truth is unambiguous by construction: SA-β-gal positive cells have a true
X-gal peak OD ≥ 0.15 and 90th percentile ≥ 0.08 while negative cells peak at
≤ 0.03; enlarged cells are at least 2x the median area of normal cells while
normal cells stay at or below 1.5x (cells cut by the image border excepted, and
flagged). X-gal crystals and debris are artefacts, not cell stain: they are kept
mostly off cells and never enter the truth. :func:`illumination` gives the exact
lamp of a field, so tests can measure optical density by Beer–Lambert.

References
----------
Ruifrok AC, Johnston DA (2001). Quantification of histochemical staining by color
deconvolution. Anal Quant Cytol Histol 23(4):291-299.
Dimri GP et al. (1995). A biomarker that identifies senescent human cells in
culture and in aging skin in vivo. PNAS 92(20):9363-9367.
Debacq-Chainiaux F et al. (2009). Protocols to detect senescence-associated
beta-galactosidase (SA-βgal) activity, a biomarker of senescent cells in culture
and in vivo. Nat Protoc 4(12):1798-1806.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = [
    "FieldParams",
    "SynthField",
    "SETUPS",
    "FORMATS",
    "COUNTERSTAIN_VECTORS",
    "XGAL_REFERENCE",
    "LAMP_TINTS",
    "TRUTH_COLUMNS",
    "MANIFEST_COLUMNS",
    "random_params",
    "render_field",
    "illumination",
    "write_field",
    "generate_dataset",
    "build_synth_parser",
    "synth_main",
]

logger = logging.getLogger(__name__)

Setup = Literal["counterstain", "brightfield", "fluorescence"]
SETUPS: tuple[str, ...] = ("counterstain", "brightfield", "fluorescence")
FORMATS: tuple[str, ...] = ("tif", "png", "jpg")
REFERENCE_SHAPE = (1024, 1360)  # the frame the density ranges are quoted for


def _unit(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


# --- Stain vectors: unit optical-density directions (R, G, B) -----------------
# X-gal reaction product (indigo dye), reference direction used by sabgal's
# configs; per field the G and B components are varied from navy to teal.
XGAL_REFERENCE = _unit((0.722, 0.557, 0.411))
# Counterstains. Nuclear fast red: Ruifrok & Johnston 2001 ("Fast Red").
# Eosin Y: Ruifrok & Johnston 2001 (approx.). Neutral red: absorption maximum
# ~540 nm, close to nuclear fast red but bluer. Hematoxylin: Ruifrok & Johnston
# 2001 (only on request: ~12° from X-gal, a deliberately hard case).
COUNTERSTAIN_VECTORS: dict[str, tuple[float, float, float]] = {
    "nuclear_fast_red": _unit((0.214, 0.851, 0.478)),
    "eosin": _unit((0.09, 0.86, 0.50)),
    "neutral_red": _unit((0.190, 0.780, 0.597)),
    "hematoxylin": _unit((0.650, 0.704, 0.286)),
}
_DEFAULT_COUNTERSTAINS = ("nuclear_fast_red", "eosin", "neutral_red")
# How strongly each counterstain marks nuclei vs cytoplasm (OD ranges of the
# stain concentration): eosin is acidophilic and marks cytoplasm more evenly.
_COUNTERSTAIN_LEVELS = {
    "nuclear_fast_red": ((0.22, 0.75), (0.01, 0.07)),
    "eosin": ((0.18, 0.45), (0.04, 0.14)),
    "neutral_red": ((0.20, 0.65), (0.02, 0.10)),
    "hematoxylin": ((0.20, 0.60), (0.01, 0.05)),
}
# Light scattered/refracted out of the aperture by unstained cells: nearly
# neutral, a little stronger in blue (Rayleigh-like).
_SCATTER_REFERENCE = _unit((0.55, 0.58, 0.60))
# Debris: from neutral grey to brownish (absorbs blue most).
_DEBRIS_GREY = _unit((1.0, 1.0, 1.0))
_DEBRIS_BROWN = _unit((0.45, 0.57, 0.69))

# Lamp colour as seen through the camera's (imperfect) white balance, relative
# per-channel level (R, G, B).
LAMP_TINTS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "grey": (1.0, 1.0, 1.0),  # same colour, drawn at lower exposure
    "lilac": (0.95, 0.88, 1.0),
    "pink": (1.0, 0.88, 0.93),
    "yellow": (1.0, 0.96, 0.80),
    "blue": (0.90, 0.95, 1.0),
}

TRUTH_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "centroid_y",
    "centroid_x",
    "area_px",
    "nucleus_area_px",
    "nucleus_centroid_y",
    "nucleus_centroid_x",
    "sabgal_positive",
    "enlarged",
    "senescent",
    "touches_border",
    "xgal_od_peak",
    "xgal_od_mean_true",
    "xgal_od_p90_true",
    "thickness",
)

# Class gaps that make the truth unambiguous.
_POSITIVE_MIN_PEAK = 0.15  # X-gal OD: positive cells peak at least here
_NEGATIVE_MAX_PEAK = 0.03  # negative cells peak at most here
_POSITIVE_MIN_P90 = 0.08  # positive cells: 90th percentile of the cell at least here
_ENLARGED_MIN_RATIO = 2.0  # enlarged cells: area / median normal area ≥ this
_NORMAL_MAX_RATIO = 1.5  # normal cells: area / median normal area ≤ this


# =============================================================================
# Parameters
# =============================================================================

Vec3 = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class FieldParams:
    """Every drawn parameter of one synthetic field (see :func:`random_params`).

    Lengths are in pixels, optical densities (OD) in decadic absorbance units
    along a unit stain vector, levels as fractions of the camera's full scale.
    Per-cell values (sizes, shapes, stain strengths) are drawn at render time
    from the ranges given here.
    """

    seed: int  # render seed: render_field(p, np.random.default_rng(p.seed))
    shape: tuple[int, int]
    setup: str
    counterstain: str  # "none" or a key of COUNTERSTAIN_VECTORS
    file_format: str  # "tif", "png" or "jpg"
    bit_depth: int  # 8, or 16 (12-bit data in uint16 words; TIFF only)
    jpeg_quality: int | None

    # --- geometry ---
    nucleus_diameter_px: float  # median normal nucleus (equivalent) diameter
    cell_to_nucleus_radius: float  # normal cell radius / nucleus radius
    normal_size_cv: float  # spread of normal cell areas
    confluence: float  # target coverage (sum of nominal cell areas / field)
    n_cells: int  # target number of cells (fewer if they do not fit)
    packing: float  # min centre spacing, in units of (R_i + R_j)
    reach: float  # how far (in units of r(θ)) a cell may spread into free space
    shape_irregularity: float  # max amplitude of the shape harmonics
    elongated_fraction: float  # share of fibroblast-like cells
    elongation_max: float  # their aspect ratio is drawn up to this
    alignment: float  # 0 random orientations .. 1 locally aligned
    nucleus_aspect_max: float
    nucleus_offset: float  # max nucleus offset, fraction of the free radius

    # --- cell classes ---
    senescent_fraction: float  # positive and enlarged
    positive_only_fraction: float  # positive, normal size
    enlarged_only_fraction: float  # enlarged, negative
    enlarged_area_factor: tuple[float, float]  # nominal area x normal median
    senescent_nucleus_area_factor: tuple[float, float]
    enlarged_thickness_factor: tuple[float, float]  # flattening

    # --- stains ---
    xgal_vector: Vec3
    counterstain_vector: Vec3 | None
    scatter_vector: Vec3
    debris_vector: Vec3
    xgal_peak_od: tuple[float, float]  # per-cell peak, drawn log-uniform
    xgal_haze_weight: float  # diffuse share of the positive-cell stain
    xgal_haze_length: float  # decay length of the haze, fraction of R
    xgal_nuclear_haze: float  # haze over the nucleus, fraction
    xgal_granule_sigma_px: float
    xgal_granule_density: float  # granules per cell pixel
    xgal_granules_per_cluster: float  # granules clump into clusters of about this many
    xgal_perinuclear_length: float  # granule distance from nucleus, fraction of R
    xgal_polarity: float  # 0 all round the nucleus .. 1 a one-sided cap
    negative_haze_od: float  # max peak of the faint haze in negative cells
    xgal_background_od: float  # field-wide X-gal haze
    counterstain_nucleus_od: float
    counterstain_cytoplasm_od: float
    chromatin_texture: float  # relative contrast of chromatin texture
    body_od: float  # grey (scatter) OD of an average cell body
    edge_od: float  # extra grey OD on cell rims
    nucleus_extra_od: float  # extra grey OD of nuclei
    nucleolus_od: float

    # --- artefacts ---
    n_debris: int
    debris_large_fraction: float
    n_crystals: int
    crystal_over_cells_fraction: float
    n_dust: int
    blur_sigma_px: float

    # --- lamp and camera ---
    lamp_tint: str
    lamp_rgb: Vec3
    background_level: float  # brightest channel's background, fraction of full scale
    vignetting: float  # fall-off at the far corner (fraction)
    vignetting_centre: tuple[float, float]  # (row, col) as fractions of the frame
    vignetting_rgb: Vec3  # relative fall-off per channel (colour shading)
    full_well_e: float
    read_noise_e: float
    gamma: float  # 1 = linear camera

    # --- nuclear fluorescence (set-up "fluorescence") ---
    dapi_peak: float  # counts above offset of a typical nucleus
    dapi_offset: float  # camera dark offset, counts
    dapi_background: float  # background, fraction of dapi_peak
    dapi_blur_sigma_px: float
    dapi_full_scale: int  # 4095 (12-bit) or 65535
    dapi_gain: float  # counts per photo-electron
    dapi_shift_px: tuple[float, float]  # registration error vs brightfield
    # the RGB camera encodes light with the sRGB tone curve (IEC 61966-2-1),
    # as consumer cameras and display exports do, instead of ``x ** gamma``
    srgb_camera: bool = False

    def __post_init__(self) -> None:
        if self.setup not in SETUPS:
            raise ValueError(f"setup must be one of {list(SETUPS)}, got {self.setup!r}")
        valid_cs = ("none", *COUNTERSTAIN_VECTORS)
        if self.counterstain not in valid_cs:
            raise ValueError(f"counterstain must be one of {list(valid_cs)}, got {self.counterstain!r}")
        if self.file_format not in FORMATS:
            raise ValueError(f"file_format must be one of {list(FORMATS)}, got {self.file_format!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth!r}")
        if self.bit_depth == 16 and self.file_format != "tif":
            raise ValueError(f"16-bit images are written as TIFF only, got file_format={self.file_format!r}")
        if self.file_format == "jpg" and self.jpeg_quality is None:
            raise ValueError("file_format 'jpg' needs jpeg_quality")
        if len(self.shape) != 2 or min(self.shape) < 32:
            raise ValueError(f"shape must be (rows, cols) with both >= 32, got {self.shape!r}")
        if (self.counterstain == "none") != (self.counterstain_vector is None):
            raise ValueError("counterstain_vector must be given exactly when counterstain != 'none'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every parameter (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldParams:
        """Inverse of :meth:`to_dict` (lists become tuples)."""
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class SynthField:
    """A rendered field and its ground truth.

    rgb : (M, N, 3) uint8 or uint16 brightfield image, as the camera writes it
        (12-bit data in ``uint16`` when ``params.bit_depth == 16``).
    nuclear : (M, N) uint16 DAPI/Hoechst image (set-up "fluorescence") or None.
    cell_labels, nucleus_labels : (M, N) uint32 true labels, ids ``1..n``; a
        nucleus carries the id of its cell.
    truth : one row per cell, columns :data:`TRUTH_COLUMNS`.
    """

    rgb: np.ndarray
    nuclear: np.ndarray | None
    cell_labels: np.ndarray
    nucleus_labels: np.ndarray
    truth: pd.DataFrame
    params: FieldParams


def _perturb(v: Sequence[float], rng: np.random.Generator, max_deg: float) -> Vec3:
    """Rotate a unit vector by a random angle up to ``max_deg`` (non-negative result)."""
    v = np.asarray(v, dtype=np.float64)
    v = v / np.linalg.norm(v)
    w = rng.standard_normal(3)
    w -= w.dot(v) * v
    w /= np.linalg.norm(w)
    ang = math.radians(rng.uniform(0.0, max_deg))
    out = np.clip(math.cos(ang) * v + math.sin(ang) * w, 0.01, None)
    return _unit(out)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_params(
    rng: np.random.Generator,
    *,
    setup: Setup | None = None,
    shape: tuple[int, int] = REFERENCE_SHAPE,
    senescent_fraction: float | None = None,
    jpeg: bool | None = None,
    counterstain: str | None = None,
    formats: Sequence[str] = FORMATS,
) -> FieldParams:
    """Draw the parameters of one field over wide, physically plausible ranges.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one used).
    setup : {"counterstain", "brightfield", "fluorescence"}, optional
        Imaging set-up; drawn uniformly when None.
    shape : (int, int)
        Image size (rows, cols). Pixel scale ranges do not depend on it; the
        number of cells scales with the area (30-650 cells at 1024 x 1360).
    senescent_fraction : float, optional
        Fraction of senescent (positive and enlarged) cells; drawn in [0, 0.9]
        when None.
    jpeg : bool, optional
        Force (True) or forbid (False) JPEG output; when None JPEG is drawn with
        probability 1/3 if ``"jpg"`` is in ``formats``.
    counterstain : str, optional
        Counterstain for set-ups that use one (a key of
        :data:`COUNTERSTAIN_VECTORS`); drawn among nuclear fast red, eosin and
        neutral red when None. Ignored for "brightfield".
    formats : sequence of {"tif", "png", "jpg"}
        File formats allowed for this field.

    Returns
    -------
    FieldParams

    Raises
    ------
    ValueError
        On an unknown set-up, counterstain or format, a bad shape, a fraction
        outside [0, 1], or ``jpeg=True`` without ``"jpg"`` in ``formats``.

    Examples
    --------
    >>> import numpy as np
    >>> p = random_params(np.random.default_rng(0), setup="brightfield", shape=(256, 320))
    >>> p.setup, p.counterstain
    ('brightfield', 'none')
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
    if setup is None:
        setup = str(rng.choice(SETUPS))
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {list(SETUPS)} (or None to draw one), got {setup!r}")
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be (rows, cols) with both >= 32, got {shape!r}")
    if senescent_fraction is not None and not 0.0 <= senescent_fraction <= 1.0:
        raise ValueError(f"senescent_fraction must be in [0, 1], got {senescent_fraction}")
    if counterstain is not None and counterstain not in COUNTERSTAIN_VECTORS:
        raise ValueError(f"counterstain must be one of {list(COUNTERSTAIN_VECTORS)}, got {counterstain!r}")
    if jpeg and "jpg" not in formats:
        raise ValueError("jpeg=True needs 'jpg' in formats")
    rows, cols = int(shape[0]), int(shape[1])
    area_factor = rows * cols / (REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1])

    # --- file format ---
    if jpeg is None:
        use_jpeg = "jpg" in formats and (formats == ("jpg",) or rng.random() < 1 / 3)
    else:
        use_jpeg = bool(jpeg)
    if use_jpeg:
        file_format, bit_depth, quality = "jpg", 8, int(rng.integers(70, 96))
    else:
        lossless = [f for f in formats if f != "jpg"]
        if not lossless:
            raise ValueError("jpeg=False needs 'tif' or 'png' in formats")
        file_format = str(rng.choice(lossless))
        bit_depth = 16 if (file_format == "tif" and rng.random() < 0.3) else 8
        quality = None

    # --- set-up and counterstain ---
    if setup == "counterstain" or (setup == "fluorescence" and rng.random() < 0.3):
        cs = counterstain or str(rng.choice(_DEFAULT_COUNTERSTAINS))
        cs_vec: Vec3 | None = _perturb(COUNTERSTAIN_VECTORS[cs], rng, 4.0)
        (nlo, nhi), (clo, chi) = _COUNTERSTAIN_LEVELS[cs]
        cs_nuc = rng.uniform(nlo, nhi)
        cs_cyto = rng.uniform(clo, chi)
    else:
        cs, cs_vec, cs_nuc, cs_cyto = "none", None, 0.0, 0.0

    # --- geometry ---
    d_nuc = rng.uniform(8.0, 22.0)
    ratio = rng.uniform(2.4, 4.2)
    if senescent_fraction is None:
        u = rng.random()
        senescent_fraction = rng.uniform(0.0, 0.1) if u < 0.25 else (
            rng.uniform(0.1, 0.6) if u < 0.75 else rng.uniform(0.6, 0.9))
    f_sen = float(senescent_fraction)
    room = 1.0 - f_sen
    f_pos_only = min(rng.uniform(0.0, 0.08), room / 2)
    f_enl_only = min(rng.uniform(0.0, 0.08), room / 2)
    enl_lo = rng.uniform(2.4, 3.0)
    enl_hi = rng.uniform(enl_lo + 0.5, 5.0)
    f_enl = f_sen + f_enl_only
    mean_area = math.pi * (ratio * d_nuc / 2) ** 2 * (1 + f_enl * ((enl_lo + enl_hi) / 2 - 1))
    confluence = rng.uniform(0.12, 1.25)
    n_lo = max(3, round(25 * area_factor))
    n_hi = max(n_lo + 2, round(650 * area_factor))
    n_cells = int(np.clip(round(confluence * rows * cols / mean_area), n_lo, n_hi))
    packing = float(np.clip(math.sqrt(0.42 / confluence), 0.6, 0.95))
    reach = 1.0 + float(np.clip((confluence - 0.45) / 0.6, 0.0, 1.0)) * rng.uniform(0.2, 0.6)
    elongated_fraction = 0.0 if rng.random() < 0.25 else rng.uniform(0.1, 0.85)

    # --- X-gal ---
    # navy (G high) to teal (G low); R stays the dominant absorption
    xg_g = rng.uniform(0.30, 0.68)
    xg = (rng.uniform(0.66, 0.80), xg_g, rng.uniform(0.28, max(0.29, min(0.55, xg_g))))
    brown = rng.uniform()
    debris_vec = np.asarray(_DEBRIS_GREY) * (1 - brown) + np.asarray(_DEBRIS_BROWN) * brown
    peak_lo = _loguniform(rng, _POSITIVE_MIN_PEAK + 0.01, 0.45)
    peak_hi = _loguniform(rng, max(peak_lo * 1.5, 0.35), 1.5)

    # --- lamp ---
    tint = str(rng.choice(list(LAMP_TINTS)))
    lamp = np.array(LAMP_TINTS[tint]) * rng.uniform(0.97, 1.03, 3)
    lamp = lamp / lamp.max()
    if tint == "grey":
        level = rng.uniform(0.55, 0.75)
    elif rng.random() < 0.15:
        level = rng.uniform(0.92, 0.97)
    else:
        level = rng.uniform(0.6, 0.92)

    dapi_12bit = rng.random() < 0.6
    dapi_fs = 4095 if dapi_12bit else 65535
    dapi_scale = dapi_fs / 4095
    shift = (0.0, 0.0) if rng.random() < 0.6 else tuple(float(s) for s in rng.uniform(-1.0, 1.0, 2))

    return FieldParams(
        seed=int(rng.integers(0, 2**31 - 1)),
        shape=(rows, cols),
        setup=setup,
        counterstain=cs,
        file_format=file_format,
        bit_depth=bit_depth,
        jpeg_quality=quality,
        nucleus_diameter_px=float(d_nuc),
        cell_to_nucleus_radius=float(ratio),
        normal_size_cv=float(rng.uniform(0.08, 0.18)),
        confluence=float(confluence),
        n_cells=n_cells,
        packing=packing,
        reach=float(reach),
        shape_irregularity=float(rng.uniform(0.05, 0.25)),
        elongated_fraction=float(elongated_fraction),
        elongation_max=float(rng.uniform(1.8, 3.0)),
        alignment=float(rng.uniform(0.0, 1.0)),
        nucleus_aspect_max=float(rng.uniform(1.1, 1.6)),
        nucleus_offset=float(rng.uniform(0.0, 0.35)),
        senescent_fraction=f_sen,
        positive_only_fraction=float(f_pos_only),
        enlarged_only_fraction=float(f_enl_only),
        enlarged_area_factor=(float(enl_lo), float(enl_hi)),
        senescent_nucleus_area_factor=(1.2, 1.8),
        enlarged_thickness_factor=(float(rng.uniform(0.35, 0.5)), float(rng.uniform(0.55, 0.75))),
        xgal_vector=_unit(xg),
        counterstain_vector=cs_vec,
        scatter_vector=_perturb(_SCATTER_REFERENCE, rng, 3.0),
        debris_vector=_unit(debris_vec),
        xgal_peak_od=(float(peak_lo), float(peak_hi)),
        xgal_haze_weight=float(rng.uniform(0.25, 0.55)),
        xgal_haze_length=float(rng.uniform(0.35, 0.8)),
        xgal_nuclear_haze=float(rng.uniform(0.1, 0.35)),
        xgal_granule_sigma_px=float(np.clip(d_nuc * rng.uniform(0.05, 0.1), 0.6, 2.0)),
        xgal_granule_density=float(rng.uniform(0.02, 0.08)),
        xgal_granules_per_cluster=float(rng.uniform(2.0, 10.0)),
        xgal_perinuclear_length=float(rng.uniform(0.12, 0.35)),
        xgal_polarity=float(rng.uniform(0.0, 0.8)),
        negative_haze_od=float(rng.uniform(0.0, _NEGATIVE_MAX_PEAK)),
        xgal_background_od=float(0.0 if rng.random() < 0.4 else rng.uniform(0.0, 0.02)),
        counterstain_nucleus_od=float(cs_nuc),
        counterstain_cytoplasm_od=float(cs_cyto),
        chromatin_texture=float(rng.uniform(0.1, 0.35)),
        body_od=float(rng.uniform(0.01, 0.06)),
        edge_od=float(rng.uniform(0.0, 0.05)),
        nucleus_extra_od=float(rng.uniform(0.02, 0.08)),
        nucleolus_od=float(rng.uniform(0.02, 0.08)),
        n_debris=int(rng.integers(0, max(2, round(40 * area_factor)) + 1)),
        debris_large_fraction=float(rng.uniform(0.0, 0.15)),
        n_crystals=int(0 if rng.random() < 0.4 else rng.integers(1, max(2, round(20 * area_factor)) + 1)),
        crystal_over_cells_fraction=float(rng.uniform(0.0, 0.05)),
        n_dust=int(rng.integers(0, 6)),
        blur_sigma_px=float(rng.uniform(0.5, 2.0)),
        lamp_tint=tint,
        lamp_rgb=(float(lamp[0]), float(lamp[1]), float(lamp[2])),
        background_level=float(level),
        vignetting=float(rng.uniform(0.0, 0.35)),
        vignetting_centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
        vignetting_rgb=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)),
        full_well_e=float(_loguniform(rng, 5000.0, 40000.0)),
        read_noise_e=float(rng.uniform(2.0, 20.0)),
        gamma=float(1.0 if rng.random() < 0.75 else rng.uniform(0.75, 1.0)),
        dapi_peak=float(rng.uniform(400.0, 3000.0) * dapi_scale),
        dapi_offset=float(rng.uniform(50.0, 400.0) * dapi_scale),
        dapi_background=float(rng.uniform(0.01, 0.08)),
        dapi_blur_sigma_px=float(rng.uniform(0.6, 2.5)),
        dapi_full_scale=int(dapi_fs),
        dapi_gain=float(rng.uniform(0.5, 3.0) * dapi_scale),
        dapi_shift_px=(float(shift[0]), float(shift[1])),
    )


# =============================================================================
# Geometry
# =============================================================================

_N_HARM = 4  # shape harmonics k = 2..5
_K_ANG = 512  # angular resolution of the r(θ) tables (power of two)
_ANG = (np.arange(_K_ANG) * (2 * np.pi / _K_ANG) - np.pi).astype(np.float64)


def _angle_index(theta: np.ndarray) -> np.ndarray:
    """Index into the r(θ) tables of absolute angles θ in [-π, π] (as from arctan2)."""
    return ((theta + np.pi) * (_K_ANG / (2 * np.pi)) + 0.5).astype(np.intp) & (_K_ANG - 1)


@dataclass
class _Cells:
    """Per-cell arrays (length n), mutable while a field is being built."""

    cy: np.ndarray  # star centre (row, col)
    cx: np.ndarray
    R: np.ndarray  # area-equivalent radius of the nominal shape
    aspect: np.ndarray
    psi: np.ndarray  # long-axis orientation (radians, from +col towards +row)
    amp: np.ndarray  # (n, 4) harmonic amplitudes
    phase: np.ndarray  # (n, 4)
    ny: np.ndarray  # nucleus centre (relative to the cell centre until placed)
    nx: np.ndarray
    na: np.ndarray  # nucleus semi-axes
    nb: np.ndarray
    npsi: np.ndarray
    positive: np.ndarray
    enlarged: np.ndarray
    thickness: np.ndarray

    def take(self, idx: np.ndarray) -> _Cells:
        return _Cells(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def _radius_table(cells: _Cells) -> np.ndarray:
    """r(θ) of every cell at the absolute angles ``_ANG``, shape (n, _K_ANG), float32."""
    t = (_ANG[None, :] - cells.psi[:, None]).astype(np.float32)
    c1, s1 = np.cos(t), np.sin(t)
    A = cells.aspect[:, None].astype(np.float32)
    m = np.ones_like(t)
    ck, sk = c1, s1
    for j in range(_N_HARM):  # cos(kt + φ) = cos kt cos φ - sin kt sin φ, k = j + 2
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        ph = cells.phase[:, j:j + 1]
        m += cells.amp[:, j:j + 1].astype(np.float32) * (
            ck * np.cos(ph).astype(np.float32) - sk * np.sin(ph).astype(np.float32))
    return cells.R[:, None].astype(np.float32) * m / np.sqrt(c1 * c1 / A + s1 * s1 * A)


def _box(cy: float, cx: float, ext: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    y0 = max(0, int(math.floor(cy - ext)))
    y1 = min(shape[0], int(math.ceil(cy + ext)) + 1)
    x0 = max(0, int(math.floor(cx - ext)))
    x1 = min(shape[1], int(math.ceil(cx + ext)) + 1)
    return y0, y1, x0, x1


def _q_in_box(cy: float, cx: float, inv_r: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Normalised distance d / r(θ) from a cell centre over a box (float32)."""
    y0, y1, x0, x1 = box
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    d = np.sqrt(dy * dy + dx * dx)
    return d * inv_r[_angle_index(np.arctan2(dy, dx))]


def _ellipse_rho(cy: float, cx: float, a: float, b: float, psi: float,
                 box: tuple[int, int, int, int]) -> np.ndarray:
    """Elliptical radius (1 on the outline) over a box (float32)."""
    y0, y1, x0, x1 = box
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    cp, sp = np.float32(math.cos(psi) / a), np.float32(math.sin(psi) / a)
    cq, sq = np.float32(math.cos(psi) / b), np.float32(math.sin(psi) / b)
    u = dx * cp + dy * sp
    v = dy * cq - dx * sq
    return np.sqrt(u * u + v * v)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells_across: float) -> np.ndarray:
    """Smooth random field in [0, 1] with ~``cells_across`` undulations over the long side."""
    rows, cols = shape
    step = max(rows, cols) / max(cells_across, 1.0)
    ky = np.arange(-1, int(math.ceil(rows / step)) + 2) * step
    kx = np.arange(-1, int(math.ceil(cols / step)) + 2) * step
    wy = np.exp(-0.5 * ((np.arange(rows)[:, None] - ky[None, :]) / (0.6 * step)) ** 2)
    wx = np.exp(-0.5 * ((np.arange(cols)[:, None] - kx[None, :]) / (0.6 * step)) ** 2)
    wy /= wy.sum(axis=1, keepdims=True)
    wx /= wx.sum(axis=1, keepdims=True)
    f = wy @ rng.random((len(ky), len(kx))) @ wx.T
    lo, hi = float(f.min()), float(f.max())
    return ((f - lo) / (hi - lo + 1e-12)).astype(np.float32)


def _lowpass_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    f = max(1, int(sigma // 3))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    noise = ndi.gaussian_filter(rng.standard_normal(small, dtype=np.float32), sigma / f)
    if f > 1:
        noise = ndi.zoom(noise, f, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1]]
    noise /= np.float32(max(float(noise.std()), 1e-6))
    return noise


def _draw_cells(p: FieldParams, rng: np.random.Generator) -> _Cells:
    """Draw classes, sizes and shapes of ``p.n_cells`` cells (positions unset)."""
    n = p.n_cells
    n_sen = int(round(n * p.senescent_fraction))
    n_po = min(int(round(n * p.positive_only_fraction)), n - n_sen)
    n_eo = min(int(round(n * p.enlarged_only_fraction)), n - n_sen - n_po)
    cls = np.zeros(n, dtype=np.int8)  # 0 normal, 1 senescent, 2 positive only, 3 enlarged only
    cls[:n_sen] = 1
    cls[n_sen:n_sen + n_po] = 2
    cls[n_sen + n_po:n_sen + n_po + n_eo] = 3
    rng.shuffle(cls)
    positive = (cls == 1) | (cls == 2)
    enlarged = (cls == 1) | (cls == 3)

    r_nuc = p.nucleus_diameter_px / 2
    R0 = p.cell_to_nucleus_radius * r_nuc
    # Normal cells: log-normal area, clipped so the enlarged class keeps a gap.
    area_f = np.exp(rng.normal(0.0, p.normal_size_cv * 1.4, n)).clip(0.72, 1.3)
    lo, hi = p.enlarged_area_factor
    area_f = np.where(enlarged, np.exp(rng.uniform(math.log(lo), math.log(hi), n)), area_f)
    R = R0 * np.sqrt(area_f)

    elong = rng.random(n) < p.elongated_fraction
    aspect = np.where(elong, rng.uniform(1.6, max(1.61, p.elongation_max), n), rng.uniform(1.0, 1.35, n))
    aspect = np.where(enlarged, rng.uniform(1.0, 1.8, n), aspect)  # "fried-egg" senescent shapes
    amp = rng.uniform(0.0, 1.0, (n, _N_HARM)) * p.shape_irregularity / np.sqrt(np.arange(1, _N_HARM + 1))
    amp = amp * np.where(enlarged, 1.3, 1.0)[:, None]
    total = amp.sum(axis=1, keepdims=True)
    amp = np.where(total > 0.45, amp * 0.45 / np.maximum(total, 1e-9), amp)
    phase = rng.uniform(0, 2 * np.pi, (n, _N_HARM))

    # Nuclei: size spread, larger in most enlarged cells; aligned with elongated cells.
    nd = r_nuc * np.exp(rng.normal(0.0, 0.1, n))
    fa = rng.uniform(*p.senescent_nucleus_area_factor, n)
    big_nuc = enlarged & (rng.random(n) < 0.75)
    nd = np.where(big_nuc, nd * np.sqrt(fa), nd)
    nasp = rng.uniform(1.0, p.nucleus_aspect_max, n)
    nasp = np.where(elong, np.minimum(1.0 + 0.45 * (aspect - 1.0), 2.0) * rng.uniform(0.9, 1.1, n), nasp)
    nasp = np.maximum(nasp, 1.0)
    na = nd * np.sqrt(nasp)
    nb = nd / np.sqrt(nasp)

    base_t = rng.uniform(0.75, 1.25, n)
    thickness = np.where(enlarged, base_t * rng.uniform(*p.enlarged_thickness_factor, n), base_t)
    z = np.zeros(n)
    return _Cells(cy=z.copy(), cx=z.copy(), R=R, aspect=aspect, psi=rng.uniform(0, np.pi, n),
                  amp=amp, phase=phase, ny=z.copy(), nx=z.copy(), na=na, nb=nb,
                  npsi=z.copy(), positive=positive, enlarged=enlarged, thickness=thickness)


def _fit_nuclei(cells: _Cells, p: FieldParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Orient and offset nuclei; simplify shapes until each nucleus sits well inside.

    Sets the nucleus offsets (relative to the cell centre) and returns
    ``(qn, en)``: the largest normalised distance d / r(θ) of the nucleus outline
    in its own cell (≤ 0.7) and its largest distance from the cell centre.
    """
    n = len(cells.R)
    cells.npsi = cells.psi + rng.normal(0.0, 0.25, n)
    off_dir = rng.uniform(0, 2 * np.pi, n)
    off_frac = rng.uniform(0.0, 1.0, n) * p.nucleus_offset
    tt = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ct, st = np.cos(tt), np.sin(tt)
    todo = np.arange(n)
    qn = np.zeros(n)
    en = np.zeros(n)
    for it in range(16):
        sub = cells.take(todo)
        r = _radius_table(sub)
        free = np.maximum(r.min(axis=1) - sub.na, 0.0)
        oy = off_frac[todo] * free * np.sin(off_dir[todo])
        ox = off_frac[todo] * free * np.cos(off_dir[todo])
        cp, sp = np.cos(sub.npsi)[:, None], np.sin(sub.npsi)[:, None]
        px = ox[:, None] + sub.na[:, None] * ct * cp - sub.nb[:, None] * st * sp
        py = oy[:, None] + sub.na[:, None] * ct * sp + sub.nb[:, None] * st * cp
        dist = np.hypot(py, px)
        r_at = np.take_along_axis(r, _angle_index(np.arctan2(py, px)), axis=1)
        q = (dist / r_at).max(axis=1)
        cells.ny[todo], cells.nx[todo] = oy, ox
        qn[todo], en[todo] = q, dist.max(axis=1)
        bad = q > 0.7
        if not bad.any():
            break
        todo = todo[bad]
        cells.aspect[todo] = 1.0 + 0.75 * (cells.aspect[todo] - 1.0)
        cells.amp[todo] *= 0.75
        off_frac[todo] *= 0.6
        if it >= 6:
            cells.na[todo] *= 0.93
            cells.nb[todo] *= 0.93
    return qn * 1.03 + 0.01, en + 0.5


def _place(cells: _Cells, p: FieldParams, rng: np.random.Generator) -> _Cells:
    """Random sequential adsorption of cells, biggest first, with a minimum spacing.

    Centres of cells i, j are at least ``packing * (R_i + R_j)`` apart, and far
    enough that the partition cannot give pixels of one's nucleus to the other
    (``D > e_i + q_i * rmax_j`` both ways, with e the nucleus reach from the
    centre and q its normalised extent). Nucleus centres lie inside the frame.
    Cells that do not fit after a few hundred tries are left out.
    """
    rows, cols = p.shape
    n = len(cells.R)
    qn, en = _fit_nuclei(cells, p, rng)
    rmax = _radius_table(cells).max(axis=1) * 1.01
    need = np.maximum(
        p.packing * (cells.R[:, None] + cells.R[None, :]),
        np.maximum(en[:, None] + qn[:, None] * rmax[None, :], en[None, :] + qn[None, :] * rmax[:, None]),
    )
    need2 = need * need
    director = _smooth_field(rng, (64, 64), 3.0) * (2 * np.pi)
    psi0 = cells.psi.copy()
    oy, ox = cells.ny.copy(), cells.nx.copy()
    order = np.argsort(-cells.R, kind="stable")
    placed = np.zeros(n, dtype=bool)
    py = np.zeros(n)
    px = np.zeros(n)
    n_cand, n_tries = 24, 12
    cand = rng.random((n, n_tries, n_cand, 2))
    for i in order:
        idx = np.flatnonzero(placed)
        for attempt in range(n_tries):
            ny = cand[i, attempt, :, 0] * (rows - 1)
            nx = cand[i, attempt, :, 1] * (cols - 1)
            if p.alignment > 0:
                d = director[(ny * (64 / rows)).astype(int), (nx * (64 / cols)).astype(int)]
                psi = np.mod(psi0[i] + p.alignment * (d - psi0[i]), np.pi)
            else:
                psi = np.full(n_cand, psi0[i])
            rot = psi - psi0[i]  # turning the cell turns its nucleus offset too
            cr, sr = np.cos(rot), np.sin(rot)
            cy = ny - (oy[i] * cr + ox[i] * sr)
            cx = nx - (ox[i] * cr - oy[i] * sr)
            if idx.size:
                d2 = (cy[:, None] - py[idx]) ** 2 + (cx[:, None] - px[idx]) ** 2
                good = np.flatnonzero((d2 > need2[i, idx]).all(axis=1))
                if not good.size:
                    continue
                k = int(good[0])
            else:
                k = 0
            py[i], px[i] = cy[k], cx[k]
            cells.ny[i], cells.nx[i] = ny[k], nx[k]
            cells.psi[i] = psi[k]
            cells.npsi[i] += rot[k]
            placed[i] = True
            break
    cells.cy, cells.cx = py, px
    keep = np.flatnonzero(placed)
    if len(keep) < n:
        logger.debug("placed %d of %d cells", len(keep), n)
    return cells.take(keep)


@dataclass
class _Raster:
    """Pixel ownership while the partition is built."""

    lab: np.ndarray  # int32, 1-based cell id, 0 background
    q: np.ndarray  # float32 normalised distance to the owning cell (inf on background)
    nuc: np.ndarray  # int32 label of the nucleus ellipse covering a pixel
    rho: np.ndarray  # float32 elliptical radius in that nucleus (inf outside)
    inv_r: np.ndarray  # (n, _K_ANG) float32 1 / r(θ)
    boxes: np.ndarray  # (n, 4) int bounding boxes of the cells' reach


def _rasterise(cells: _Cells, shape: tuple[int, int], reach: float) -> _Raster:
    """Partition pixels among cells: smallest d / r(θ) wins, up to ``reach``."""
    n = len(cells.R)
    r = _radius_table(cells)
    inv_r = (1.0 / r).astype(np.float32)
    ext = r.max(axis=1) * reach + 1.5
    best = np.full(shape, np.inf, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.int32)
    boxes = np.zeros((n, 4), dtype=np.int64)
    lim = np.float32(reach)
    for i in range(n):
        box = _box(cells.cy[i], cells.cx[i], ext[i], shape)
        boxes[i] = box
        y0, y1, x0, x1 = box
        if y0 >= y1 or x0 >= x1:
            continue
        q = _q_in_box(cells.cy[i], cells.cx[i], inv_r[i], box)
        bq = best[y0:y1, x0:x1]
        win = q < np.minimum(bq, lim)
        np.copyto(bq, q, where=win)
        np.copyto(lab[y0:y1, x0:x1], i + 1, where=win)
    nuc = np.zeros(shape, dtype=np.int32)
    rho = np.full(shape, np.inf, dtype=np.float32)
    for i in range(n):
        box = _box(cells.ny[i], cells.nx[i], max(cells.na[i], cells.nb[i]) + 1.5, shape)
        y0, y1, x0, x1 = box
        if y0 >= y1 or x0 >= x1:
            continue
        rr = _ellipse_rho(cells.ny[i], cells.nx[i], cells.na[i], cells.nb[i], cells.npsi[i], box)
        inside = rr <= 1.0
        np.copyto(nuc[y0:y1, x0:x1], i + 1, where=inside)
        np.copyto(rho[y0:y1, x0:x1], rr, where=inside)
    return _Raster(lab=lab, q=best, nuc=nuc, rho=rho, inv_r=inv_r, boxes=boxes)


def _areas(lab: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(lab.ravel(), minlength=n + 1)[1 : n + 1]


def _border_ids(lab: np.ndarray, n: int) -> np.ndarray:
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    flag = np.zeros(n + 1, dtype=bool)
    flag[edge] = True
    return flag[1:]


def _release(ras: _Raster, cells: _Cells, i: int, release: np.ndarray, box: tuple[int, int, int, int],
             reach: float) -> None:
    """Give pixels released by cell i (mask over ``box``) to neighbours, else background."""
    y0, y1, x0, x1 = box
    lab, q = ras.lab[y0:y1, x0:x1], ras.q[y0:y1, x0:x1]
    lab[release] = 0
    q[release] = np.inf
    b = ras.boxes
    near = np.flatnonzero((b[:, 0] < y1) & (b[:, 1] > y0) & (b[:, 2] < x1) & (b[:, 3] > x0))
    for j in near:
        if j == i:
            continue
        jy0, jy1 = max(y0, b[j, 0]), min(y1, b[j, 1])
        jx0, jx1 = max(x0, b[j, 2]), min(x1, b[j, 3])
        if jy0 >= jy1 or jx0 >= jx1:
            continue
        sub = (slice(jy0 - y0, jy1 - y0), slice(jx0 - x0, jx1 - x0))
        free = release[sub]  # released pixels go to the nearest neighbour (smallest q)
        if not free.any():
            continue
        qj = _q_in_box(cells.cy[j], cells.cx[j], ras.inv_r[j], (jy0, jy1, jx0, jx1))
        win = free & (qj < np.minimum(q[sub], np.float32(reach)))
        np.copyto(q[sub], qj, where=win)
        np.copyto(lab[sub], j + 1, where=win)


def _grow(ras: _Raster, cells: _Cells, i: int, factor: float, reach: float) -> None:
    """Grow cell i by ``factor`` in radius, taking pixels from normal-size cells."""
    shape = ras.lab.shape
    ext = (1.0 / float(ras.inv_r[i].min())) * factor * reach + 1.5
    box = _box(cells.cy[i], cells.cx[i], ext, shape)
    y0, y1, x0, x1 = box
    if y0 >= y1 or x0 >= x1:
        return
    ras.boxes[i] = box
    qi = _q_in_box(cells.cy[i], cells.cx[i], ras.inv_r[i], box) / np.float32(factor)
    lab, q, nuc = ras.lab[y0:y1, x0:x1], ras.q[y0:y1, x0:x1], ras.nuc[y0:y1, x0:x1]
    owner_enl = np.concatenate([[False], cells.enlarged])[lab]
    take = (qi < np.minimum(q, np.float32(reach))) & ~owner_enl & ((nuc == 0) | (nuc == i + 1))
    take &= lab != i + 1
    np.copyto(q, qi, where=take)
    np.copyto(lab, i + 1, where=take)
    own = lab == i + 1
    q[own] = qi[own]


def _drop_fragments(ras: _Raster, cells: _Cells) -> int:
    """Keep only the piece of each cell that holds its nucleus centre; returns pixels dropped."""
    from skimage.measure import label as cc_label

    rows, cols = ras.lab.shape
    n = len(cells.R)
    comp = cc_label(ras.lab, connectivity=1, background=0)
    iy = np.clip(np.round(cells.ny).astype(int), 0, rows - 1)
    ix = np.clip(np.round(cells.nx).astype(int), 0, cols - 1)
    main = comp[iy, ix][ras.lab[iy, ix] == np.arange(1, n + 1)]
    is_main = np.zeros(int(comp.max()) + 1, dtype=bool)
    is_main[main] = True
    is_main[0] = True
    orphan = ~is_main[comp]
    k = int(orphan.sum())
    if k:
        ras.lab[orphan] = 0
        ras.q[orphan] = np.inf
    return k


def _build_geometry(p: FieldParams, rng: np.random.Generator) -> tuple[_Cells, _Raster]:
    """Draw, place and rasterise cells; enforce the enlarged / normal size gap.

    Returns the cells (ids 1..n in reading order of their nuclei) and the final
    raster, where ``nuc`` is the nucleus label clipped to its cell.
    """
    cells = _place(_draw_cells(p, rng), p, rng)
    ras = _rasterise(cells, p.shape, p.reach)
    n = len(cells.R)
    for it in range(4):
        area = _areas(ras.lab, n).astype(float)
        interior = ~_border_ids(ras.lab, n)
        normal = ~cells.enlarged & interior & (area > 0)
        if normal.sum() < 3:
            break
        med = float(np.median(area[normal]))
        small_enl = np.flatnonzero(cells.enlarged & interior & (area < _ENLARGED_MIN_RATIO * 1.05 * med))
        big_norm = np.flatnonzero(~cells.enlarged & interior & (area > _NORMAL_MAX_RATIO * 0.97 * med))
        if not (small_enl.size or big_norm.size):
            break
        for i in big_norm:
            # trim the cell's outermost pixels (largest d / r) down to the target area
            box = tuple(int(v) for v in ras.boxes[i])
            y0, y1, x0, x1 = box
            own = ras.lab[y0:y1, x0:x1] == i + 1
            qv = ras.q[y0:y1, x0:x1][own]
            keep_n = int(_NORMAL_MAX_RATIO * 0.9 * med)
            if qv.size <= keep_n:
                continue
            thr = np.partition(qv, keep_n)[keep_n]
            outer = own & (ras.q[y0:y1, x0:x1] >= thr) & (ras.nuc[y0:y1, x0:x1] != i + 1)
            _release(ras, cells, i, outer, box, p.reach)
        for i in small_enl:
            f = math.sqrt(_ENLARGED_MIN_RATIO * 1.2 * med / max(area[i], 1.0))
            _grow(ras, cells, i, min(f, 1.8), p.reach)
    orphans = _drop_fragments(ras, cells)
    if orphans:
        logger.debug("dropped %d fragment pixels", orphans)
    # nucleus = its ellipse within its own cell
    ras.nuc = np.where(ras.lab == ras.nuc, ras.nuc, 0).astype(np.int32)

    # Final guarantee of the class gaps: a cell still in the ambiguous band
    # (rare: squeezed between neighbours) is removed with all it owns.
    area = _areas(ras.lab, n).astype(float)
    interior = ~_border_ids(ras.lab, n)
    normal = ~cells.enlarged & interior & (area > 0)
    drop = (area <= 0) | (_areas(ras.nuc, n) < 4)
    if normal.any():
        med = float(np.median(area[normal]))
        drop |= interior & cells.enlarged & (area < _ENLARGED_MIN_RATIO * med)
        drop |= interior & ~cells.enlarged & (area > _NORMAL_MAX_RATIO * med)
    keep = np.flatnonzero(~drop)
    if drop.any():
        logger.debug("dropping %d cells outside the class size gaps", int(drop.sum()))
    # ids 1..n in reading order of the nuclei
    keep = keep[np.lexsort((cells.nx[keep], cells.ny[keep]))]
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep + 1] = np.arange(1, len(keep) + 1)
    ras.lab, ras.nuc = remap[ras.lab], remap[ras.nuc]
    ras.q = np.where(ras.lab > 0, ras.q, np.inf).astype(np.float32)
    ras.rho = np.where(ras.nuc > 0, ras.rho, np.inf).astype(np.float32)
    ras.inv_r, ras.boxes = ras.inv_r[keep], ras.boxes[keep]
    return cells.take(keep), ras


# =============================================================================
# Stains
# =============================================================================


def _per_cell(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened labels and the cells' pixel counts."""
    flat = lab.ravel()
    return flat, np.bincount(flat, minlength=n + 1)


def _xgal_cells(
    cells: _Cells, ras: _Raster, p: FieldParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell X-gal concentration (OD along the X-gal vector), before blur.

    Positive cells: clustered Gaussian granules concentrated around the nucleus
    plus a patchy, diffuse haze decaying away from the nucleus; negative cells:
    the haze alone, at most ``negative_haze_od``. Each cell is scaled so its
    peak equals its drawn strength.

    Returns the map and per-cell (peak, mean, p90) over the cell's pixels.
    """
    lab, nuc = ras.lab, ras.nuc
    rows, cols = lab.shape
    n = len(cells.R)
    lo, hi = p.xgal_peak_od
    strength = np.where(
        cells.positive,
        np.exp(rng.uniform(math.log(lo), math.log(hi), n)),
        rng.uniform(0.0, 1.0, n) * p.negative_haze_od,
    )

    def per_pixel(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], values]).astype(np.float32)[lab]

    # --- haze: exp(-distance from the nuclear envelope / length), patchy ---
    inside = lab > 0
    r_nuc = np.sqrt(cells.na * cells.nb)
    yy = np.arange(rows, dtype=np.float32)[:, None]
    xx = np.arange(cols, dtype=np.float32)[None, :]
    dy = yy - per_pixel(cells.ny)
    dx = xx - per_pixel(cells.nx)
    c = per_pixel(np.cos(cells.npsi))
    s = per_pixel(np.sin(cells.npsi))
    ia = per_pixel(1.0 / cells.na)
    ib = per_pixel(1.0 / cells.nb)
    u = (dx * c + dy * s) * ia
    v = (dy * c - dx * s) * ib
    rho = np.sqrt(u * u + v * v)
    del u, v, c, s, ia, ib, dy, dx
    beyond = np.maximum(rho - 1.0, 0.0) * per_pixel(r_nuc)
    length = per_pixel(np.maximum(p.xgal_haze_length * cells.R, 1.0))
    length[~inside] = 1.0
    haze = np.exp(-beyond / length)
    r_cell = p.cell_to_nucleus_radius * p.nucleus_diameter_px / 2
    patch = _lowpass_noise(rng, lab.shape, max(1.5, 0.15 * r_cell))
    haze *= np.clip(1.0 + 0.35 * patch, 0.3, None)
    in_nuc = nuc > 0
    haze[in_nuc] *= np.float32(p.xgal_nuclear_haze)
    haze[~inside] = 0.0

    # --- granules: clusters of small granules around the nucleus (Neyman-Scott) ---
    flat, area = _per_cell(lab, n)
    pos = np.flatnonzero(cells.positive & (area[1:] > 0))
    g = np.zeros(lab.shape, dtype=np.float32)
    if pos.size:
        n_gran = rng.poisson(p.xgal_granule_density * area[pos + 1]) + 3
        n_clu = np.maximum(1, np.round(n_gran / p.xgal_granules_per_cluster)).astype(int)
        owner = np.repeat(pos, n_clu)
        lam = np.maximum(p.xgal_perinuclear_length * (cells.R[owner] - r_nuc[owner]), 1.0) / r_nuc[owner]
        rad = 1.0 + rng.gamma(1.6, lam / 1.6)
        polar = rng.random(n) < p.xgal_polarity
        mu = rng.uniform(-np.pi, np.pi, n)
        kappa = rng.uniform(0.5, 3.0, n)
        ang = np.where(polar[owner], rng.vonmises(mu[owner], kappa[owner]),
                       rng.uniform(-np.pi, np.pi, owner.size))
        cp, sp = np.cos(cells.npsi[owner]), np.sin(cells.npsi[owner])
        uu = rad * cells.na[owner] * np.cos(ang)
        vv = rad * cells.nb[owner] * np.sin(ang)
        cy = cells.ny[owner] + uu * sp + vv * cp
        cx = cells.nx[owner] + uu * cp - vv * sp
        # granules around each cluster centre
        per = rng.poisson(p.xgal_granules_per_cluster, owner.size) + 1
        k = np.repeat(np.arange(owner.size), per)
        spread = p.xgal_granule_sigma_px * rng.uniform(1.0, 3.5, owner.size)
        gy = cy[k] + rng.normal(0.0, 1.0, k.size) * spread[k]
        gx = cx[k] + rng.normal(0.0, 1.0, k.size) * spread[k]
        gown = owner[k] + 1
        # a few granules lie above/below the nucleus
        over = rng.random(k.size) < 0.05
        iy = np.clip(np.round(gy).astype(int), 0, rows - 1)
        ix = np.clip(np.round(gx).astype(int), 0, cols - 1)
        ok = (gy >= 0) & (gy < rows) & (gx >= 0) & (gx < cols) & (lab[iy, ix] == gown)
        ok &= (nuc[iy, ix] != gown) | over
        gy, gx = gy[ok], gx[ok]
        amp = rng.lognormal(0.0, 0.5, gy.size).astype(np.float32)
        coarse = rng.random(gy.size) < 0.25  # some larger aggregates
        for sel, sig in ((~coarse, p.xgal_granule_sigma_px), (coarse, 2.0 * p.xgal_granule_sigma_px)):
            if not sel.any():
                continue
            imp = np.zeros((rows + 1, cols + 1), dtype=np.float32)
            fy, fx = gy[sel], gx[sel]
            y_i, x_i = np.floor(fy).astype(int), np.floor(fx).astype(int)
            wy, wx = (fy - y_i).astype(np.float32), (fx - x_i).astype(np.float32)
            a = amp[sel] * (1.0 if sig == p.xgal_granule_sigma_px else 2.5)
            for oy_, ox_, w in ((0, 0, (1 - wy) * (1 - wx)), (1, 0, wy * (1 - wx)),
                                (0, 1, (1 - wy) * wx), (1, 1, wy * wx)):
                np.add.at(imp, (y_i + oy_, x_i + ox_), a * w)
            g += ndi.gaussian_filter(imp[:rows, :cols], sig, mode="constant", truncate=3.0)
        pos_px = np.concatenate([[False], cells.positive])[lab]
        g[~pos_px] = 0.0
        gmax = np.zeros(n + 1, dtype=np.float32)
        np.maximum.at(gmax, flat, g.ravel())
        gmax[gmax <= 0] = 1.0
        g = np.minimum(g / gmax[lab], 1.0)
    w = np.float32(p.xgal_haze_weight)
    pos_px = np.concatenate([[False], cells.positive])[lab]
    conc = np.where(pos_px, w * haze + (1 - w) * g, haze).astype(np.float32)
    cmax = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(cmax, flat, conc.ravel())
    scale = np.where(cmax[1:] > 0, strength / np.maximum(cmax[1:], 1e-12), 0.0)
    conc *= per_pixel(scale)
    conc[~inside] = 0.0
    slices = ndi.find_objects(lab, max_label=n)

    def p90_of(i: int) -> float:
        sl = slices[i]
        vals = conc[sl][lab[sl] == i + 1]
        k = int(0.9 * (vals.size - 1))
        return float(np.partition(vals, k)[k])

    # Faint positives stay clearly apart from negatives: a positive cell's 90th
    # percentile is at least _POSITIVE_MIN_P90 (rescaled up where needed).
    for i in np.flatnonzero(cells.positive):
        if slices[i] is None:
            continue
        q90 = p90_of(i)
        if q90 < _POSITIVE_MIN_P90:
            sl = slices[i]
            own = lab[sl] == i + 1
            conc[sl][own] *= np.float32(_POSITIVE_MIN_P90 / max(q90, 1e-6))

    peak = np.zeros(n)
    sums = np.bincount(flat, weights=conc.ravel(), minlength=n + 1)
    mean = sums[1:] / np.maximum(area[1:], 1)
    p90 = np.zeros(n)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        peak[i] = float(conc[sl][lab[sl] == i + 1].max())
        p90[i] = p90_of(i)
    return conc, peak, mean, p90


def _impulses(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> np.ndarray:
    img = np.zeros(shape, dtype=np.float32)
    ok = (ys >= 0) & (ys < shape[0] - 0.5) & (xs >= 0) & (xs < shape[1] - 0.5)
    iy = np.round(ys[ok]).astype(int)
    ix = np.round(xs[ok]).astype(int)
    np.add.at(img, (iy, ix), np.asarray(w, dtype=np.float32)[ok])
    return img


def _nucleoli(cells: _Cells, nuc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map of 1-3 small Gaussian nucleoli per nucleus (peak ~1)."""
    n = len(cells.R)
    k = rng.integers(1, 4, n)
    owner = np.repeat(np.arange(n), k)
    t = rng.uniform(0, 2 * np.pi, owner.size)
    r = np.sqrt(rng.uniform(0, 1, owner.size)) * 0.55
    cp, sp = np.cos(cells.npsi[owner]), np.sin(cells.npsi[owner])
    u = r * cells.na[owner] * np.cos(t)
    v = r * cells.nb[owner] * np.sin(t)
    ys = cells.ny[owner] + u * sp + v * cp
    xs = cells.nx[owner] + u * cp - v * sp
    sig = max(0.7, 0.09 * float(np.median(cells.na + cells.nb))) if n else 1.0
    amp = rng.uniform(0.6, 1.0, owner.size) * 2 * np.pi * sig**2
    m = ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, amp), sig, mode="constant")
    return np.where(nuc > 0, m, 0).astype(np.float32)


def _free_space(lab: np.ndarray) -> tuple[np.ndarray, int]:
    """Distance (px) to the nearest cell on a coarse grid, and the grid step."""
    step = 4
    return ndi.distance_transform_edt(lab[::step, ::step] == 0) * step, step


def _spot(free: tuple[np.ndarray, int], rng: np.random.Generator, shape: tuple[int, int],
          *, min_free: float, off_cells: bool) -> tuple[float, float, float]:
    """A random position (row, col, free radius there): off cells where possible, or anywhere."""
    dist, step = free
    if off_cells:
        ys, xs = np.nonzero(dist >= min_free)
        if ys.size:
            k = int(rng.integers(ys.size))
            return (ys[k] * step + rng.uniform(0, step), xs[k] * step + rng.uniform(0, step),
                    float(dist[ys[k], xs[k]]) - step)
    return rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), np.inf


def _draw_debris(p: FieldParams, free: tuple[np.ndarray, int], rng: np.random.Generator) -> np.ndarray:
    """Grey-OD map of debris: many small dark specks anywhere, a few larger clumps mostly off cells."""
    out = np.zeros(p.shape, dtype=np.float32)
    for _ in range(p.n_debris):
        large = rng.random() < p.debris_large_fraction
        r = rng.uniform(5, 18) if large else rng.uniform(0.8, 3.5)
        od = rng.uniform(0.1, 0.7)
        cy, cx, room = _spot(free, rng, p.shape, min_free=r * 1.3, off_cells=large and rng.random() < 0.8)
        box = _box(cy, cx, r * 1.6 + 2, p.shape)
        y0, y1, x0, x1 = box
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        th = np.arctan2(dy, dx)
        rr = r * (1 + sum(rng.uniform(0, 0.25) * np.cos(k * th + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)))
        d = np.sqrt(dy * dy + dx * dx)
        blob = 1.0 / (1.0 + np.exp((d - rr) / 0.6))
        if large:
            blob = blob * (0.5 + 0.5 * rng.random(blob.shape).astype(np.float32))
        out[y0:y1, x0:x1] += (od * blob).astype(np.float32)
    return out


def _draw_crystals(p: FieldParams, free: tuple[np.ndarray, int], rng: np.random.Generator) -> np.ndarray:
    """X-gal crystals: thin, dense blue needles in small sprays, in free space; a few over cells."""
    rows, cols = p.shape
    out = np.zeros(p.shape, dtype=np.float32)
    placed = 0
    while placed < p.n_crystals:
        over = rng.random() < p.crystal_over_cells_fraction
        cy, cx, room = _spot(free, rng, p.shape, min_free=8.0, off_cells=not over)
        spray = int(rng.integers(1, 5))
        base = rng.uniform(0, np.pi)
        placed += spray
        if not over and not np.isfinite(room):
            continue  # confluent: no free space for a crystal
        for _ in range(spray):
            length = min(rng.uniform(6, 45) * p.nucleus_diameter_px / 14, room - 2.0)
            if length < 3:
                continue
            ang = base + rng.normal(0, 0.5)
            width = rng.uniform(0.5, 1.2)
            od = rng.uniform(0.4, 1.4)
            ey, ex = cy + length * math.sin(ang), cx + length * math.cos(ang)
            y0, y1 = max(0, int(min(cy, ey) - 3)), min(rows, int(max(cy, ey) + 4))
            x0, x1 = max(0, int(min(cx, ex) - 3)), min(cols, int(max(cx, ex) + 4))
            if y0 >= y1 or x0 >= x1:
                continue
            yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
            xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
            ux, uy = np.float32(math.cos(ang)), np.float32(math.sin(ang))
            t = np.clip(xx * ux + yy * uy, 0, length)
            d2 = (xx - t * ux) ** 2 + (yy - t * uy) ** 2
            out[y0:y1, x0:x1] += (od * np.exp(-d2 / np.float32(2 * width**2))).astype(np.float32)
    return out


def _draw_dust(p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus dust on the optics: faint, soft discs and rings (grey OD)."""
    out = np.zeros(p.shape, dtype=np.float32)
    for _ in range(p.n_dust):
        r = rng.uniform(8, 60)
        cy, cx = rng.uniform(0, p.shape[0]), rng.uniform(0, p.shape[1])
        y0, y1, x0, x1 = _box(cy, cx, 2 * r, p.shape)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        d = np.sqrt(dy * dy + dx * dx)
        od = rng.uniform(0.005, 0.035)
        if rng.random() < 0.5:
            prof = np.exp(-((d - r) ** 2) / np.float32(2 * (0.15 * r) ** 2))  # ring
        else:
            prof = 1.0 / (1.0 + np.exp((d - r) / np.float32(0.2 * r)))  # soft disc
        out[y0:y1, x0:x1] += (od * prof).astype(np.float32)
    return out


# =============================================================================
# Camera
# =============================================================================


def _noisy(signal_e: np.ndarray, read_e: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (Poisson; Gaussian approximation above 30 e-) plus Gaussian read noise."""
    lam = np.maximum(signal_e, 0).astype(np.float32)
    out = lam + np.sqrt(lam + np.float32(read_e**2)) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < 30
    if low.any():
        k = int(low.sum())
        shot = rng.poisson(lam[low]).astype(np.float32)
        out[low] = shot + np.float32(read_e) * rng.standard_normal(k, dtype=np.float32)
    return out


def illumination(params: FieldParams) -> np.ndarray:
    """The lamp as the camera sees it: the noise-free blank field of ``params``.

    Parameters
    ----------
    params : FieldParams

    Returns
    -------
    (M, N, 3) float32 ndarray
        Linear signal as a fraction of full scale (before gamma and
        quantisation) that a clear, dust-free field would give: lamp tint x
        exposure x vignetting. ``rgb / full_scale`` (after undoing gamma) over it
        is the transmittance, so ``-log10`` of that ratio is the optical density.

    Examples
    --------
    >>> import numpy as np
    >>> p = random_params(np.random.default_rng(0), shape=(64, 80))
    >>> lamp = illumination(p)
    >>> lamp.shape, bool(abs(float(np.median(lamp.max(axis=-1))) - p.background_level) < 0.05)
    ((64, 80, 3), True)
    """
    rows, cols = params.shape
    cy, cx = params.vignetting_centre[0] * rows, params.vignetting_centre[1] * cols
    yy = (np.arange(rows, dtype=np.float32)[:, None] - np.float32(cy)) ** 2
    xx = (np.arange(cols, dtype=np.float32)[None, :] - np.float32(cx)) ** 2
    far2 = max(max(cy, rows - cy) ** 2 + max(cx, cols - cx) ** 2, 1.0)
    r2 = (yy + xx) / np.float32(far2)
    lamp = np.asarray(params.lamp_rgb, dtype=np.float64)
    chan = np.asarray(params.vignetting_rgb, dtype=np.float64)
    ref = int(np.argmax(lamp))
    med_vig = 1.0 - params.vignetting * chan[ref] * float(np.median(r2))
    exposure = params.background_level / (lamp[ref] * med_vig)
    out = np.empty((rows, cols, 3), dtype=np.float32)
    for ch in range(3):
        out[..., ch] = (1.0 - np.float32(params.vignetting * chan[ch]) * r2) * np.float32(exposure * lamp[ch])
    return out


def _camera(transmitted: np.ndarray, p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """Lamp x vignetting x transmittance -> electrons -> noise -> gamma -> integers (-> JPEG)."""
    lamp = illumination(p)
    full = 255 if p.bit_depth == 8 else 4095
    out = np.empty(transmitted.shape, dtype=np.uint8 if p.bit_depth == 8 else np.uint16)
    for ch in range(3):
        e = transmitted[..., ch] * lamp[..., ch] * np.float32(p.full_well_e)
        x = np.clip(_noisy(e, p.read_noise_e, rng) / np.float32(p.full_well_e), 0.0, 1.0)
        if p.srgb_camera:
            x = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** np.float32(1 / 2.4) - 0.055).astype(np.float32)
        elif p.gamma != 1.0:
            x = x ** np.float32(p.gamma)
        out[..., ch] = np.round(x * np.float32(full))
    if p.file_format == "jpg":
        import imageio.v3 as iio

        data = iio.imwrite("<bytes>", out, extension=".jpg", quality=int(p.jpeg_quality or 90))
        out = np.asarray(iio.imread(data, extension=".jpg"), dtype=np.uint8)
    return out


def _render_dapi(cells: _Cells, ras: _Raster, chromatin: np.ndarray, p: FieldParams,
                 rng: np.random.Generator) -> np.ndarray:
    """DAPI/Hoechst image: fluorescence ∝ DNA, blurred, on offset + background, with noise."""
    nuc, rho, lab = ras.nuc, ras.rho, ras.lab
    n = len(cells.R)
    bright = rng.lognormal(0.0, 0.22, n)
    bright *= np.where(rng.random(n) < 0.15, rng.uniform(1.5, 1.9, n), 1.0)  # G2 nuclei
    bright *= np.where(cells.enlarged, rng.uniform(0.55, 0.9, n), 1.0)  # big flat nuclei: DNA spread out
    b = np.concatenate([[0.0], bright]).astype(np.float32)
    inside = nuc > 0
    dome = np.where(inside, 0.55 + 0.45 * np.sqrt(np.clip(1 - np.minimum(rho, 1) ** 2, 0, 1)), 0)
    tex = np.clip(1 + 1.5 * p.chromatin_texture * chromatin, 0.3, None)
    sig = (b[nuc] * dome * tex).astype(np.float32)
    if rng.random() < 0.4 and n:  # bright chromocentres (mouse cells)
        k = rng.integers(0, 6, n)
        owner = np.repeat(np.arange(n), k)
        t = rng.uniform(0, 2 * np.pi, owner.size)
        r = np.sqrt(rng.uniform(0, 1, owner.size)) * 0.8
        ys = cells.ny[owner] + r * cells.nb[owner] * np.sin(t)
        xs = cells.nx[owner] + r * cells.na[owner] * np.cos(t)
        spots = ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, np.full(owner.size, 6.0)), 0.9)
        sig += np.where(inside, spots, 0) * b[nuc]
    n_frag = int(rng.integers(0, 2 + n // 40))  # micronuclei / apoptotic fragments (not cells)
    if n_frag:
        ys = rng.uniform(0, p.shape[0], n_frag)
        xs = rng.uniform(0, p.shape[1], n_frag)
        sig += ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, rng.uniform(8, 20, n_frag)), 1.2)
    sig = ndi.gaussian_filter(sig, p.dapi_blur_sigma_px, truncate=3.0)
    if p.dapi_shift_px != (0.0, 0.0):
        sig = ndi.shift(sig, p.dapi_shift_px, order=1, mode="nearest")
    cyto = (lab > 0).astype(np.float32) * 0.5  # cytoplasmic autofluorescence
    bg = np.float32(p.dapi_background) * (0.7 + 0.6 * _smooth_field(rng, p.shape, 2.0) + cyto)
    electrons = (sig + bg) * np.float32(p.dapi_peak / p.dapi_gain)
    counts = _noisy(electrons, 2.0, rng) * np.float32(p.dapi_gain) + np.float32(p.dapi_offset)
    return np.clip(np.round(counts), 0, p.dapi_full_scale).astype(np.uint16)


# =============================================================================
# Rendering
# =============================================================================


def render_field(params: FieldParams, rng: np.random.Generator) -> SynthField:
    """Render one synthetic SA-β-gal field and its ground truth.

    Parameters
    ----------
    params : FieldParams
        Field parameters, usually from :func:`random_params`.
    rng : numpy.random.Generator
        Source of every per-cell and per-pixel random draw. The same parameters
        and an identically seeded generator give identical outputs; datasets use
        ``np.random.default_rng(params.seed)``.

    Returns
    -------
    SynthField
        ``rgb`` (M, N, 3) uint8/uint16, ``nuclear`` (M, N) uint16 or None,
        ``cell_labels`` and ``nucleus_labels`` (M, N) uint32 with ids 1..n, and
        ``truth`` with one row per cell (:data:`TRUTH_COLUMNS`). X-gal truth
        values are concentrations in OD units along the unit X-gal vector,
        before blur and noise.

    Raises
    ------
    TypeError
        If ``params`` is not a :class:`FieldParams`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> f = render_field(random_params(rng, setup="counterstain", shape=(128, 160)), rng)
    >>> f.rgb.shape[:2] == f.cell_labels.shape == (128, 160)
    True
    >>> len(f.truth) == int(f.cell_labels.max())
    True
    """
    if not isinstance(params, FieldParams):
        raise TypeError(f"params must be a FieldParams, got {type(params).__name__}")
    p = params
    shape = p.shape
    cells, ras = _build_geometry(p, rng)
    lab, nuc = ras.lab, ras.nuc
    n = len(cells.R)

    # --- stain concentration maps (OD along unit stain vectors) ---
    xgal_cells, peak, mean, p90 = _xgal_cells(cells, ras, p, rng)
    free = _free_space(lab)
    xgal = xgal_cells + _draw_crystals(p, free, rng)
    if p.xgal_background_od > 0:
        xgal += np.float32(p.xgal_background_od) * _smooth_field(rng, shape, 4.0)

    chromatin = _lowpass_noise(rng, shape, max(0.6, 0.07 * p.nucleus_diameter_px))
    inside_nuc = nuc > 0
    ndome = np.where(inside_nuc, 0.5 + 0.5 * np.sqrt(np.clip(1 - np.minimum(ras.rho, 1) ** 2, 0, 1)), 0)
    ndome = ndome.astype(np.float32) * np.clip(1 + np.float32(p.chromatin_texture) * chromatin, 0.2, None)
    nucleoli = _nucleoli(cells, nuc, rng)

    t = np.concatenate([[0.0], cells.thickness]).astype(np.float32)[lab]
    profile = np.where(lab > 0, 0.3 + 0.7 * np.exp(-np.square(np.minimum(ras.q, 10) / np.float32(0.6))), 0)
    body = (t * profile).astype(np.float32)  # relative cytoplasm thickness

    from skimage.segmentation import find_boundaries

    rim = ndi.gaussian_filter(find_boundaries(lab, mode="inner").astype(np.float32), 0.7)

    grey = (np.float32(p.body_od) * body + np.float32(p.edge_od) * rim
            + np.float32(p.nucleus_extra_od) * ndome + np.float32(p.nucleolus_od) * nucleoli)
    debris = _draw_debris(p, free, rng)

    od = np.empty(shape + (3,), dtype=np.float32)
    vx = np.asarray(p.xgal_vector, dtype=np.float32)
    vs = np.asarray(p.scatter_vector, dtype=np.float32)
    vd = np.asarray(p.debris_vector, dtype=np.float32)
    if p.counterstain_vector is not None:
        cell_cs = rng.lognormal(0.0, 0.2, n)
        cs_n = np.concatenate([[0.0], cell_cs]).astype(np.float32)[nuc]
        cs = (np.float32(p.counterstain_nucleus_od) * (cs_n * ndome + 0.5 * nucleoli)
              + np.float32(p.counterstain_cytoplasm_od) * body)
        vc = np.asarray(p.counterstain_vector, dtype=np.float32)
    for ch in range(3):
        od[..., ch] = xgal * vx[ch] + grey * vs[ch] + debris * vd[ch]
        if p.counterstain_vector is not None:
            od[..., ch] += cs * vc[ch]

    # --- optics: defocus blurs the transmitted light; dust sits on the optics ---
    trans = np.exp(np.float32(-math.log(10)) * od, out=od)
    dust = np.exp(np.float32(-math.log(10)) * _draw_dust(p, rng))
    for ch in range(3):
        trans[..., ch] = ndi.gaussian_filter(trans[..., ch], p.blur_sigma_px, truncate=3.0) * dust
    rgb = _camera(trans, p, rng)

    nuclear = _render_dapi(cells, ras, chromatin, p, rng) if p.setup == "fluorescence" else None

    truth = _truth_table(cells, lab, nuc, peak, mean, p90)
    return SynthField(rgb=rgb, nuclear=nuclear, cell_labels=lab.astype(np.uint32),
                      nucleus_labels=nuc.astype(np.uint32), truth=truth, params=p)


def _truth_table(cells: _Cells, lab: np.ndarray, nuc: np.ndarray, peak: np.ndarray,
                 mean: np.ndarray, p90: np.ndarray) -> pd.DataFrame:
    n = len(cells.R)
    rows, cols = lab.shape
    ids = np.arange(1, n + 1)

    def centroids(lbl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = lbl.ravel()
        area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
        yy, xx = np.divmod(np.arange(flat.size), cols)
        sy = np.bincount(flat, weights=yy, minlength=n + 1)[1:]
        sx = np.bincount(flat, weights=xx, minlength=n + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            return area, sy / area, sx / area

    area, cy, cx = centroids(lab)
    narea, ny, nx = centroids(nuc)
    pos = cells.positive.astype(bool)
    enl = cells.enlarged.astype(bool)
    return pd.DataFrame({
        "cell_id": ids.astype(np.int64),
        "centroid_y": cy,
        "centroid_x": cx,
        "area_px": area.astype(np.int64),
        "nucleus_area_px": narea.astype(np.int64),
        "nucleus_centroid_y": ny,
        "nucleus_centroid_x": nx,
        "sabgal_positive": pos,
        "enlarged": enl,
        "senescent": pos & enl,
        "touches_border": _border_ids(lab, n),
        "xgal_od_peak": peak,
        "xgal_od_mean_true": mean,
        "xgal_od_p90_true": p90,
        "thickness": cells.thickness.astype(float),
    }, columns=list(TRUTH_COLUMNS))


# =============================================================================
# Files
# =============================================================================


def write_field(
    field: SynthField,
    out_dir: str | os.PathLike[str],
    stem: str,
    *,
    truth_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Write a rendered field: image, DAPI companion, true labels and truth table.

    Files: ``<stem>.<tif|png|jpg>`` (per ``params.file_format``; JPEG at
    ``params.jpeg_quality``), ``<stem>_dapi.tif`` (fluorescence set-up only),
    and in ``truth_dir`` (default: ``out_dir``) ``<stem>_cells_true.tif``,
    ``<stem>_nuclei_true.tif`` and ``<stem>_truth.csv``. Every file is written
    atomically.

    Parameters
    ----------
    field : SynthField
    out_dir : path-like
        Folder for the image and its companion (created if missing).
    stem : str
        File name stem.
    truth_dir : path-like, optional
        Folder for labels and truth (created if missing); keep it apart from
        ``out_dir`` when a pipeline will scan ``out_dir`` for images.

    Returns
    -------
    dict of str to str
        Paths written, keys ``image``, ``cells_true``, ``nuclei_true``,
        ``truth`` and (fluorescence) ``dapi``.

    Raises
    ------
    ValueError
        If ``stem`` is empty or contains a path separator.
    """
    from sabgal.io import atomic_path, write_labels, write_table

    if not stem or "/" in stem or os.sep in stem:
        raise ValueError(f"stem must be a plain file name stem, got {stem!r}")
    out = Path(out_dir)
    tdir = Path(truth_dir) if truth_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    fmt = field.params.file_format
    paths: dict[str, str] = {}
    img_path = out / f"{stem}.{fmt}"
    with atomic_path(img_path) as tmp:
        if fmt == "tif":
            import tifffile

            tifffile.imwrite(tmp, field.rgb, photometric="rgb", compression="zlib", predictor=True)
        else:
            import imageio.v3 as iio

            kw: dict[str, Any] = {"quality": int(field.params.jpeg_quality or 90)} if fmt == "jpg" else {}
            iio.imwrite(tmp, field.rgb, extension=f".{fmt}", **kw)
    paths["image"] = str(img_path)
    if field.nuclear is not None:
        import tifffile

        dapi_path = out / f"{stem}_dapi.tif"
        with atomic_path(dapi_path) as tmp:
            tifffile.imwrite(tmp, field.nuclear, photometric="minisblack", compression="zlib", predictor=True)
        paths["dapi"] = str(dapi_path)
    paths["cells_true"] = str(tdir / f"{stem}_cells_true.tif")
    write_labels(paths["cells_true"], field.cell_labels)
    paths["nuclei_true"] = str(tdir / f"{stem}_nuclei_true.tif")
    write_labels(paths["nuclei_true"], field.nucleus_labels)
    paths["truth"] = str(tdir / f"{stem}_truth.csv")
    write_table(paths["truth"], field.truth)
    return paths


MANIFEST_COLUMNS: tuple[str, ...] = (
    "stem", "image", "dapi", "cells_true", "nuclei_true", "truth", "setup", "counterstain",
    "file_format", "bit_depth", "n_cells", "fraction_positive", "fraction_enlarged",
    "fraction_senescent", "params",
)


def _fraction(flags: pd.Series) -> float:
    return float(flags.mean()) if len(flags) else float("nan")


def _with_grey_angle(params: FieldParams, angle_range: tuple[float, float]) -> FieldParams:
    """``params`` with its X-gal turned towards (or away from) neutral grey,
    its hue kept, to an angle from grey drawn in ``angle_range`` (degrees;
    from a generator seeded by the field, so the rest of the field is
    unchanged)."""
    lo, hi = (float(a) for a in angle_range)
    if not 0 < lo <= hi < 60:
        raise ValueError(f"X-gal angle from grey must satisfy 0 < lo <= hi < 60 degrees, got {angle_range}")
    grey = np.ones(3) / np.sqrt(3)
    v = np.asarray(params.xgal_vector, dtype=np.float64)
    hue = v - (v @ grey) * grey
    hue /= np.linalg.norm(hue)
    theta = np.radians(np.random.default_rng([params.seed, 7]).uniform(lo, hi))
    return dataclasses.replace(params, xgal_vector=_unit(np.cos(theta) * grey + np.sin(theta) * hue))


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    shape: tuple[int, int] = REFERENCE_SHAPE,
    setups: Sequence[str] = SETUPS,
    formats: Sequence[str] = FORMATS,
    truth_dir: str | None = "truth",
    negative: bool = False,
    xgal_grey_angle_deg: tuple[float, float] | None = None,
    camera_encoding: str | float | None = None,
    glass_level: float | None = None,
) -> pd.DataFrame:
    """Render and write ``n`` fields, cycling through ``setups``; write ``manifest.csv``.

    Image ``i`` is drawn from ``np.random.default_rng([seed, i])`` (so it does
    not depend on ``n``) and rendered with ``default_rng(params.seed)``.

    Parameters
    ----------
    out_dir : path-like
        Folder for images (and their ``_dapi`` companions) and ``manifest.csv``.
    n : int
        Number of fields (>= 0).
    seed : int
        Dataset seed.
    shape : (int, int)
        Image size (rows, cols).
    setups : sequence of str
        Set-ups to cycle through (each of :data:`SETUPS`).
    formats : sequence of {"tif", "png", "jpg"}
        Allowed file formats.
    truth_dir : str or None
        Sub-folder of ``out_dir`` for labels and truth tables (None: ``out_dir``
        itself), so that ``out_dir`` holds only pipeline inputs.
    negative : bool
        Negative controls: the same draws with no cell stained (no senescent
        or positive-only cells; unstained cells keep their faint haze,
        crystals and debris stay).
    xgal_grey_angle_deg : (float, float), optional
        Pale X-gal: each field's X-gal keeps its drawn hue but lies this many
        degrees from neutral grey (drawn uniformly in the range; the default
        draws lie 5-27 degrees away, one in twenty under 8). A navy or pale teal precipitate close
        to the grey of the cells' own density is the hardest colour to unmix.
    camera_encoding : "srgb" or float, optional
        Every field's RGB camera encodes light for display before quantisation
        instead of the drawn near-linear response: with the sRGB tone curve
        (``"srgb"``, as consumer cameras and most microscope software's
        exports do) or as ``light ** (1 / G)`` (a number G). The nuclear
        image stays linear.
    glass_level : float, optional
        The brightest channel's glass (the clear field at the median
        vignetting) at this fraction of full scale in every field instead of
        the drawn 0.55-0.97. Above 1 the camera is overexposed: the glass,
        and the faintest cytoplasm, clip at full scale in that channel (in
        every channel under a near-white lamp), as where the exposure was
        set to make the background white.

    Returns
    -------
    pandas.DataFrame
        The manifest: one row per field with :data:`MANIFEST_COLUMNS` (paths
        relative to ``out_dir``; ``params`` as JSON).

    Raises
    ------
    ValueError
        On ``n < 0``, an empty or unknown set-up list, or bad formats.
    """
    from sabgal.io import write_table

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if glass_level is not None and not 0.2 <= glass_level <= 1.5:
        raise ValueError(f"glass_level must be in [0.2, 1.5], got {glass_level}")
    setups = tuple(setups)
    if not setups or any(s not in SETUPS for s in setups):
        raise ValueError(f"setups must be a non-empty subset of {list(SETUPS)}, got {list(setups)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tdir = out / truth_dir if truth_dir else out
    rows = []
    for i in range(n):
        setup = setups[i % len(setups)]
        params = random_params(np.random.default_rng([seed, i]), setup=setup, shape=shape, formats=formats)
        if negative:
            params = dataclasses.replace(params, senescent_fraction=0.0, positive_only_fraction=0.0)
        if xgal_grey_angle_deg is not None:
            params = _with_grey_angle(params, xgal_grey_angle_deg)
        if camera_encoding == "srgb":
            params = dataclasses.replace(params, srgb_camera=True)
        elif camera_encoding is not None:
            params = dataclasses.replace(params, gamma=1.0 / float(camera_encoding))
        if glass_level is not None:
            params = dataclasses.replace(params, background_level=float(glass_level))
        field = render_field(params, np.random.default_rng(params.seed))
        stem = f"synth_{seed}_{i:04d}_{setup}"
        paths = write_field(field, out, stem, truth_dir=tdir)
        rel = {k: os.path.relpath(v, out) for k, v in paths.items()}
        t = field.truth
        rows.append({
            "stem": stem,
            "image": rel["image"],
            "dapi": rel.get("dapi", ""),
            "cells_true": rel["cells_true"],
            "nuclei_true": rel["nuclei_true"],
            "truth": rel["truth"],
            "setup": setup,
            "counterstain": params.counterstain,
            "file_format": params.file_format,
            "bit_depth": params.bit_depth,
            "n_cells": len(t),
            "fraction_positive": _fraction(t["sabgal_positive"]),
            "fraction_enlarged": _fraction(t["enlarged"]),
            "fraction_senescent": _fraction(t["senescent"]),
            "params": json.dumps(params.to_dict()),
        })
        logger.info("wrote %s (%s, %d cells)", stem, setup, len(t))
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_table(out / "manifest.csv", manifest)
    return manifest


def build_synth_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``sabgal synth`` (added to ``parser`` when given)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="sabgal synth",
            description="Render synthetic SA-β-gal fields with exact ground truth.")
    parser.add_argument("out", help="output folder (images; labels and truth go to OUT/truth)")
    g = parser.add_argument_group("dataset")
    g.add_argument("--n", type=int, default=12, help="number of fields (default: 12)")
    g.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    g.add_argument("--shape", type=int, nargs=2, default=list(REFERENCE_SHAPE), metavar=("ROWS", "COLS"),
                   help="image size (default: 1024 1360)")
    g.add_argument("--setup", default="mixed", choices=("mixed", *SETUPS),
                   help="imaging set-up; 'mixed' cycles through all three (default)")
    g.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                   help="allowed file formats (default: tif png jpg)")
    g.add_argument("--negative", action="store_true",
                   help="negative controls: the same fields with no cell stained")
    g.add_argument("--xgal-grey-angle", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="pale X-gal: its hue kept, LO-HI degrees from neutral grey (navy / pale teal)")
    g.add_argument("--camera-encoding", default=None, metavar="ENC",
                   help="the RGB camera encodes light for display: 'srgb' (the sRGB tone curve, as "
                        "consumer cameras and display exports) or a number G (light ** (1/G)); "
                        "default: the drawn near-linear response")
    g.add_argument("--glass-level", type=float, default=None, metavar="L",
                   help="the brightest channel's glass at L x full scale (default: drawn 0.55-0.97; "
                        "above 1: overexposed, the glass clipped)")
    return parser


def _camera_encoding(text: str | None) -> str | float | None:
    """``--camera-encoding``: None, ``"srgb"``, or a power G (1-3)."""
    if text is None or text == "srgb":
        return text
    try:
        g = float(text)
    except ValueError:
        raise ValueError(f"--camera-encoding must be 'srgb' or a number in [1, 3], got {text!r}") from None
    if not 1.0 <= g <= 3.0:
        raise ValueError(f"--camera-encoding must be 'srgb' or a number in [1, 3], got {text!r}")
    return g


def synth_main(argv: list[str] | None = None) -> int:
    """Command-line front end: ``sabgal synth OUT --n 12 --seed 0 --shape 1024 1360 --setup mixed``.

    Returns
    -------
    int
        0 on success, 2 on invalid arguments.
    """
    args = build_synth_parser().parse_args(argv)
    setups = SETUPS if args.setup == "mixed" else (args.setup,)
    try:
        manifest = generate_dataset(args.out, n=args.n, seed=args.seed, shape=tuple(args.shape),
                                    setups=setups, formats=tuple(args.formats), negative=args.negative,
                                    xgal_grey_angle_deg=args.xgal_grey_angle,
                                    camera_encoding=_camera_encoding(args.camera_encoding),
                                    glass_level=args.glass_level)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("wrote %d fields to %s", len(manifest), args.out)
    return 0
