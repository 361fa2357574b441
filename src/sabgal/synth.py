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
X-gal peak OD ≥ 0.15 while negative cells stay ≤ 0.03, and enlarged cells are at
least ~2x the median area of normal cells while normal cells stay below ~1.5x
(cells cut by the image border excepted, and flagged).

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
import numpy.typing as npt
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
    "random_params",
    "render_field",
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
    setup: str | None = None,
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
    xg = (rng.uniform(0.66, 0.80), rng.uniform(0.30, 0.68), rng.uniform(0.28, 0.55))
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
        shape_irregularity=float(rng.uniform(0.03, 0.16)),
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
        xgal_haze_weight=float(rng.uniform(0.2, 0.5)),
        xgal_haze_length=float(rng.uniform(0.25, 0.7)),
        xgal_nuclear_haze=float(rng.uniform(0.1, 0.35)),
        xgal_granule_sigma_px=float(np.clip(d_nuc * rng.uniform(0.05, 0.1), 0.6, 2.0)),
        xgal_granule_density=float(rng.uniform(0.02, 0.08)),
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
        n_crystals=int(0 if rng.random() < 0.4 else rng.integers(1, max(2, round(25 * area_factor)) + 1)),
        crystal_over_cells_fraction=float(rng.uniform(0.0, 0.1)),
        n_dust=int(rng.integers(0, 6)),
        blur_sigma_px=float(rng.uniform(0.5, 2.0)),
        lamp_tint=tint,
        lamp_rgb=(float(lamp[0]), float(lamp[1]), float(lamp[2])),
        background_level=float(level),
        vignetting=float(rng.uniform(0.0, 0.35)),
        vignetting_centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
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

_N_HARM = 4  # harmonics k = 2..5


@dataclass
class _Cells:
    """Per-cell arrays (length n), mutable while a field is being built."""

    cy: np.ndarray  # star centre (row, col), float
    cx: np.ndarray
    R: np.ndarray  # area-equivalent radius of the nominal shape
    aspect: np.ndarray
    psi: np.ndarray  # long-axis orientation (radians, from +col towards +row)
    amp: np.ndarray  # (n, 4) harmonic amplitudes
    phase: np.ndarray  # (n, 4)
    ny: np.ndarray  # nucleus centre
    nx: np.ndarray
    na: np.ndarray  # nucleus semi-axes
    nb: np.ndarray
    npsi: np.ndarray
    positive: np.ndarray
    enlarged: np.ndarray
    thickness: np.ndarray

    def take(self, idx: np.ndarray) -> _Cells:
        return _Cells(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def _modulation(c1: np.ndarray, s1: np.ndarray, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """1 + Σ_k a_k cos(kθ + φ_k) for k = 2..5, from cos θ and sin θ (Chebyshev recurrence)."""
    ck, sk = c1, s1
    m = np.ones_like(c1)
    for j in range(_N_HARM):  # k = j + 2
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        m = m + amp[..., j] * (ck * np.cos(phase[..., j]) - sk * np.sin(phase[..., j]))
    return m


def _radius(cells: _Cells, theta: np.ndarray) -> np.ndarray:
    """r(θ) of every cell at angles ``theta`` (absolute), shape (n, len(theta))."""
    t = theta[None, :] - cells.psi[:, None]
    c1, s1 = np.cos(t), np.sin(t)
    A = cells.aspect[:, None]
    m = _modulation(c1, s1, cells.amp[:, None, :], cells.phase[:, None, :])
    return cells.R[:, None] * m / np.sqrt(c1 * c1 / A + s1 * s1 * A)


def _q_box(cells: _Cells, i: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Normalised distance d / r(θ) of offsets (dy, dx) from cell i's centre."""
    cp, sp = math.cos(cells.psi[i]), math.sin(cells.psi[i])
    u = dx * cp + dy * sp
    v = dy * cp - dx * sp
    A = float(cells.aspect[i])
    d = np.sqrt(u * u + v * v) + np.float32(1e-6)
    c1, s1 = u / d, v / d
    m = _modulation(c1, s1, cells.amp[i].astype(np.float32), cells.phase[i].astype(np.float32))
    return (np.sqrt(u * u / A + v * v * A) / (np.float32(cells.R[i]) * m)).astype(np.float32)


def _nucleus_rho(cells: _Cells, i: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Elliptical radius of offsets from nucleus i's centre (1 on its outline)."""
    cp, sp = math.cos(cells.npsi[i]), math.sin(cells.npsi[i])
    u = dx * cp + dy * sp
    v = dy * cp - dx * sp
    return np.sqrt((u / np.float32(cells.na[i])) ** 2 + (v / np.float32(cells.nb[i])) ** 2)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells_across: float) -> np.ndarray:
    """Smooth random field in [0, 1] varying over ~shape/cells_across (bicubic upsampled)."""
    gy = max(2, int(math.ceil(shape[0] / max(shape) * cells_across)) + 2)
    gx = max(2, int(math.ceil(shape[1] / max(shape) * cells_across)) + 2)
    coarse = rng.random((gy, gx))
    f = ndi.zoom(coarse, (shape[0] / gy, shape[1] / gx), order=3, mode="nearest", grid_mode=True)
    f = f[: shape[0], : shape[1]]
    if f.shape != tuple(shape):
        f = np.pad(f, ((0, shape[0] - f.shape[0]), (0, shape[1] - f.shape[1])), mode="edge")
    lo, hi = float(f.min()), float(f.max())
    return ((f - lo) / (hi - lo + 1e-12)).astype(np.float32)


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
    amp = amp * np.where(enlarged, 1.4, 1.0)[:, None]
    total = amp.sum(axis=1, keepdims=True)
    amp = np.where(total > 0.4, amp * 0.4 / np.maximum(total, 1e-9), amp)
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
    return _Cells(cy=z.copy(), cx=z.copy(), R=R, aspect=aspect, psi=z.copy(), amp=amp, phase=phase,
                  ny=z.copy(), nx=z.copy(), na=na, nb=nb, npsi=z.copy(), positive=positive,
                  enlarged=enlarged, thickness=thickness)


_THETA = np.linspace(0, 2 * np.pi, 96, endpoint=False)


def _fit_nuclei(cells: _Cells, p: FieldParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orient nuclei, draw their offsets; shrink shapes until each nucleus fits.

    Returns (qn, en, rmax): the nucleus's largest normalised distance in its own
    cell, its largest distance from the cell centre, and the cell's max radius.
    """
    n = len(cells.R)
    cells.npsi = cells.psi + rng.normal(0.0, 0.25, n)
    off_dir = rng.uniform(0, 2 * np.pi, n)
    off_frac = rng.uniform(0.0, 1.0, n) * p.nucleus_offset
    ct, st = np.cos(_THETA), np.sin(_THETA)
    for it in range(12):
        r = _radius(cells, _THETA)
        rmin = r.min(axis=1)
        free = np.maximum(rmin - cells.na, 0.0)
        oy = off_frac * free * np.sin(off_dir)
        ox = off_frac * free * np.cos(off_dir)
        # nucleus outline points relative to the cell centre
        cp, sp = np.cos(cells.npsi)[:, None], np.sin(cells.npsi)[:, None]
        px = ox[:, None] + cells.na[:, None] * ct * cp - cells.nb[:, None] * st * sp
        py = oy[:, None] + cells.na[:, None] * ct * sp + cells.nb[:, None] * st * cp
        ang = np.arctan2(py, px)
        dist = np.hypot(py, px)
        # r(θ) at the outline angles, by interpolation on the θ grid
        idx = (np.mod(ang, 2 * np.pi) / (2 * np.pi) * len(_THETA)).astype(int) % len(_THETA)
        r_at = np.take_along_axis(r, idx, axis=1)
        qn = (dist / r_at).max(axis=1)
        bad = qn > 0.7
        if not bad.any():
            break
        cells.aspect = np.where(bad, 1.0 + 0.75 * (cells.aspect - 1.0), cells.aspect)
        cells.amp = np.where(bad[:, None], cells.amp * 0.75, cells.amp)
        off_frac = np.where(bad, off_frac * 0.6, off_frac)
        if it > 5:
            shrink = np.where(bad, 0.93, 1.0)
            cells.na, cells.nb = cells.na * shrink, cells.nb * shrink
    cells.ny, cells.nx = oy, ox  # offsets for now; absolute after placement
    rmax = _radius(cells, _THETA).max(axis=1) * 1.02
    return qn * 1.05, dist.max(axis=1), rmax


def _place(cells: _Cells, p: FieldParams, rng: np.random.Generator) -> _Cells:
    """Random sequential adsorption of cell centres with a minimum spacing.

    Spacing between cells i, j is at least ``packing * (R_i + R_j)`` and large
    enough that neither cell's partition can take pixels of the other's nucleus.
    Cells that do not fit after a few hundred tries are dropped.
    """
    rows, cols = p.shape
    n = len(cells.R)
    # orientations: a blend of a smooth director field and random angles
    director = _smooth_field(rng, (64, 64), 3.0) * np.pi * 2
    qn, en, rmax = None, None, None
    order = np.argsort(-cells.R, kind="stable")  # big cells first
    placed: list[int] = []
    py = np.empty(n)
    px = np.empty(n)
    rand_psi = rng.uniform(0, np.pi, n)
    # positions first (psi needs the position); draw candidates per cell
    cand_all = rng.random((n, 4, 64, 2))
    cells_psi = np.zeros(n)
    # first pass: psi from candidate independent of position would ignore alignment,
    # so the orientation is set from the candidate's location below.
    ok_mask = np.zeros(n, dtype=bool)
    # nucleus fit depends on psi; fit with psi = random first, then re-orient
    # aligned cells (fit is rotation-invariant apart from the nucleus offset).
    cells.psi = rand_psi
    qn, en, rmax = _fit_nuclei(cells, p, rng)
    oy, ox = cells.ny.copy(), cells.nx.copy()
    for i in order:
        best = None
        for attempt in range(4):
            c = cand_all[i, attempt]
            ny = c[:, 0] * (rows - 1)
            nx = c[:, 1] * (cols - 1)
            if p.alignment > 0:
                d = director[(ny / rows * 63).astype(int), (nx / cols * 63).astype(int)]
                psi_c = (p.alignment * d + (1 - p.alignment) * rand_psi[i]) % np.pi
            else:
                psi_c = np.full(64, rand_psi[i])
            rot = psi_c - rand_psi[i]  # rotating the whole cell rotates the nucleus offset too
            cy = ny - (oy[i] * np.cos(rot) + ox[i] * np.sin(rot))
            cx = nx - (ox[i] * np.cos(rot) - oy[i] * np.sin(rot))
            if placed:
                j = np.asarray(placed)
                D = np.hypot(cy[:, None] - py[j][None, :], cx[:, None] - px[j][None, :])
                need = np.maximum(
                    p.packing * (cells.R[i] + cells.R[j]),
                    np.maximum(en[i] + qn[i] * rmax[j], en[j] + qn[j] * rmax[i]),
                )[None, :]
                good = np.flatnonzero((D > need).all(axis=1))
            else:
                good = np.array([0])
            if good.size:
                k = int(good[0])
                best = (cy[k], cx[k], ny[k], nx[k], psi_c[k])
                break
        if best is None:
            continue
        py[i], px[i], ny_i, nx_i, psi_i = best
        cells_psi[i] = psi_i
        cells.ny[i], cells.nx[i] = ny_i, nx_i
        ok_mask[i] = True
        placed.append(int(i))
    rot = cells_psi - rand_psi
    cells.psi = cells_psi
    cells.npsi = cells.npsi + rot
    cells.cy, cells.cx = py, px
    keep = np.flatnonzero(ok_mask)
    if len(keep) < n:
        logger.debug("placed %d of %d cells", len(keep), n)
    return cells.take(keep)


def _partition(cells: _Cells, shape: tuple[int, int], reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Assign pixels to cells by smallest d / r(θ) (below ``reach``).

    Returns (labels (1-based, int32), q of the owning cell, nucleus labels,
    nucleus elliptical radius map).
    """
    rows, cols = shape
    n = len(cells.R)
    best = np.full(shape, np.inf, dtype=np.float32)
    second = np.full(shape, np.inf, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.int32)
    lab2 = np.zeros(shape, dtype=np.int32)
    rmax = _radius(cells, _THETA).max(axis=1) * 1.02 * reach + 1.5
    for i in range(n):
        y0 = max(0, int(cells.cy[i] - rmax[i]))
        y1 = min(rows, int(cells.cy[i] + rmax[i]) + 2)
        x0 = max(0, int(cells.cx[i] - rmax[i]))
        x1 = min(cols, int(cells.cx[i] + rmax[i]) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cells.cy[i]))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cells.cx[i]))[None, :]
        dy, dx = np.broadcast_arrays(dy, dx)
        q = _q_box(cells, i, dy, dx)
        sl = (slice(y0, y1), slice(x0, x1))
        bq, bl, sq, sl2 = best[sl], lab[sl], second[sl], lab2[sl]
        valid = q < reach
        win = valid & (q < bq)
        runner = valid & ~win & (q < sq)
        sq[win] = bq[win]
        sl2[win] = bl[win]
        sq[runner] = q[runner]
        sl2[runner] = i + 1
        bq[win] = q[win]
        bl[win] = i + 1

    # Keep only the connected piece of each cell that holds its nucleus; give
    # stray fragments to the runner-up cell, else to the background.
    from skimage.measure import label as cc_label

    for attempt in range(2):
        comp = cc_label(lab, connectivity=1, background=0)
        iy = np.clip(np.round(cells.ny).astype(int), 0, rows - 1)
        ix = np.clip(np.round(cells.nx).astype(int), 0, cols - 1)
        main = comp[iy, ix]
        main = main[lab[iy, ix] == np.arange(1, n + 1)]
        is_main = np.zeros(int(comp.max()) + 1, dtype=bool)
        is_main[main] = True
        is_main[0] = True
        orphan = ~is_main[comp]
        if not orphan.any():
            break
        if attempt == 0:
            lab[orphan] = lab2[orphan]
            best[orphan] = second[orphan]
        else:
            lab[orphan] = 0
            best[orphan] = np.inf

    nuc = np.zeros(shape, dtype=np.int32)
    rho = np.full(shape, np.inf, dtype=np.float32)
    for i in range(n):
        ext = max(cells.na[i], cells.nb[i]) + 1.5
        y0 = max(0, int(cells.ny[i] - ext))
        y1 = min(rows, int(cells.ny[i] + ext) + 2)
        x0 = max(0, int(cells.nx[i] - ext))
        x1 = min(cols, int(cells.nx[i] + ext) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cells.ny[i]))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cells.nx[i]))[None, :]
        dy, dx = np.broadcast_arrays(dy, dx)
        r = _nucleus_rho(cells, i, dy, dx)
        sl = (slice(y0, y1), slice(x0, x1))
        inside = (r <= 1.0) & (lab[sl] == i + 1)
        nuc[sl][inside] = i + 1
        rho[sl][inside] = r[inside]
    best[lab == 0] = np.inf
    return lab, best, nuc, rho


def _areas(lab: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def _border_ids(lab: np.ndarray, n: int) -> np.ndarray:
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    flag = np.zeros(n + 1, dtype=bool)
    flag[edge] = True
    return flag[1:]


def _build_geometry(p: FieldParams, rng: np.random.Generator) -> tuple[_Cells, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw, place and rasterise cells; enforce the enlarged / normal size gap."""
    cells = _draw_cells(p, rng)
    cells = _place(cells, p, rng)
    for it in range(4):
        lab, q, nuc, rho = _partition(cells, p.shape, p.reach)
        n = len(cells.R)
        area = _areas(lab, n).astype(float)
        interior = ~_border_ids(lab, n)
        normal = ~cells.enlarged & interior & (area > 0)
        if normal.sum() < 3:
            normal = ~cells.enlarged & (area > 0)
        if not normal.any():
            break
        med = float(np.median(area[normal]))
        small_enl = cells.enlarged & interior & (area < _ENLARGED_MIN_RATIO * 1.05 * med)
        big_norm = ~cells.enlarged & interior & (area > _NORMAL_MAX_RATIO * 0.95 * med)
        if not (small_enl.any() or big_norm.any()) or it == 3:
            break
        # grow squeezed enlarged cells, shrink over-spread normal cells; neighbours
        # then yield by the same partition rule.
        f = np.ones(n)
        f[small_enl] = np.sqrt(_ENLARGED_MIN_RATIO * 1.15 * med / np.maximum(area[small_enl], 1.0))
        f[big_norm] = np.sqrt(_NORMAL_MAX_RATIO * 0.85 * med / area[big_norm])
        f = np.clip(f, 0.6, 1.8)
        cells.R = cells.R * f
    # Final guarantee of the gap: cells still inside the ambiguous band (rare,
    # squeezed between neighbours) are removed with everything they own.
    n = len(cells.R)
    area = _areas(lab, n).astype(float)
    interior = ~_border_ids(lab, n)
    normal = ~cells.enlarged & interior & (area > 0)
    drop = area <= 0
    if normal.any():
        med = float(np.median(area[normal]))
        drop |= interior & cells.enlarged & (area < _ENLARGED_MIN_RATIO * med)
        drop |= interior & ~cells.enlarged & (area > _NORMAL_MAX_RATIO * med)
    nuc_area = _areas(nuc, n)
    drop |= nuc_area < 4
    if drop.any():
        logger.debug("dropping %d cells outside the class size gap", int(drop.sum()))
        keep = np.flatnonzero(~drop)
        remap = np.zeros(n + 1, dtype=np.int32)
        remap[keep + 1] = np.arange(1, len(keep) + 1)
        lab, nuc = remap[lab], remap[nuc]
        q = np.where(lab > 0, q, np.inf).astype(np.float32)
        rho = np.where(nuc > 0, rho, np.inf).astype(np.float32)
        cells = cells.take(keep)
    # ids in reading order of the nuclei
    order = np.lexsort((cells.nx, cells.ny))
    remap = np.zeros(len(order) + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, len(order) + 1)
    lab, nuc = remap[lab], remap[nuc]
    cells = cells.take(order)
    return cells, lab, q, nuc, rho


# =============================================================================
# Stains
# =============================================================================


def _xgal_cells(
    cells: _Cells, lab: np.ndarray, nuc: np.ndarray, p: FieldParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell X-gal concentration (OD along the X-gal vector).

    Positive cells: Gaussian granules concentrated around the nucleus plus a
    diffuse haze decaying from the nucleus, scaled so the cell's peak equals
    its drawn strength. Negative cells: faint haze only.
    Returns the map and per-cell (peak, mean, p90).
    """
    n = len(cells.R)
    out = np.zeros(lab.shape, dtype=np.float32)
    peak = np.zeros(n)
    mean = np.zeros(n)
    p90 = np.zeros(n)
    lo, hi = p.xgal_peak_od
    strength = np.where(
        cells.positive,
        np.exp(rng.uniform(math.log(lo), math.log(hi), n)),
        rng.uniform(0.0, 1.0, n) * p.negative_haze_od,
    )
    sig = p.xgal_granule_sigma_px
    slices = ndi.find_objects(lab, max_label=n)
    for i in range(n):
        sl = slices[i]
        if sl is None or strength[i] <= 0:
            continue
        own = lab[sl] == i + 1
        in_nuc = nuc[sl] == i + 1
        y0, x0 = sl[0].start, sl[1].start
        dy = (np.arange(sl[0].start, sl[0].stop, dtype=np.float32) - np.float32(cells.ny[i]))[:, None]
        dx = (np.arange(sl[1].start, sl[1].stop, dtype=np.float32) - np.float32(cells.nx[i]))[None, :]
        dy, dx = np.broadcast_arrays(dy, dx)
        rho = _nucleus_rho(cells, i, dy, dx)
        r_nuc = math.sqrt(cells.na[i] * cells.nb[i])
        beyond = np.maximum(rho - 1.0, 0.0) * np.float32(r_nuc)  # ~ px from the nuclear envelope
        haze = np.exp(-beyond / np.float32(max(p.xgal_haze_length * cells.R[i], 1.0)))
        haze = np.where(in_nuc, haze * np.float32(p.xgal_nuclear_haze), haze)
        if cells.positive[i]:
            area = int(own.sum())
            ng = max(3, int(rng.poisson(p.xgal_granule_density * area)))
            m = 3 * ng
            lam = max(p.xgal_perinuclear_length * (cells.R[i] - r_nuc), 1.0) / r_nuc
            gr = 1.0 + rng.exponential(lam, m)
            over = rng.random(m) < 0.05  # a few granules in cytoplasm above/below the nucleus
            gr = np.where(over, rng.uniform(0.5, 1.0, m), gr)
            if rng.random() < p.xgal_polarity:
                gt = rng.vonmises(rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 3.0), m)
            else:
                gt = rng.uniform(-np.pi, np.pi, m)
            cp, sp = math.cos(cells.npsi[i]), math.sin(cells.npsi[i])
            u = gr * cells.na[i] * np.cos(gt)
            v = gr * cells.nb[i] * np.sin(gt)
            gy = cells.ny[i] + u * sp + v * cp - y0
            gx = cells.nx[i] + u * cp - v * sp - x0
            iy = np.round(gy).astype(int)
            ix = np.round(gx).astype(int)
            h, w = own.shape
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            ok[ok] = own[iy[ok], ix[ok]]
            sel = np.flatnonzero(ok)[:ng]
            imp = np.zeros((h + 2, w + 2), dtype=np.float32)
            if sel.size:
                amp = rng.lognormal(0.0, 0.5, sel.size).astype(np.float32)
                fy, fx = gy[sel] + 1, gx[sel] + 1
                y_i, x_i = np.floor(fy).astype(int), np.floor(fx).astype(int)
                wy, wx = (fy - y_i).astype(np.float32), (fx - x_i).astype(np.float32)
                for oy_, ox_, ww in ((0, 0, (1 - wy) * (1 - wx)), (1, 0, wy * (1 - wx)),
                                     (0, 1, (1 - wy) * wx), (1, 1, wy * wx)):
                    np.add.at(imp, (np.clip(y_i + oy_, 0, h + 1), np.clip(x_i + ox_, 0, w + 1)), amp * ww)
            g = ndi.gaussian_filter(imp, sig, mode="constant")[1:-1, 1:-1]
            gv = g[own]
            norm = float(np.percentile(gv, 99.5)) if gv.size and gv.max() > 0 else 1.0
            g = np.minimum(g / max(norm, 1e-12), 1.5)
            c = p.xgal_haze_weight * haze + (1 - p.xgal_haze_weight) * g
        else:
            c = haze
        c = np.where(own, c, 0).astype(np.float32)
        cmax = float(c.max())
        if cmax <= 0:
            continue
        c *= np.float32(strength[i] / cmax)
        out[sl][own] = c[own]
        vals = c[own]
        peak[i] = float(vals.max())
        mean[i] = float(vals.mean())
        p90[i] = float(np.percentile(vals, 90))
    return out, peak, mean, p90


def _impulses(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> np.ndarray:
    img = np.zeros(shape, dtype=np.float32)
    iy = np.clip(np.round(ys).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.round(xs).astype(int), 0, shape[1] - 1)
    np.add.at(img, (iy, ix), w.astype(np.float32))
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
    sig = max(0.7, 0.09 * float(np.median(cells.na + cells.nb)))
    amp = rng.uniform(0.6, 1.0, owner.size) * 2 * np.pi * sig**2
    m = ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, amp), sig, mode="constant")
    return np.where(nuc > 0, m, 0).astype(np.float32)


def _draw_debris(p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """Grey-OD map of debris: many small dark specks, a few larger irregular clumps."""
    rows, cols = p.shape
    out = np.zeros(p.shape, dtype=np.float32)
    for _ in range(p.n_debris):
        large = rng.random() < p.debris_large_fraction
        r = rng.uniform(6, 20) if large else rng.uniform(0.8, 4.0)
        od = rng.uniform(0.1, 0.8)
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        ext = r * 1.6 + 2
        y0, y1 = max(0, int(cy - ext)), min(rows, int(cy + ext) + 1)
        x0, x1 = max(0, int(cx - ext)), min(cols, int(cx + ext) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        th = np.arctan2(dy, dx)
        rr = r * (1 + sum(rng.uniform(0, 0.25) * np.cos(k * th + rng.uniform(0, 6.3)) for k in (2, 3, 5)))
        d = np.sqrt(dy * dy + dx * dx)
        blob = 1.0 / (1.0 + np.exp((d - rr) / 0.6))
        if large:
            blob = blob * (0.6 + 0.4 * rng.random(blob.shape).astype(np.float32))
        out[y0:y1, x0:x1] += (od * blob).astype(np.float32)
    return out


def _draw_crystals(p: FieldParams, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """X-gal crystals: thin, dense blue needles, often in small sprays, mostly off cells."""
    rows, cols = p.shape
    out = np.zeros(p.shape, dtype=np.float32)
    bg = np.argwhere(lab[::4, ::4] == 0) * 4
    fg = np.argwhere(lab[::4, ::4] > 0) * 4
    placed = 0
    while placed < p.n_crystals:
        over = rng.random() < p.crystal_over_cells_fraction
        pool = fg if (over and len(fg)) else (bg if len(bg) else fg)
        if not len(pool):
            break
        cy, cx = pool[rng.integers(len(pool))] + rng.uniform(0, 4, 2)
        spray = int(rng.integers(1, 5))
        base = rng.uniform(0, np.pi)
        for _ in range(spray):
            length = rng.uniform(6, 45) * p.nucleus_diameter_px / 14
            ang = base + rng.normal(0, 0.5)
            width = rng.uniform(0.5, 1.2)
            od = rng.uniform(0.4, 1.4)
            ey, ex = cy + length * math.sin(ang), cx + length * math.cos(ang)
            y0, y1 = max(0, int(min(cy, ey) - 3)), min(rows, int(max(cy, ey) + 4))
            x0, x1 = max(0, int(min(cx, ex) - 3)), min(cols, int(max(cx, ex) + 4))
            if y0 >= y1 or x0 >= x1:
                continue
            yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
            xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
            ux, uy = math.cos(ang), math.sin(ang)
            t = np.clip(xx * ux + yy * uy, 0, length)
            d2 = (xx - t * ux) ** 2 + (yy - t * uy) ** 2
            out[y0:y1, x0:x1] += (od * np.exp(-d2 / (2 * width**2))).astype(np.float32)
        placed += spray
    return out


def _draw_dust(p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus dust on the optics: faint, soft discs and rings (grey OD)."""
    rows, cols = p.shape
    yy = np.arange(rows, dtype=np.float32)[:, None]
    xx = np.arange(cols, dtype=np.float32)[None, :]
    out = np.zeros(p.shape, dtype=np.float32)
    for _ in range(p.n_dust):
        r = rng.uniform(8, 60)
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        y0, y1 = max(0, int(cy - 2 * r)), min(rows, int(cy + 2 * r) + 1)
        x0, x1 = max(0, int(cx - 2 * r)), min(cols, int(cx + 2 * r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        d = np.sqrt((yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2)
        od = rng.uniform(0.005, 0.035)
        if rng.random() < 0.5:
            prof = np.exp(-((d - r) ** 2) / (2 * (0.15 * r) ** 2))  # ring
        else:
            prof = 1.0 / (1.0 + np.exp((d - r) / (0.2 * r)))  # soft disc
        out[y0:y1, x0:x1] += (od * prof).astype(np.float32)
    return out


# =============================================================================
# Camera
# =============================================================================


def _vignette(p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """(M, N, 3) relative illumination: off-centre radial fall-off, slightly per channel."""
    rows, cols = p.shape
    cy, cx = p.vignetting_centre[0] * rows, p.vignetting_centre[1] * cols
    yy = (np.arange(rows, dtype=np.float32)[:, None] - cy)
    xx = (np.arange(cols, dtype=np.float32)[None, :] - cx)
    far = max(math.hypot(max(cy, rows - cy), max(cx, cols - cx)), 1.0)
    r2 = (yy * yy + xx * xx) / np.float32(far * far)
    chan = 1.0 + rng.uniform(-0.1, 0.1, 3)
    return np.stack([1.0 - p.vignetting * c * r2 for c in chan], axis=-1).astype(np.float32)


def _noisy(signal_e: np.ndarray, read_e: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (Poisson; Gaussian approximation above 100 e-) plus Gaussian read noise."""
    out = signal_e + np.sqrt(np.maximum(signal_e, 0)) * rng.standard_normal(signal_e.shape, dtype=np.float32)
    low = signal_e < 100
    if low.any():
        out[low] = rng.poisson(np.maximum(signal_e[low], 0)).astype(np.float32)
    out += np.float32(read_e) * rng.standard_normal(signal_e.shape, dtype=np.float32)
    return out


def _camera(transmitted: np.ndarray, p: FieldParams, rng: np.random.Generator) -> np.ndarray:
    """Lamp x vignetting x transmittance -> electrons -> noise -> gamma -> integers (-> JPEG)."""
    vig = _vignette(p, rng)
    lamp = np.asarray(p.lamp_rgb, dtype=np.float32)
    exposure = p.background_level / (float(lamp.max()) * float(np.median(vig[..., int(np.argmax(lamp))])))
    rel = transmitted * vig * (lamp * np.float32(exposure))
    e = _noisy(rel * np.float32(p.full_well_e), p.read_noise_e, rng)
    x = np.clip(e / np.float32(p.full_well_e), 0.0, 1.0)
    if p.gamma != 1.0:
        x = x ** np.float32(p.gamma)
    full = 255 if p.bit_depth == 8 else 4095
    dtype = np.uint8 if p.bit_depth == 8 else np.uint16
    img = np.round(x * full).astype(dtype)
    if p.file_format == "jpg":
        import imageio.v3 as iio

        data = iio.imwrite("<bytes>", img, extension=".jpg", quality=int(p.jpeg_quality or 90))
        img = np.asarray(iio.imread(data, extension=".jpg"), dtype=np.uint8)
    return img


def _render_dapi(
    cells: _Cells, nuc: np.ndarray, rho: np.ndarray, lab: np.ndarray, chromatin: np.ndarray,
    p: FieldParams, rng: np.random.Generator,
) -> np.ndarray:
    """DAPI/Hoechst image: fluorescence ∝ DNA, blurred, on offset + background, Poisson noise."""
    n = len(cells.R)
    bright = rng.lognormal(0.0, 0.22, n)
    bright *= np.where(rng.random(n) < 0.15, rng.uniform(1.5, 1.9, n), 1.0)  # G2 nuclei
    bright *= np.where(cells.enlarged, rng.uniform(0.55, 0.9, n), 1.0)  # big flat nuclei, diluted DNA
    b = np.concatenate([[0.0], bright]).astype(np.float32)
    inside = nuc > 0
    dome = np.where(inside, 0.55 + 0.45 * np.sqrt(np.clip(1 - np.minimum(rho, 1) ** 2, 0, 1)), 0)
    tex = np.clip(1 + 1.5 * p.chromatin_texture * chromatin, 0.3, None)
    sig = b[nuc] * dome * tex
    # a few bright chromocentres in some fields (mouse cells)
    if rng.random() < 0.4:
        k = rng.integers(0, 6, n)
        owner = np.repeat(np.arange(n), k)
        t = rng.uniform(0, 2 * np.pi, owner.size)
        r = np.sqrt(rng.uniform(0, 1, owner.size)) * 0.8
        ys = cells.ny[owner] + r * cells.nb[owner] * np.sin(t)
        xs = cells.nx[owner] + r * cells.na[owner] * np.cos(t)
        spots = ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, np.full(owner.size, 6.0)), 0.9)
        sig = sig + np.where(inside, spots, 0) * b[nuc]
    # micronuclei / apoptotic fragments: small bright specks (not cells)
    n_frag = int(rng.integers(0, 1 + max(1, n // 40)))
    if n_frag:
        ys = rng.uniform(0, p.shape[0], n_frag)
        xs = rng.uniform(0, p.shape[1], n_frag)
        sig = sig + ndi.gaussian_filter(_impulses(nuc.shape, ys, xs, rng.uniform(8, 20, n_frag)), 1.2)
    sig = ndi.gaussian_filter(sig.astype(np.float32), p.dapi_blur_sigma_px)
    if p.dapi_shift_px != (0.0, 0.0):
        sig = ndi.shift(sig, p.dapi_shift_px, order=1, mode="nearest")
    cyto = (lab > 0).astype(np.float32) * 0.5  # cytoplasmic autofluorescence
    bg = p.dapi_background * (0.7 + 0.6 * _smooth_field(rng, p.shape, 2.0) + cyto)
    counts = p.dapi_peak * (sig + bg)
    electrons = counts / np.float32(p.dapi_gain)
    noisy = _noisy(electrons.astype(np.float32), 2.0, rng) * np.float32(p.dapi_gain) + np.float32(p.dapi_offset)
    return np.clip(np.round(noisy), 0, p.dapi_full_scale).astype(np.uint16)


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
    cells, lab, q, nuc, rho = _build_geometry(p, rng)
    n = len(cells.R)

    # --- stain concentration maps ---
    xgal_cells, peak, mean, p90 = _xgal_cells(cells, lab, nuc, p, rng)
    xgal = xgal_cells
    if p.xgal_background_od > 0:
        xgal = xgal + np.float32(p.xgal_background_od) * _smooth_field(rng, shape, 4.0)
    xgal = xgal + _draw_crystals(p, lab, rng)

    chrom_sigma = max(0.6, 0.08 * p.nucleus_diameter_px)
    chromatin = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), chrom_sigma)
    chromatin /= np.float32(max(float(chromatin.std()), 1e-6))
    inside_nuc = nuc > 0
    ndome = np.where(inside_nuc, 0.5 + 0.5 * np.sqrt(np.clip(1 - np.minimum(rho, 1) ** 2, 0, 1)), 0).astype(np.float32)
    ntex = np.clip(1 + p.chromatin_texture * chromatin, 0.2, None)
    nucleoli = _nucleoli(cells, nuc, rng)

    t = np.concatenate([[0.0], cells.thickness]).astype(np.float32)[lab]
    qq = np.where(lab > 0, q, 10).astype(np.float32)
    profile = np.where(lab > 0, 0.3 + 0.7 * np.exp(-((qq / 0.6) ** 2)), 0).astype(np.float32)

    from skimage.segmentation import find_boundaries

    rim = ndi.gaussian_filter(find_boundaries(lab, mode="inner").astype(np.float32), 0.7)
    rim = np.where(lab > 0, rim, rim * 0.5)

    grey = (np.float32(p.body_od) * t * profile
            + np.float32(p.edge_od) * rim
            + inside_nuc * ndome * ntex * np.float32(p.nucleus_extra_od)
            + nucleoli * np.float32(p.nucleolus_od))
    debris = _draw_debris(p, rng)
    dust = _draw_dust(p, rng)

    od = (xgal[..., None] * np.asarray(p.xgal_vector, dtype=np.float32)
          + grey[..., None] * np.asarray(p.scatter_vector, dtype=np.float32)
          + debris[..., None] * np.asarray(p.debris_vector, dtype=np.float32))
    if p.counterstain_vector is not None:
        cell_cs = rng.lognormal(0.0, 0.2, n)
        cs_n = np.concatenate([[0.0], cell_cs]).astype(np.float32)[nuc]
        cs = (np.float32(p.counterstain_nucleus_od) * cs_n * ndome * ntex
              + np.float32(p.counterstain_cytoplasm_od) * t * profile
              + np.float32(p.counterstain_nucleus_od * 0.5) * nucleoli)
        od = od + cs[..., None] * np.asarray(p.counterstain_vector, dtype=np.float32)

    # --- optics: defocus blurs the transmitted light; dust sits on the optics ---
    trans = np.exp(-np.float32(math.log(10)) * od)
    for c in range(3):
        trans[..., c] = ndi.gaussian_filter(trans[..., c], p.blur_sigma_px)
    trans *= np.exp(-np.float32(math.log(10)) * dust)[..., None]
    rgb = _camera(trans, p, rng)

    nuclear = None
    if p.setup == "fluorescence":
        nuclear = _render_dapi(cells, nuc, rho, lab, chromatin, p, rng)

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

            tifffile.imwrite(tmp, field.rgb, photometric="rgb", compression="zlib")
        else:
            import imageio.v3 as iio

            kw: dict[str, Any] = {"quality": int(field.params.jpeg_quality or 90)} if fmt == "jpg" else {}
            iio.imwrite(tmp, field.rgb, extension=f".{fmt}", **kw)
    paths["image"] = str(img_path)
    if field.nuclear is not None:
        import tifffile

        dapi_path = out / f"{stem}_dapi.tif"
        with atomic_path(dapi_path) as tmp:
            tifffile.imwrite(tmp, field.nuclear, photometric="minisblack", compression="zlib")
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


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    shape: tuple[int, int] = REFERENCE_SHAPE,
    setups: Sequence[str] = SETUPS,
    formats: Sequence[str] = FORMATS,
    truth_dir: str | None = "truth",
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
    return parser


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
                                    setups=setups, formats=tuple(args.formats))
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("wrote %d fields to %s", len(manifest), args.out)
    return 0
