"""The single-image pipeline: RGB (+ optional nuclear image) -> per-cell table.

:func:`analyze_image` composes the pure stages::

    lamp = illumination.estimate_lamp(rgb)
    od = stains.rgb_to_od(rgb, lamp)
    model = stains.StainModel(...)          # X-gal, counterstain/residual, grey
    conc = stains.unmix(od, model.matrix)
    nuclei = segment.segment_nuclei(nuclear_map)
    cells = segment.segment_cells(nuclei, foreground)
    table = measure.measure_cells(cells, nuclei, xgal=..., body=...)
    table = classify.classify_cells(table, classify.learn_thresholds(table))

It decides the imaging set-up per image when the config leaves it on
``auto``, and records every decision in :attr:`ImageResult.info`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sabgal import classify, filters, illumination, measure, qc, segment, stains
from sabgal import morphology as morph
from sabgal.config import Config

__all__ = [
    "ImageResult",
    "StainedImage",
    "analyze_image",
    "prepare_image",
    "segment_image",
    "measure_image",
    "decide_setup",
    "nuclear_map_brightfield",
]


@dataclass
class ImageResult:
    """Everything the pipeline learnt about one image.

    cells: per-cell table (:data:`sabgal.measure.CELL_COLUMNS` + calls).
    cell_labels, nucleus_labels: (M, N) uint32 label images (a nucleus has its
      cell's label; cells without a found nucleus have none).
    xgal: (M, N) float32 X-gal concentration (OD), background-corrected.
    counterstain: (M, N) float32 counterstain concentration, or None.
    info: set-up decided, stain vectors, lamp, thresholds, QC metrics, timings.
    """

    cells: pd.DataFrame
    cell_labels: np.ndarray
    nucleus_labels: np.ndarray
    xgal: np.ndarray
    counterstain: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        return classify.summarize(self.cells)


def _validate_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"rgb must have shape (rows, cols, 3); got {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype == np.float32 and rgb.flags.c_contiguous:
        # as read by sabgal.io: no copy (the pipeline never writes into it)
        if not np.all(np.isfinite(rgb)):
            raise ValueError("rgb contains NaN or infinite values")
        return rgb
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) / 65535
    rgb = rgb.astype(np.float32)
    if not np.all(np.isfinite(rgb)):
        raise ValueError("rgb contains NaN or infinite values")
    return rgb


# A field stop: opaque regions touching the image border covering at least this
# share of it, with the fringe within FIELD_STOP_FRINGE_PX of them that
# transmits less than FIELD_STOP_FRINGE_TRANSMITTANCE (smoothed luminance).
FIELD_STOP_MIN_FRACTION = 0.002
FIELD_STOP_FRINGE_PX = 40.0
FIELD_STOP_FRINGE_TRANSMITTANCE = 0.85

# Pixels transmitting less than this in every channel are opaque: no cell,
# stain or debris a brightfield field holds is that dense in red, green and
# blue at once, but burnt-in black scale bars and labels are.
OPAQUE_TRANSMITTANCE = 0.02


def burnt_in(rgb: np.ndarray, lamp: np.ndarray) -> np.ndarray | None:
    """Where the image shows no specimen, or None when nowhere: black
    annotations burnt into it (scale bars, labels: opaque in every channel,
    below :data:`OPAQUE_TRANSMITTANCE` of the lamp, grown by 2 px for their
    JPEG fringes) and the field stop of a camera on an eyepiece (large
    opaque regions touching the image border, with the dim blurred rim that
    joins them to the field). In optical density they would read as the
    densest objects in the field and swamp every threshold; a "nucleus"
    against them is that rim, not a cell.
    """
    # (most fields have no pixel that dark even in red: a third of the work says so)
    if not (rgb[..., 0] < np.float32(OPAQUE_TRANSMITTANCE) * lamp[..., 0]).any():
        return None
    dark = rgb < np.float32(OPAQUE_TRANSMITTANCE) * lamp
    opaque = dark[..., 0] & dark[..., 1] & dark[..., 2]
    if not opaque.any():
        return None
    mask = morph.dilate_square(opaque, iterations=2)
    lab, _ = morph.label(mask)
    sizes = np.bincount(lab.ravel())
    edge_ids = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    edge_ids = edge_ids[(edge_ids > 0) & (sizes[edge_ids] >= FIELD_STOP_MIN_FRACTION * mask.size)]
    if edge_ids.size:
        stop = np.isin(lab, edge_ids)
        lum = _channel_sum(rgb) / np.maximum(_channel_sum(lamp), np.float32(1e-6))
        dim = filters.gaussian_filter(lum.astype(np.float32), 2.0) < np.float32(FIELD_STOP_FRINGE_TRANSMITTANCE)
        near = filters.distance_transform(~stop) <= FIELD_STOP_FRINGE_PX
        fringe, _ = morph.label((dim & near) | stop)
        mask |= np.isin(fringe, np.unique(fringe[stop]))
    return mask


def _clipped_white(at_max: np.ndarray) -> np.ndarray:
    """Pixels at the image's maximum in every channel (``at_max``, per
    channel: ``rgb >= rgb.max()``): a white label, or overexposed glass;
    either way no stain."""
    return at_max[..., 0] & at_max[..., 1] & at_max[..., 2]


def _od_read(rgb: np.ndarray, lamp: np.ndarray, burnt: np.ndarray | None, clipped: np.ndarray) -> np.ndarray:
    """Optical density of ``rgb`` under ``lamp``, with burnt-in annotations
    (``burnt``) and pixels clipped white (``clipped``) read as glass, OD 0."""
    od = stains.rgb_to_od(rgb, lamp)
    if burnt is not None:
        od[burnt] = 0  # read as glass: no stain, no cell
    od[clipped] = 0  # (brighter than the lamp: negative OD otherwise)
    return od


def decide_setup(config: Config, *, has_nuclear: bool, od: np.ndarray) -> tuple[str, str, np.ndarray | None, list[str]]:
    """Decide (mode, counterstain name, counterstain vector or None, warnings)."""
    warnings: list[str] = []
    s = config.setup
    mode = s.mode
    if mode == "fluorescence" and not has_nuclear:
        raise ValueError("setup.mode = 'fluorescence' but no nuclear companion image was given")
    if mode == "auto":
        mode = "fluorescence" if has_nuclear else "undecided"
    cs_name, cs_vec = "none", None
    if s.counterstain == "custom":
        cs_name, cs_vec = "custom", stains.normalize(s.custom_counterstain_vector)
    elif s.counterstain in stains.COUNTERSTAINS:
        cs_name, cs_vec = s.counterstain, stains.COUNTERSTAINS[s.counterstain]
    elif s.counterstain == "auto" and mode != "brightfield":
        name, vec, _frac = stains.detect_counterstain(od, max_angle_deg=config.stains.max_counterstain_angle_deg)
        if name == "none" and stains.detect_hematoxylin(od)[0]:
            name = "hematoxylin"
        if name != "none":
            cs_name, cs_vec = name, stains.COUNTERSTAINS[name]
    if cs_name == "hematoxylin":
        warnings.append("hematoxylin counterstain: its colour is ~12 degrees from X-gal, so X-gal "
                        "and hematoxylin cannot be separated reliably; prefer nuclear fast red")
    if mode == "undecided":
        mode = "counterstain" if cs_vec is not None else "brightfield"
    if mode == "counterstain" and cs_vec is None:
        warnings.append("setup.mode = 'counterstain' but no counterstain was found; nuclei from brightfield")
    return mode, cs_name, cs_vec, warnings


def nuclear_map_brightfield(grey: np.ndarray, xgal: np.ndarray, *, sigma: float) -> np.ndarray:
    """Best-effort nuclear map when no nuclear stain exists.

    Nuclei are denser than cytoplasm (higher neutral OD) and, in SA-β-gal
    positive cells, stand out as pale holes in the perinuclear blue. The map
    adds the neutral density to the pale spots enclosed by X-gal (a grey
    closing at nucleus size), less half the X-gal itself (granules are
    dense but blue).
    """
    g = filters.gaussian_filter(grey, sigma)
    x = filters.gaussian_filter(np.maximum(xgal, 0), sigma)
    # a hole = a pale spot *enclosed* by blue: what a closing at nucleus size fills
    size = max(3, int(round(8 * sigma)) | 1)
    hole = filters.grey_closing(x, size) - x
    # X-gal granules are dense too, but they are blue: what is blue is not nucleus
    return (g + hole - 0.5 * x).astype(np.float32)


def brightfield_nucleus_diameter(grey: np.ndarray, xgal: np.ndarray, *,
                                 excluded: np.ndarray | None = None) -> float:
    """Typical nucleus diameter (px) without a nuclear stain
    (:func:`brightfield_nucleus_size` without its source)."""
    return brightfield_nucleus_size(grey, xgal, excluded=excluded)[0]


def brightfield_nucleus_size(grey: np.ndarray, xgal: np.ndarray, *, excluded: np.ndarray | None = None,
                             hint_px: float | None = None, glass: np.ndarray | None = None) -> tuple[float, str]:
    """Typical nucleus diameter (px) without a nuclear stain, and where it
    came from (``nucleus_size_source`` in images.csv): ``"blobs_checked"``
    (scale selection, within the range the stained cells' holes allow),
    ``"blobs_unchecked"`` (scale selection, fewer than five holes to check
    it against: a field with few stained cells, where the answer is least
    sure), ``"blobs_checked_at_scale"`` (out of that range, but a peak of
    the profile that the holes confirm read at its own scale:
    :func:`_peak_checked_at_own_scale`), ``"blobs_corrected"`` or
    ``"holes"`` (neither: replaced by the profile's peak near the holes'
    size or by that size) or ``"default"``.

    ``hint_px``: the nucleus size of the other fields of the plate, whose
    holes checked theirs (:func:`sabgal.batch.plate_nucleus_hints`; the
    magnification is the same in every well). Used only where this field
    has too few holes: an answer within ``PLATE_NUCLEUS_RANGE`` of it stands
    (``"blobs_plate_checked"``), else the profile's strongest peak within
    that range is taken (``"blobs_plate_corrected"``), else the hint itself
    (``"plate"``).

    ``glass``: the lamp estimate's bare-glass mask (full size), when it
    found glass. Without holes to check against, whole cells can outshine
    their nuclei: uniformly dense bodies on bright glass are the field's
    strongest blobs. When the strongest blob size's blobs are ringed by
    glass (median ``WHOLE_CELL_RING_GLASS`` of a circle one diameter from
    their centres) and the profile has a peak at most ``WHOLE_CELL_MAX_RATIO`` of
    that size whose blobs lie off the glass (most centres), those are the
    nuclei inside the cells (``"blobs_within_cells"``): a nucleus is ringed
    by its cell's cytoplasm, not by glass. The other way, nucleoli (dense
    dots a third to two thirds of the nucleus across) can outshine their
    nuclei: a larger peak of the profile, at least half as strong, whose
    blobs are not ringed by glass, with a cell-sized peak beyond it, is then
    the nuclei (``"blobs_around_nucleoli"``, :func:`_nuclei_around_nucleoli`).

    Nuclei are the most contrasted compact objects of a brightfield field:
    denser than the cytoplasm around them (neutral density) in unstained
    cells, pale holes in the blue of stained ones. Both are bright blobs of
    neutral density less X-gal, whose size :func:`sabgal.segment.blob_diameter`
    reads by scale selection (at half resolution: nuclei are >= 5 px).
    Thresholding a brightfield map instead measures fragments (granule
    gaps) or whole cells. ``excluded`` pixels (burnt-in labels, a field
    stop: no specimen) are set to the field's median, so their edges and
    corners are not taken for nuclei. Falls back to 14 px on a featureless
    field.

    In a sparse field of faint unstained cells, smaller things can outshine
    the nuclei: the pale rim beside each blue cell, crystals, specks. The
    stained cells' nuclear holes (:func:`sabgal.segment.stain_hole_diameter`)
    then check the answer: a nucleus is not much smaller than the hole it
    leaves (holes read from 15 % large to 40 % small), so a blob size under
    ``HOLE_CHECK_RATIO`` of the holes' is replaced by the strongest other
    peak of the scale profile between 0.85x and 1.7x the holes' size, or,
    with no such peak (the nuclei only a shoulder of the profile), by the
    holes' size itself: within that range of hole readings, never further
    from the truth than the blob size it replaces. Nor is a nucleus much
    larger than its hole: a blob size over ``HOLE_CHECK_MAX_RATIO`` x the
    holes' (whole cells whose bodies outshine their faint nuclei) is
    replaced the same way. Before either replacement the holes are read
    again at each peak's own scale: at a high magnification (nuclei of 30 px
    and more) the gaps between resolved X-gal granules are as large as
    nuclei at a low one and outnumber the nuclear holes, so holes read at a
    fixed scale come out half the nuclei's size.
    """
    x2 = illumination.block_reduce_mean_padded(np.maximum(xgal, 0), 2)
    m = illumination.block_reduce_mean_padded(grey, 2) - x2
    ex = None
    if excluded is not None and excluded.any():
        ex = illumination.block_reduce_mean_padded(excluded.astype(np.float32), 2) > 0
        if ex.all():
            return 14.0, "default"
        m[ex] = filters.median(m[~ex])
    peaks = segment.blob_diameters(m)
    if not peaks:
        return 14.0, "default"
    d = peaks[0][0]
    hole = segment.stain_hole_diameter(x2, excluded=ex)
    if hole is None:
        source = "blobs_unchecked"
        if glass is not None and glass.any():
            glass2 = illumination.block_reduce_mean_padded(glass.astype(np.float32), 2) > 0.5
            inner = _nuclei_within_cells(m, glass2, peaks)
            if inner is not None:
                d, source = inner, "blobs_within_cells"
            else:
                outer = _nuclei_around_nucleoli(m, glass2, peaks)
                if outer is not None:
                    d, source = outer, "blobs_around_nucleoli"
        if not hint_px:
            return float(2 * d), source
        lo, hi = PLATE_NUCLEUS_RANGE[0] * hint_px, PLATE_NUCLEUS_RANGE[1] * hint_px
        if lo <= 2 * d <= hi:
            return float(2 * d), "blobs_plate_checked"
        near = _other_peak_within(peaks, lo / 2, hi / 2)
        return (float(2 * near), "blobs_plate_corrected") if near is not None else (float(hint_px), "plate")
    # (each size's holes are read once, however many of the looks below ask)
    confirms = functools.cache(functools.partial(_holes_confirm_at_own_scale, x2, excluded=ex))
    if HOLE_CHECK_RATIO * hole <= d <= HOLE_CHECK_MAX_RATIO * hole:
        big = _larger_peak_checked(peaks, d, confirms)
        if big is not None:
            return float(2 * big), "blobs_checked_at_scale"
        return float(2 * d), "blobs_checked"
    scaled = _peak_checked_at_own_scale(peaks, confirms)
    if scaled is not None:
        big = _larger_peak_checked(peaks, scaled, confirms)
        return float(2 * (scaled if big is None else big)), "blobs_checked_at_scale"
    near = _other_peak_within(peaks, 0.85 * hole, 1.7 * hole)
    return (float(2 * near), "blobs_corrected") if near is not None else (float(2 * hole), "holes")


def _holes_confirm_at_own_scale(x2: np.ndarray, size: float, *, excluded: np.ndarray | None) -> bool:
    """Whether the stained cells' nuclear holes, read at the scale of a blob
    ``size`` (:func:`sabgal.segment.stain_hole_diameter` with the stain
    smoothed at ``SCALED_HOLE_SMOOTH`` of it, holes under
    ``SCALED_HOLE_MIN_DIAMETER`` of it left out, closed over twice it), put
    it within the hole check's range. ``x2``: the X-gal at half resolution,
    as the blob sizes were read."""
    hole = segment.stain_hole_diameter(x2, excluded=excluded, smooth_px=max(1.0, SCALED_HOLE_SMOOTH * size),
                                       min_diameter_px=SCALED_HOLE_MIN_DIAMETER * size,
                                       closing_px=max(25, 2 * int(size) + 1))
    return hole is not None and HOLE_CHECK_RATIO * hole <= size <= HOLE_CHECK_MAX_RATIO * hole


def _peak_checked_at_own_scale(peaks: list[tuple[float, float]], confirms) -> float | None:
    """The strongest of the scale profile's ``peaks`` (at least
    ``SCALED_HOLE_MIN_STRENGTH`` of the strongest) that ``confirms`` (a size's
    holes confirm it at its own scale: :func:`_holes_confirm_at_own_scale`),
    else None."""
    for size, strength in peaks:
        if strength >= SCALED_HOLE_MIN_STRENGTH * peaks[0][1] and confirms(size):
            return size
    return None


def _larger_peak_checked(peaks: list[tuple[float, float]], size: float, confirms) -> float | None:
    """A peak of the profile at least ``LARGER_PEAK_RATIO`` x ``size`` and
    ``LARGER_PEAK_STRENGTH`` x as strong as the strongest that ``confirms``
    (:func:`_peak_checked_at_own_scale`), else None: at a high magnification
    the gaps between resolved X-gal granules are blobs, and holes, of their
    own, as strong as the nuclei."""
    larger = [p for p in peaks if p[0] >= LARGER_PEAK_RATIO * size and p[1] >= LARGER_PEAK_STRENGTH * peaks[0][1]]
    return _peak_checked_at_own_scale(larger, confirms) if larger else None


def _other_peak_within(peaks: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    """The strongest peak of ``peaks`` (:func:`segment.blob_diameters`, at
    their scale) after the first whose size lies in [lo, hi], or None."""
    return next((p[0] for p in peaks[1:] if lo <= p[0] <= hi), None)


def _nuclei_within_cells(m: np.ndarray, glass: np.ndarray, peaks: list[tuple[float, float]]) -> float | None:
    """The size (px, the scale of ``m``) of the nuclei inside whole cells
    when the strongest peak of ``peaks`` (:func:`segment.blob_diameters` of
    ``m``) is the cells themselves: its blobs ringed by ``glass``, and a
    smaller peak (at most WHOLE_CELL_MAX_RATIO of it) whose blobs lie
    mostly off the glass; else None (:func:`brightfield_nucleus_size`)."""
    d = peaks[0][0]
    smaller = [p[0] for p in peaks[1:] if p[0] <= WHOLE_CELL_MAX_RATIO * d]
    if not smaller:
        return None
    ring, _ = segment.blobs_on_glass(m, glass, diameter_px=d)
    if ring < WHOLE_CELL_RING_GLASS:
        return None
    _, centres = segment.blobs_on_glass(m, glass, diameter_px=smaller[0])
    return smaller[0] if centres < 0.5 else None


def _nuclei_around_nucleoli(m: np.ndarray, glass: np.ndarray, peaks: list[tuple[float, float]]) -> float | None:
    """The size (px, the scale of ``m``) of the nuclei when the strongest
    peak of ``peaks`` (:func:`segment.blob_diameters` of ``m``) is their
    nucleoli: a larger peak, ``NUCLEOLUS_RATIO`` times the strongest's size
    at most, at least ``NUCLEOLUS_PEAK_SHARE`` of its strength, whose blobs
    are not ringed by ``glass`` (under ``WHOLE_CELL_RING_GLASS``: nuclei,
    ringed by their cells' cytoplasm, not whole cells on glass), with a peak
    at least ``NUCLEOLUS_CELL_RATIO`` times its size beyond it (the cells);
    else None (:func:`brightfield_nucleus_size`)."""
    d, v = peaks[0]
    for size, value in peaks[1:]:
        if NUCLEOLUS_RATIO[0] * size <= d <= NUCLEOLUS_RATIO[1] * size and value >= NUCLEOLUS_PEAK_SHARE * v:
            if not any(p[0] >= NUCLEOLUS_CELL_RATIO * size for p in peaks):
                return None  # (no cells around them: the larger blobs may be the cells)
            ring, _ = segment.blobs_on_glass(m, glass, diameter_px=size)
            return size if ring < WHOLE_CELL_RING_GLASS else None
    return None


def _texture(od_sum: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(local mean, local SD) of the summed OD at scale ``sigma``."""
    m = filters.gaussian_filter(od_sum, sigma)
    m2 = filters.gaussian_filter(od_sum * od_sum, sigma)
    return m, np.sqrt(np.maximum(m2 - m * m, 0)).astype(np.float32)


@dataclass
class StainedImage:
    """An image after illumination correction and colour deconvolution."""

    rgb: np.ndarray | None  # (M, N, 3) float32 (None once analyze_image has read what it needs)
    od: np.ndarray | None  # (M, N, 3) float32 optical density (likewise)
    xgal: np.ndarray  # (M, N) float32 X-gal concentration (OD), not yet background-corrected
    grey: np.ndarray  # (M, N) float32 neutral density
    counterstain: np.ndarray | None
    mode: str
    model: stains.StainModel
    lamp: illumination.Lamp
    refined: bool
    warnings: list[str]
    excluded: np.ndarray | None = None  # burnt-in annotations and field stop (read as glass)
    # a JPEG's neutral density with its colour re-estimated from the luma
    # (stains.smooth_chroma; plain brightfield only, None for an image whose
    # colour shows no blocks)
    grey_deblocked: np.ndarray | None = None
    encoding: str = "linear"  # how the pixel values were read as light (:func:`pixel_encoding`)


def pixel_encoding(config: Config, declared: str | None = None) -> str:
    """How an image's values encode light: ``illumination.encoding``, or
    under ``"auto"`` what the file declares (``declared``:
    :attr:`sabgal.io.ImageData.encoding`), else ``"linear"``."""
    enc = config.illumination.encoding
    return (declared or "linear") if enc == "auto" else enc


def _light(rgb: np.ndarray, encoding: str, ill) -> tuple[np.ndarray, np.ndarray, illumination.ClippedRebuild | None]:
    """Light from a validated RGB image: decoded from the camera's
    ``encoding``, the clipped pixels (``at_max``: the lamp estimate and
    clipped white share them) and the channels clipped on overexposed glass
    rebuilt from the others (:func:`sabgal.illumination.rebuild_clipped`).
    ``ill``: the illumination config."""
    light = illumination.decode(rgb, encoding, ill.encoding_gamma)
    return illumination.rebuild_clipped(light, light >= light.max())


def prepare_image(rgb: np.ndarray, *, nuclear: np.ndarray | None = None, config: Config | None = None,
                  flat_field: np.ndarray | None = None, encoding: str | None = None,
                  lamp: illumination.Lamp | None = None) -> StainedImage:
    """Illumination correction and colour deconvolution (stages 1-2).
    ``encoding``: the encoding the image's file declares (``"srgb"``) or
    None (:func:`pixel_encoding`). ``lamp``: the lamp to use instead of
    the configured estimate (:func:`_glass_lamp_for_sparse_field`)."""
    config = config or Config()
    rgb = _validate_rgb(rgb)
    ill = config.illumination
    # (light, from what the camera encoded: Beer-Lambert reads it)
    encoding = pixel_encoding(config, encoding)
    rgb, at_max, rebuilt = _light(rgb, encoding, ill)
    if lamp is None:
        if ill.method == "flat_field":
            if flat_field is None:
                raise ValueError("illumination.method = 'flat_field' needs a flat-field image")
            lamp = illumination.lamp_from_blank(
                illumination.decode(_validate_rgb(flat_field), encoding, ill.encoding_gamma), rgb.shape)
        elif ill.method == "none":
            lamp = illumination.flat_lamp(rgb)
        else:
            lamp = illumination.estimate_lamp(rgb, block_px=ill.block_px, degree=ill.polynomial_degree,
                                              at_max=at_max)
    burnt = burnt_in(rgb, lamp.image)
    clipped = _clipped_white(at_max)
    od = _od_read(rgb, lamp.image, burnt, clipped)
    mode, cs_name, cs_vec, warnings = decide_setup(config, has_nuclear=nuclear is not None, od=od)
    if rebuilt is not None:
        warnings.append(rebuilt.describe())
    sc = config.stains
    xgal_ref = stains.normalize(sc.xgal_vector)
    # (the vector estimates read the OD directly: concentrations are
    # unmixed once, with the final model)
    xgal_vec, cs_used = xgal_ref, cs_vec
    refined = False
    if cs_vec is not None and sc.estimate_counterstain:
        cs_used, _ = stains.estimate_stain_vector(od, cs_vec, avoid=(xgal_ref,),
                                                  max_angle_deg=sc.max_counterstain_angle_deg)
    if sc.estimate_xgal:
        xgal_vec, refined = stains.estimate_stain_vector(
            od, xgal_ref, avoid=() if cs_used is None else (cs_used,), max_angle_deg=sc.max_xgal_angle_deg)
    model = stains.StainModel.build(xgal_vec, cs_name, cs_used, xgal_ref=xgal_ref, counterstain_ref=cs_vec,
                                    min_grey_angle_deg=sc.min_grey_angle_deg)
    if refined and not model.has_grey:
        # an estimate too close to grey to unmix a grey channel sends all the
        # cells' density to X-gal: it must rest on stain covering a real
        # share of the field (a negative control's haze over dense nuclei
        # reads as a near-grey "X-gal" from a few hundred pixels)
        _, refined = stains.estimate_stain_vector(
            od, xgal_ref, avoid=() if cs_used is None else (cs_used,), max_angle_deg=sc.max_xgal_angle_deg,
            min_share=stains.NO_GREY_MIN_STAIN_SHARE)
        if not refined:
            xgal_vec = xgal_ref
            model = stains.StainModel.build(xgal_vec, cs_name, cs_used, xgal_ref=xgal_ref, counterstain_ref=cs_vec,
                                            min_grey_angle_deg=sc.min_grey_angle_deg)
    if not model.has_grey:
        # grey too close to X-gal (or to its plane with the counterstain) to
        # unmix: the cells' own colour, rarely exactly grey, may not be
        neutral, found = stains.estimate_neutral_vector(od, xgal_vec, avoid=() if cs_used is None else (cs_used,))
        if found:
            alt = stains.StainModel.build(xgal_vec, cs_name, cs_used, xgal_ref=xgal_ref, counterstain_ref=cs_vec,
                                          min_grey_angle_deg=sc.min_grey_angle_deg, neutral=neutral)
            if alt.has_grey:
                model = alt
                warnings.append(f"X-gal colour is {stains.angle_deg(xgal_vec, stains.GREY):.0f} degrees from "
                                f"neutral grey: the grey channel takes the cells' own colour instead, "
                                f"{stains.angle_deg(xgal_vec, neutral):.0f} degrees from X-gal")
    if not model.has_grey and cs_used is None:
        # Without a grey channel every cell's own density reads as X-gal:
        # unstained nuclei turn into X-gal peaks (no longer nuclei) and
        # unstained cells into faint positives. A noisier grey channel is
        # the smaller error down to stains.GREY_MIN_ANGLE_DEG
        alt = stains.StainModel.build(xgal_vec, cs_name, cs_used, xgal_ref=xgal_ref, counterstain_ref=cs_vec,
                                      min_grey_angle_deg=min(sc.min_grey_angle_deg, stains.GREY_MIN_ANGLE_DEG))
        if alt.has_grey:
            model = alt
            warnings.append(f"X-gal colour is {stains.angle_deg(xgal_vec, stains.GREY):.0f} degrees from "
                            "neutral grey: X-gal and the cells' grey density are told apart less surely")
    conc = stains.unmix(od, model.matrix)
    if not model.has_grey:
        warnings.append(f"X-gal colour is {stains.angle_deg(xgal_vec, stains.GREY):.0f} degrees from neutral "
                        "grey: no separate grey channel, so dark debris can add to X-gal")
    if model.condition > 30:
        warnings.append(f"stain matrix is ill-conditioned (condition number {model.condition:.0f})")
    counter = np.ascontiguousarray(conc[..., 1]) if cs_used is not None else None
    grey_deblocked = None
    if mode == "brightfield" and stains.chroma_blockiness(rgb) >= stains.CHROMA_MIN_BLOCKINESS:
        # a JPEG's colour, stored on 16-px blocks, bleeds past a stained cell's
        # edge and rings, which unmixing reads as grey density beside it: with
        # no nuclear stain, the nucleus search reads the grey of the colour
        # re-estimated from the luma instead (all else keeps the image's own
        # colour)
        od2 = _od_read(stains.smooth_chroma(rgb, stains.CHROMA_SMOOTH_PX), lamp.image, burnt, clipped)
        grey_deblocked = model.neutral_density(od2, stains.unmix(od2, model.matrix))
        del od2
    return StainedImage(rgb, od, np.ascontiguousarray(conc[..., 0]), model.neutral_density(od, conc),
                        counter, mode, model, lamp, refined, warnings, burnt, grey_deblocked, encoding)


# The X-gal score of a cell is read within this many nucleus diameters of its
# nucleus (with a nuclear stain): SA-β-gal is lysosomal and gathers around the
# nucleus, and a territory drawn too large reaches into a neighbour's stain.
PERINUCLEAR_NUCLEI = 2.0

# ... and xgal_od_perinuclear_p60 (the default positivity score) over a band
# this many nucleus diameters wide around the nucleus, where a faint
# perinuclear stain is densest.
PERINUCLEAR_BAND_NUCLEI = 0.5


def measure_image(prep: StainedImage, cell_labels: np.ndarray, nucleus_labels: np.ndarray, *,
                  foreground: np.ndarray | None = None, pixel_size_um: float | None = None,
                  config: Config | None = None, diameter_px: float | None = None,
                  nucleus_dist: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray, float, np.ndarray]:
    """Measure given labels on a prepared image (stage 4); also used after a
    person edits the labels (napari).

    ``diameter_px`` is the typical nucleus diameter (from
    :func:`segment_image`); the X-gal score leaves out a rim of a third of
    it along each cell's edge (where a neighbour's stain spills over an
    imperfect border). Without it, it is estimated from the nuclei.
    ``nucleus_dist``: each pixel's distance to the nearest nucleus pixel of
    ``nucleus_labels`` when the caller has it.

    Returns (table without calls, background-corrected X-gal map, X-gal
    background OD, glass mask).
    """
    config = config or Config()
    cells = np.asarray(cell_labels)
    occupied = cells > 0 if foreground is None else (foreground | (cells > 0))
    glass = ~morph.dilate_cross(occupied, iterations=3)
    xgal_bg = float(filters.median(prep.xgal[glass])) if glass.sum() > 1000 else 0.0
    xgal_c = filters.gaussian_filter(prep.xgal - np.float32(xgal_bg), 1.0)
    px = pixel_size_um or config.setup.pixel_size_um
    if diameter_px is None:
        areas = np.bincount(np.asarray(nucleus_labels).ravel().astype(np.int64))[1:]
        areas = areas[areas > 0]
        diameter_px = 2 * np.sqrt(np.median(areas) / np.pi) if areas.size else 10.0
    edge_px = max(1, int(round(diameter_px / 3)))
    # with a nuclear stain the nuclei are real: the score stays within
    # PERINUCLEAR_NUCLEI diameters of them
    stained_nuclei = prep.mode != "brightfield"
    perinuclear = PERINUCLEAR_NUCLEI * diameter_px if stained_nuclei else 0.0
    band = PERINUCLEAR_BAND_NUCLEI * diameter_px
    table = measure.measure_cells(cells, nucleus_labels, xgal=xgal_c, body=prep.grey,
                                  counterstain=prep.counterstain, pixel_size_um=px, edge_px=edge_px,
                                  perinuclear_px=perinuclear, band_px=band, nucleus_dist=nucleus_dist)
    if not stained_nuclei and len(table):
        # A brightfield "nucleus" of an unstained cell is a guess, often off
        # centre near a stained neighbour, where its band would read the
        # spill: such cells are scored over the core, and the thresholds are
        # learnt on the core score of every cell (xgal_od_anchor_p60). A
        # nucleus enclosed by stain is sure (the pale hole in a stained
        # cell): its cell is scored over the band, where a faint perinuclear
        # stain is densest.
        nuc = np.asarray(nucleus_labels).astype(np.int32)
        # (the ring's owners from OpenCV's label propagation, as segmentation
        # takes them: scipy's exact feature transform costs ~50 ms a field)
        sure = segment.stained_nuclei(nuc, segment.smoothed_stain(xgal_c, max(1.0, diameter_px / 4)),
                                      level=SURE_NUCLEUS_STAIN_OD, ring_px=max(1, int(round(diameter_px / 2))),
                                      nearest=segment.nearest_nucleus_label(nuc))
        core = table["xgal_od_core_p60"].to_numpy()
        table["xgal_od_perinuclear_p60"] = np.where(table["cell_id"].isin(sure), table["xgal_od_perinuclear_p60"], core)
        table["xgal_od_anchor_p60"] = core
    return table, xgal_c, xgal_bg, glass


def _channel_sum(image: np.ndarray) -> np.ndarray:
    """``image.sum(axis=-1)`` (same values) as whole-plane additions: a
    reduction over a short last axis is several times slower in numpy."""
    total = image[..., 0].copy()
    for c in range(1, image.shape[-1]):
        total += image[..., c]
    return total


# Plain brightfield: a nucleus whose surrounding ring reads at least this
# mean X-gal OD (smoothed at a quarter nucleus diameter) is enclosed by
# stain -- the pale hole of a stained cell, not a guess -- and its cell is
# scored over the perinuclear band (measure_image).
SURE_NUCLEUS_STAIN_OD = 0.03

# Segmentation runs at a working scale where a nucleus is about this many pixels
# across: finer adds nothing to the territories but costs time quadratically.
WORKING_NUCLEUS_PX = 10.0

# Brightfield (no nuclear stain): a piece of not-foreground that holds nuclei
# of its own is their faint cells, not glass, when it is no larger than this
# many foreground cells (foreground area per foreground nucleus) per nucleus
# (segment.pale_cell_pockets).
BRIGHTFIELD_PALE_POCKET_CELLS = 1.0

# Brightfield (no nuclear stain): two nucleus candidates closer than this many
# nucleus diameters are one nucleus and the gaps between X-gal granules beside it.
BRIGHTFIELD_NUCLEUS_SPACING = 2.0
# ... but where neither lies in X-gal there are no granule gaps to mistake,
# and in a dense field the nuclei of touching cells can be closer: there two
# are one only within this fraction of the field's median nearest-neighbour
# distance between nuclei (on 60 synthetic development fields the closest
# 2 % of pairs lay at 0.52-0.86 of it), kept between these many diameters ...
BRIGHTFIELD_CLOSE_PAIR_FRACTION = 0.55
BRIGHTFIELD_MIN_CLEAR_SPACING = 1.4
# ... when the field is dense: the lamp estimate, fitted to bare glass, found
# it on less than this share of the field, or found none to fit at all (its
# percentile fallback: a sheet; on a development field of touching unstained
# cells 2.2 diameters apart, unstained-nucleus recall 0.52 -> 0.80, detection
# F1 0.62 -> 0.86; of the 13 other development fields with that fallback six
# moved, detection F1 -0.006 to +0.016). In a sparse
# field close pairs are rare and the candidates' spacing is set by false ones
# (specks, texture in large pale cells), which the closer spacing would let
# multiply.
BRIGHTFIELD_DENSE_GLASS_FRACTION = 0.5
# Where that closer spacing is not taken (a sparse field, or a dense one whose
# nuclei's spacing leaves it at BRIGHTFIELD_NUCLEUS_SPACING), it still holds
# between two candidates that are both plainly typical unstained nuclei
# (segment.typical_unstained_nuclei against all candidates out of the stain,
# with the rim check's strength band and yardstick): in a sparse field's
# clusters of small cells, neighbours' nuclei lie 1.6-1.9 diameters apart
# (one fresh field, 68 % glass, 650 cells: 37 true nuclei suppressed, 33 of
# them by a true neighbour's), while the false candidates the closer spacing
# would let multiply there -- specks, texture in large pale cells -- are no
# typical nucleus. On eight fresh sets (seeds 161803, 99001, 777001, 31415,
# 8181, 27182; negatives 6464, pale X-gal 5858: 320 fields) it changed two,
# both up: 0.750 -> 0.794 and 0.950 -> 0.957 (777001 pooled 0.9437 ->
# 0.9461, 8181 0.9541 -> 0.9545).

# Brightfield: in a sparse field (the lamp, fitted to bare glass, found it on
# at least BRIGHTFIELD_DENSE_GLASS_FRACTION of the field) a nucleus candidate
# must stand out of the nuclear map all round (segment.drop_flat_nuclei: on
# 70 % of the circle 0.75 diameters around it, the map lies below the
# candidate by BRIGHTFIELD_PROMINENCE_SD local noise SDs and by half its own
# rise above the darker quarter of that circle, as in the denser fields
# below). False candidates are many of the candidates there (faint cell
# bodies whose nucleus does not show, stained cells' edges), and a dropped
# one leaves its cell to be seeded from its shape; in dense fields the
# granular stain sets a noise that faint stained cells' nuclear holes do not
# clear. A piece of a body rises far above the glass on one side and not
# above the body on the other, which the rise share catches at any noise;
# the noise floor only keeps noise itself out. A fixed 5 SDs with no rise
# share dropped faint unstained nuclei that stand 4-5.6 SDs above their
# cytoplasm all round: at twice the magnification (nuclei ~17 px) one field
# lost 55 of 162 true nuclei and no false one, its clusters of small
# unstained cells each drawn as one cell (detection 0.81, fraction error 9
# pp; 0.94 and 1.5 pp at 3 SDs with the rise share). Thirty magnified
# fields: detection 0.937 -> 0.944, fraction error 2.07 -> 1.86 pp; ten sets
# at the usual magnification, the pale-stain, negative-control and second
# renderer's sets within +-0.0003 detection (4 SDs: magnified 0.941).
BRIGHTFIELD_PROMINENT_RING_SHARE = 0.7
BRIGHTFIELD_PROMINENCE_SD = 3.0
# In the other fields whose lamp was fitted to bare glass a candidate out of
# the stain must stand out all round too, by at least
# BRIGHTFIELD_PLATEAU_CONTRAST_SD local noise SDs and by at least
# BRIGHTFIELD_PLATEAU_RISE_SHARE of its own rise above the darker quarter of
# that circle (BRIGHTFIELD_PLATEAU_RING_QUANTILE). The nuclear threshold works
# from a median over five diameters, so where a cell body is narrower than
# that -- the ends of large elongated cells, the margin of a large stained
# cell whose X-gal fades out towards its edge -- the body itself clears it in
# crescents, each split into "nuclei" (a second renderer's field: 455
# candidates for 95 cells, 179 cells found, fraction error 29 pp). Such a piece
# rises far above the glass on one side and hardly above the body on the
# other. A faint nucleus among close neighbours clears the noise by little
# but its own cytoplasm all round: the sparse fields' fixed 5 SDs cost a dense
# negative control 0.975 -> 0.868 detection. On 24 second-renderer fields
# detection F1 0.951 -> 0.963, fraction error 2.66 -> 1.90 pp (that field 29
# -> 10 pp); our development sets' detection at most 0.0014 down (2468 0.9475
# -> 0.9473, 9393 0.9568 -> 0.9566, 5151 0.9333 -> 0.9330, 40 negative
# controls 0.9125 -> 0.9111) and their fraction errors all down (0.91 -> 0.86,
# 0.61 -> 0.58, 1.22 -> 1.15 pp; count error of the negatives 4.9 -> 4.2 %).
# (The darkest tenth of the circle instead: second renderer 0.965 / 1.72 pp,
# but dense fields of small cells lost up to 0.046 detection.)
BRIGHTFIELD_PLATEAU_CONTRAST_SD = 2.0
BRIGHTFIELD_PLATEAU_RISE_SHARE = 0.5
BRIGHTFIELD_PLATEAU_RING_QUANTILE = 0.25

# Brightfield: a nucleus size read by scale selection is distrusted when under
# this fraction of the stained cells' nuclear holes (segment.stain_hole_diameter;
# brightfield_nucleus_diameter) ...
HOLE_CHECK_RATIO = 0.8
# ... or over this multiple of them: holes read up to 40 % small (a nucleus up
# to 1.7x its hole; development fields' strongest blobs up to 1.68x), so a
# blob twice the holes' size is something larger -- whole cells, where their
# bodies outshine faint nuclei (a second-renderer field of grey cells on grey
# glass: "nuclei" of 43 px, 7 cells found of 241).
HOLE_CHECK_MAX_RATIO = 2.0
# A plain-brightfield field with too few stained cells' holes to check its
# nucleus size against takes the plate's (brightfield_nucleus_size's hint_px)
# where its own answer lies outside this range of it: the plate's fields share
# the magnification, and senescent nuclei are up to ~1.35x the diameter of
# normal ones (1.2-1.8x the area), so a field of mixed cells stays within it.
PLATE_NUCLEUS_RANGE = (0.7, 1.4)
# When a blob size fails that check, each peak of the scale profile at least
# SCALED_HOLE_MIN_STRENGTH as strong as the strongest is checked again against
# the holes read at its own scale -- the stain smoothed at SCALED_HOLE_SMOOTH of
# it, holes under SCALED_HOLE_MIN_DIAMETER of it left out -- and the first that
# passes is the nuclei (``blobs_checked_at_scale``). At a high magnification
# the gaps between X-gal granules are as wide as nuclei are at a low one and
# outnumber the nuclear holes: read at a fixed 1 px the holes came out half
# the nuclei's size, and fields magnified 2x were sized at half their nuclei
# (see the magnification test in tests/test_invariance.py).
SCALED_HOLE_MIN_STRENGTH = 0.25
SCALED_HOLE_SMOOTH = 0.1
SCALED_HOLE_MIN_DIAMETER = 0.25
# And whatever size passes (either way), a peak at least LARGER_PEAK_RATIO x as
# large and LARGER_PEAK_STRENGTH x as strong as the strongest that the holes
# confirm at its own scale is taken instead: at a high magnification resolved
# granules and their gaps make blobs, and "holes", as strong as the nuclei.
# On 512 plain-brightfield fields at the renderer's magnification (development
# sets, the benchmark's, seed 8181, both cross-check sets) no size changes; the
# cells' own peaks there read 0.27-0.49 of the strongest, and in a dense test
# field (tests/data, dense_sheet_glass_patches) a peak 2.0x as large and 0.77
# as strong was the cells': 2.0 and 0.75 took it (detection 0.74), so the
# margins are wide. The magnified benchmark's field that needs it: 2.8x, 0.98.
LARGER_PEAK_RATIO = 2.5
LARGER_PEAK_STRENGTH = 0.9

# Whole cells outshining their nuclei (brightfield_nucleus_size, no holes to
# check): the strongest blobs are cells when a circle one blob diameter from
# their centres lies on the lamp's bare glass for at least this median share
# (on a second renderer's unstained fields of dense cells on glass, drawn two
# ways, 0.69-1.0 where the blobs were the cells -- at 0.75 diameters, 0.11-0.48
# in five, the elongated cells read smaller than they are; at most 0.09 on our
# renderer's 30 unstained fields, whose nuclei lie in faint cytoplasm), and
# the nuclei are a smaller peak of the profile, at most
# this ratio of the cells' size (cells are rarely under twice their
# nucleus' diameter; those fields read 0.25-0.40).
WHOLE_CELL_RING_GLASS = 0.5
WHOLE_CELL_MAX_RATIO = 0.6

# Nucleoli outshining their nuclei (brightfield_nucleus_size, no holes to
# check): dense dots a third to two thirds of the nucleus' diameter, darker
# than the nucleus around them, are the strongest blobs of an unstained
# field, and the nuclei (ringed by cytoplasm, not by glass) a second peak of
# the profile at least NUCLEOLUS_PEAK_SHARE as strong, the strongest's size
# within NUCLEOLUS_RATIO of its own (negative development fields: the
# nuclei's peak 0.53-0.95 of the nucleoli's, 0.39-0.63 of its size; there
# the nucleus size read 0.3-0.55x the truth and cells were cut to a tenth).
# A whole cell's peak is fainter (under 0.5) or ringed by glass.
NUCLEOLUS_RATIO = (0.3, 0.7)
NUCLEOLUS_PEAK_SHARE = 0.5
# ... and only where the profile also has a peak at least this many times
# the nuclei's size (the cells around them): the same two peaks are, in a
# confluent field of dense dome-shaped cells, the nuclei and the cells (a
# fresh negative field's nuclei read 2.6x too large, 61 of 650 cells
# found), whose profile has nothing larger.
NUCLEOLUS_CELL_RATIO = 2.0

# Brightfield: an unstained cell's nucleus (a slightly denser spot where there is
# no X-gal) counts when its blob response is this many robust noise SDs strong.
BRIGHTFIELD_DARK_NUCLEUS_SNR = 6.0
# ... and is a blob of a nucleus's size: its response at half the nucleus
# diameter at most this many times that at the diameter (a dark speck on the
# glass, far smaller, responds more at the finer scale:
# :func:`sabgal.segment.finer_blob_ratio`).
BRIGHTFIELD_MAX_FINER_BLOB_RATIO = 1.6
# The same test drops the nuclear map's own candidates out of the stain
# (segment.drop_fine_specks), unless it would drop more than this share of
# them: then the nucleus size is wrong, not the candidates.
BRIGHTFIELD_MAX_SPECK_SHARE = 0.5

# Counterstain: a "nucleus" whose mean X-gal exceeds its counterstain and this
# many times the X-gal one diameter round it is a stray crystal whose colour
# bled into the counterstain (segment.drop_stain_peak_nuclei): a fresh
# neutral-red JPEG field, 11 crystals, had 18 false nuclei (xin/ring 2.0-5.7
# for the small ones) and no true one past 1.5.
COUNTERSTAIN_CRYSTAL_PEAK_RATIO = 2.0

# Brightfield, a lamp fitted to bare glass: unstained cells too faint for the
# foreground (a per cent or two of absorption under the pixel noise) show on
# the neutral density smoothed over half a nucleus, this many glass SDs above
# the glass (segment.faint_bodies); a blob holding no nucleus, mostly out of
# the foreground, with at least BRIGHTFIELD_FAINT_BODY_MIN_NUCLEI nucleus
# areas out of it, is such a cell (0 turns the step off).
BRIGHTFIELD_FAINT_BODY_SD = 4.0
BRIGHTFIELD_FAINT_BODY_MIN_NUCLEI = 1.0
BRIGHTFIELD_FAINT_BODY_PEAK_SD = 6.0
BRIGHTFIELD_FAINT_BODY_MAX_NUCLEI = 25.0
# ... not in a JPEG whose 8x8 blocks sit at levels of their own
# (filters.jpeg_blockiness over this; never-compressed images read 1.00, JPEG
# fields 1.3-3.4): at a cell's scale such blocks pass for faint cells (a JPEG
# negative control, 410 cells: 138 false ones).
BRIGHTFIELD_FAINT_BODY_MAX_BLOCKINESS = 1.1

# Where BRIGHTFIELD_DARK_NUCLEUS_SNR cuts into the population of peaks that pass
# every check (segment.truncated_population: 20 or more, their median under
# 1.5 SDs above it, the band just below holding under 0.35 as many; noise peaks
# grow more numerous the weaker they are), those this many SDs weaker too: a
# field whose unstained nuclei are faint (on the three 60-field development
# sets, the peaks 5-6 SDs strong were nearly all true nuclei in five fields,
# 233 of 239, and mostly noise in others). Detection F1 there 0.9453 / 0.9318 /
# 0.9502 -> 0.9462 / 0.9323 / 0.9541; held out: pale X-gal 0.8595 -> 0.8670, navy
# 0.8604 -> 0.8644, negative controls 0.9289 -> 0.9292, the second renderer's
# set unchanged. (Not in the lattice-hole search, which has its own threshold.)
BRIGHTFIELD_FAINT_NUCLEUS_BAND = 1.0
# ... and down to BRIGHTFIELD_MIRROR_NUCLEUS_BAND SDs weaker where the pale
# peaks (those of the response's negative: noise and texture give peaks of
# either sign, nuclei only dark ones) are at most a quarter as many as the
# dark ones between there and the threshold, counted in half-SD steps
# (segment.mirror_threshold), at least 20 dark; only where the smoothed
# X-gal is within a quarter of the floor of its median out of the stain (a
# stained cell's faint periphery is all dark granules). Where the field's
# unstained nuclei are faint as a whole -- pale X-gal as grey as the cells,
# whose unstained cells' nuclei stood 4-6 SDs strong -- the population test
# finds the band below as full as above and reads it as noise: one field
# found 345 of 650 nuclei. Pale-X-gal set (40 fields): detection 0.884 ->
# 0.905, fraction error 1.29 -> 0.92 pp (max 8.5 -> 4.6), count error 3.9
# -> 2.7 %; negative controls 0.931 -> 0.940 (count 4.6 -> 3.8 %); 99001
# 0.9547 -> 0.9582; the other ten sets, the magnified and the second
# renderer's within 0.0003. (Without the X-gal limit a dense field of 50 %
# stained cells took 55 false nuclei, none true, and its fraction error
# went 2.7 -> 13.7 pp.)
BRIGHTFIELD_MIRROR_NUCLEUS_BAND = 1.5

# Brightfield: an unstained nucleus is a blob, not a ridge. Where cells have a
# dark rim (an edge denser than the body) the rim of a faintly stained cell
# just past its stain, or two cells' rims meeting, answers the nucleus-scale
# blob filter; at the peak its smaller principal curvature is a small fraction
# of the larger (segment.blob_roundness: 1 round, 0.51 for a 2:1 ellipse, 0.35
# for 3:1). Candidates below this are not taken (0.3 cost true nuclei in dense
# sheets, where a close neighbour flattens a faint nucleus's peak; on 100
# development fields 0.25 refused 75 false candidates and 1 true one).
BRIGHTFIELD_MIN_UNSTAINED_ROUNDNESS = 0.25

# Brightfield: a stained cell's nucleus (a pale hole in the blue) missed by the
# threshold counts when its blob response on the nuclear map is this many robust
# SDs of the stained part of the field strong, more than this many nucleus
# diameters from any nucleus found (a cell's worth of stain without one), and the
# stain encloses it or is centred on it (segment.add_enclosed_stained_nuclei).
# (A search without the stain's say, >= 5 SDs and 2 diameters, added as many
# false nuclei -- gaps between granules in large stained cells -- as true ones
# once this one ran: without it brightfield detection and positive F1 rose on
# 5 of 6 development sets, seed 5151 0.923 / 0.927 -> 0.926 / 0.932, seed 5858
# 0.931 / 0.933 -> 0.932 / 0.936, count error 5.4 -> 4.9 % and 5.7 -> 4.9 %.)
BRIGHTFIELD_ENCLOSED_NUCLEUS_SNR = 3.0

# Brightfield: a nucleus the nuclear map's threshold found in the stain stays
# only if the stain rings it at this many times its own value or peaks within
# 1.25 diameters (segment.drop_unowned_stained_nuclei): the threshold also
# takes the gaps between a large stained cell's granules, each of which split
# it (one development field: 55 such false nuclei). Brightfield detection /
# positive F1: seed 5151 0.926 / 0.932 -> 0.927 / 0.936, 7272 0.940 / 0.936 ->
# 0.941 / 0.941, 5858 0.932 / 0.936 -> 0.934 / 0.944; count error 4.9 -> 4.1,
# 3.5 -> 2.9, 4.9 -> 3.3 %. (1.5x: detection and positive F1 up by <= 0.004, fraction
# and count error up on all three of those sets; 3x: all a little worse than 2x.)
BRIGHTFIELD_OWNED_NUCLEUS_ENCLOSURE = 2.0
BRIGHTFIELD_ENCLOSED_NUCLEUS_SPACING = 2.5

# Brightfield: where the lamp's glass mask lies among the nuclei and within a
# diameter of them at least this many times its field-wide rate (glass avoids
# nuclei, which cells surround: the "glass" is the faint cytoplasm of a sheet),
# every gap in the lattice of nuclei holds a cell, and the nuclei the searches
# missed there (too close for their spacing, or too weak) are sought again:
# more than BRIGHTFIELD_HOLE_SPACING x the field's median nearest-neighbour
# distance from every nucleus, unstained ones from BRIGHTFIELD_HOLE_UNSTAINED_SNR
# noise SDs (the stained search keeps its strength and the stain's say). On 270
# plain-brightfield development fields this ran on 9: detection F1 0.65 -> 0.84,
# 0.81 -> 0.92, 0.89 -> 0.94 on the three sheets with missed nuclei, at most
# 0.009 down on the others; fraction error summed over them down 2.9 pp; the
# second renderer's fields unchanged (none that sheet-like). From a ratio of 0.8
# instead, 16 fields ran it and detection F1 fell on seed 5151 (0.927 -> 0.926).
BRIGHTFIELD_HOLE_NEAR_NUCLEI_RATIO = 1.0
# So is a field in which the lamp found no glass to fit (its bright-percentile
# fallback) and the foreground covers at least this share: no bare glass
# anywhere, a sheet whose lamp estimate says nothing of where its cells lie.
BRIGHTFIELD_HOLE_NO_GLASS_FOREGROUND = 0.9
# So is a field whose lamp was fitted to glass but found under
# SHEET_GLASS_FRACTION of it, and whose foreground covers at least this share:
# a dense field, its few patches of glass too small to say where cells are
# missing. Of 505 development fields it changed 35: detection 0.75 -> 0.94
# and 0.75 -> 0.97 on two dense fields whose unstained nuclei are barely
# denser than their bodies, 0.40 -> 0.68 on a pale-X-gal one, 0.69 -> 0.95 on
# a negative control; the sets' fraction errors 2468 1.09 -> 1.00, 9393 1.09
# -> 0.88 pp, 5151 1.23 -> 1.25; the worst moves the other way +1.1 and +2.3 pp
# on two fields, detection at most -0.008. (0.8 until the search repeated,
# below: a fresh confluent JPEG field whose unstained nuclei read ~4 SDs
# (lamp glass 12 %, foreground 0.76) had 239 cells for 650, 19.8 pp.)
BRIGHTFIELD_HOLE_DENSE_FOREGROUND = 0.7
# The hole search repeats, each pass with the median nearest-neighbour
# distance of the nuclei found so far, until a pass adds none (at most this
# many): where the first searches found only a third of a sheet's nuclei, that
# spacing is too wide for the holes between them. With the 0.7 gate above: that
# field 239 -> 444 cells, detection 0.21 -> 0.47, fraction error 19.8 ->
# 2.9 pp (its 42-field set, seed 20261206: brightfield 2.31 -> 1.11 pp, max
# 19.8 -> 3.0, count 6.1 -> 3.9 %, detection 0.863 -> 0.882); development sets
# within +-0.001 detection (5151 0.9358 -> 0.9361, 9393 0.9565 -> 0.9572,
# 2468 0.9486 -> 0.9485, mixed 7474 0.9628 -> 0.9633, negatives 0.9198 ->
# 0.9204), fraction MAE within +-0.02 pp; a second fresh set (4747) 0.9390 ->
# 0.9392; the second renderer's fields unchanged.
BRIGHTFIELD_HOLE_PASSES = 4
BRIGHTFIELD_HOLE_SPACING = 0.7
# (4.0 until the search repeated: at 3.5 the fresh confluent JPEG field above
# 444 -> 549 cells for 650, detection 0.47 -> 0.67, fraction error 2.9 -> 0.6
# pp -- its set, seed 20261206, brightfield 1.11 -> 0.95 pp, count 3.9 -> 2.7 %,
# detection 0.882 -> 0.906; the holes keep noise peaks out: development sets
# 5151, 2468, 9393, 3131, 7474, the benchmark and 4747 moved by at most 0.0003
# detection and 0.004 pp, five fields by one to five cells)
BRIGHTFIELD_HOLE_UNSTAINED_SNR = 3.5
# ... and an unstained one found there at least this fraction of the median
# strength (blob response, in noise SDs) of the unstained nuclei the field
# already has: a missed nucleus is as dense as its neighbours' (too close to
# them for the first search's spacing), while the pale margin of an enlarged
# cell, which fills a gap in the lattice with no nucleus of its own, gives
# weak blobs of its mottling. On the 55 development fields (seeds 5151, 2468,
# 9393, 3131, 7474, 20261122) where the hole search ran, of 271 unstained
# candidates it added, 156 on a true nucleus (0.55-4.3x the median), 115
# not (0-10x); this fraction turned away 48 of the false ones and none of
# the true -- 25 in one field of enlarged pale cells (the benchmark's field
# 22, where 35 of the 36 it added were false).
BRIGHTFIELD_HOLE_RELATIVE_SNR = 0.5
# ... when the field has at least this many unstained nuclei to take that
# median over: a sheet with three or four found (its other unstained cells'
# nuclei the very ones missed) reads their median as 6 or as 12 noise SDs on
# a change of lamp colour by a few thousandths of an OD, and at 12 the hole
# search added none of its 40 missed nuclei (tests/data
# no_glass_sheet_unstained: detection 0.90 -> 0.78)
BRIGHTFIELD_HOLE_RELATIVE_MIN_NUCLEI = 10

# Brightfield: a stained cell of at most this share of the area of the stained
# neighbour it shares the most border with, sharing at least this share of its
# outline with it, is a piece of that neighbour cut off by a false "nucleus" (a
# pale gap between granules) and is merged back.
BRIGHTFIELD_FRAGMENT_AREA_RATIO = 0.4
BRIGHTFIELD_FRAGMENT_SHARED_OUTLINE = 0.4

# Brightfield: a nucleus candidate whose centre lies less than this many nucleus
# diameters inside a cell body that holds a deeper candidate is the body's pale rim.
BRIGHTFIELD_RIM_DEPTH_NUCLEI = 0.6

# ... or less than this fraction as deep as a deeper candidate of its body (any
# of them: in a clump of touching cells the deepest may lie in another cell) with
# no neck between them (one cell's pale margin, however large the cell). Measured
# against the deepest only, enlarged stained cells touching in sparse fields kept
# their margins' granule gaps as nuclei: fresh sets 31415 and 424242 6.1 pp at
# most, now 5.2 and 4.9; 18 of 420 fields moved, detection by at most 0.0003.
BRIGHTFIELD_RIM_RELATIVE_DEPTH = 0.5

# The check spares a candidate in the stain (X-gal smoothed at half a nucleus
# at or above the positivity floor): a stained cell's pale margin is where its
# stain thins out, and a candidate well inside the blue is the nucleus of a
# stained cell at the edge of its clump. Of the candidates the check dropped on
# 120 development fields (seeds 2468 and 5151) 176 of the 195 in the stain lay
# on a true nucleus, against 82 of the 278 out of it. Sparing them took
# detection F1 0.9462 -> 0.9475, 0.9323 -> 0.9333, 0.9553 -> 0.9568 on the
# three 60-field sets (29 fields up, 6 down) and their fraction errors 1.00 ->
# 0.91, 1.23 -> 1.22, 0.69 -> 0.61 pp; 30 negative controls: detection
# unchanged, one field one false positive more.
#
# Where the lamp estimate (fitted to bare glass) found glass on less than this
# share of the field, the check does not run at all: in a dense field the rim
# of a clump is lined with the nuclei of unstained cells whose faint cytoplasm
# does not show, and in the stain it is spared as above. (Sparser fields keep
# the check out of the stain: there such candidates are mostly the ends of
# faint cell bodies.)
BRIGHTFIELD_RIM_CLEAR_GLASS_FRACTION = 0.3

# In a dense field (BRIGHTFIELD_DENSE_GLASS_FRACTION) the check spares too a
# candidate out of the stain that is as plainly a nucleus as the field's deep
# candidates (segment.typical_unstained_nuclei): no X-gal at the positivity
# floor on the circle 0.75 diameters round it, and a blob response between
# these multiples of the median of the candidates at least
# BRIGHTFIELD_RIM_DEPTH_NUCLEI deep (out of the stain, at least
# BRIGHTFIELD_HOLE_RELATIVE_MIN_NUCLEI of them) ...
BRIGHTFIELD_RIM_SPARE_RELATIVE_SNR = (0.5, 2.0)
# ... when that median is at least this many noise SDs (else the deep
# candidates are no yardstick: in a field of mostly stained cells those out
# of the stain are mostly pale margins themselves: median 6.5 on a fresh
# field 85 % senescent, whose fraction error sparing there took from 9.4 to
# 14.2 pp). The nucleus of a small pale cell beside a stained one lies on
# the rim of the stained cell's body: the pale cell's own body, under the
# foreground's limit, does not show, its nucleus does. On 240 fresh
# plain-brightfield fields (seeds 161803, 99001, 777001, 31415, 8181, 27182)
# the check dropped 577 candidates, 328 on a true nucleus no other candidate
# took; the middle 80 % of those true ones had 0.73-1.15 x the median blob
# strength of the field's kept ones, of the false 0.19-2.7 (pale margins
# weak, debris strong). Sparing took detection F1 0.9402 -> 0.9419, 0.9366
# -> 0.9368, 0.9413 -> 0.9437, 0.9605 -> 0.9606, 0.9534 -> 0.9541, 0.9441 ->
# 0.9466 (one dense field of small pale cells 0.83 -> 0.86), worst fraction
# errors unchanged; negative controls (6464) 0.9266 -> 0.9280, count error
# 4.85 -> 4.94 %; pale X-gal (5858) 0.8751 -> 0.8753. Not in sparse fields:
# every field it helped had lamp glass on under half of it, and in sparse
# ones (pale X-gal read partly as grey, dark debris among few cells) it
# spared false candidates: a 57-cell pale field 0.83 -> 0.74.
BRIGHTFIELD_RIM_SPARE_MIN_SNR = 8.0

# Brightfield: the faint bodies of unstained cells grow (hysteresis,
# segment.brightfield_foreground) only where the X-gal smoothed at half a
# nucleus is under this share of the positivity floor. Grown into stained
# cells' pale margins too, unstained neighbours took them: fresh set 99001,
# one field's positive fraction 2.4 -> 11.3 pp off.
BRIGHTFIELD_FAINT_BODY_MAX_STAIN = 0.25

# Brightfield: a nucleus candidate larger than this many typical nucleus areas is
# a pale patch (a stained cell's thin margin, a gap in a granular stain), not a
# nucleus: it would split its cell.
BRIGHTFIELD_MAX_NUCLEUS_AREAS = 3.0

# Brightfield: a foreground piece with no nucleus and no X-gal that nowhere
# lies this many nucleus diameters deep is a strand (a dust ring the
# threshold broke open, a fibre), not a cell (segment.drop_empty_rings): a
# cell is more than a nucleus wide somewhere.
BRIGHTFIELD_STRAND_MAX_DEPTH_NUCLEI = 0.6

# Brightfield: a lobe of a cell clump at least this many nucleus diameters in
# inscribed radius, holding no nucleus, is a cell whose nucleus was not seen
# (segment.add_lobe_seeds) ...
BRIGHTFIELD_LOBE_RADIUS_NUCLEI = 1.0

# ... when the clump narrows to this fraction of the lobe's width on the way
# to the nearest nucleus.
BRIGHTFIELD_LOBE_NECK = 0.7

# Brightfield, dense fields: X-gal smoothed at this many nucleus diameters
# (sigma) is one blob per stained cell; a blob peak at least this many times
# the positivity floor, over a diameter from every nucleus and parted from the
# nearest by a dip under this share of its peak, seeds a stained cell whose
# nucleus went unseen (segment.add_stain_blob_seeds; a fresh set of dense
# grey-navy fields, seed 161803: 138 of 437 stained cells in one field had no
# seed; there 87 % of the blob seeds landed in a cell with no other)
BRIGHTFIELD_STAIN_BLOB_SIGMA_NUCLEI = 0.75
BRIGHTFIELD_STAIN_BLOB_MIN_LEVEL = 2.0
BRIGHTFIELD_STAIN_BLOB_NECK = 0.7

# Brightfield: a "cell" on bare glass no bigger than this many typical nucleus
# areas is a speck of debris: a cell's body reaches well past its nucleus ...
BRIGHTFIELD_SPECK_NUCLEI = 2.0
# ... nor, up to this many nucleus areas, bigger than this fraction of the
# field's median cell holding a nucleus (a speck's blur halo can double it;
# cells are far larger)
BRIGHTFIELD_SPECK_CELL_FRACTION = 0.15
BRIGHTFIELD_SPECK_MAX_NUCLEI = 5.0
# The lamp's glass mask (4 px blocks, eroded by one) stops this many px (full
# resolution) short of every object; pixels in that margin, off the foreground,
# within this many glass noise SDs of the glass level are glass too, in every
# set-up (segment.close_glass_margin)
GLASS_MARGIN_PX = 4.0
GLASS_MARGIN_SD = 2.0
# Brightfield: a "cell" under this share of whose pixels the image shows any
# cell body, with at least this share on known glass, is a nucleus found in
# the glass's noise and the territory drawn around it (segment.drop_bodiless_cells)
BRIGHTFIELD_BODILESS_MAX_BODY = 0.05
BRIGHTFIELD_BODILESS_MIN_GLASS = 0.2
# Brightfield: nor is a "cell" smaller than this many nucleus areas, clear of
# X-gal (mean under this fraction of the positivity floor), with at least this
# share of it on known glass: a real cell's body reaches well past its nucleus,
# and one that small on glass is a noise blob or speck and its territory
# (segment.drop_small_clear_cells_on_glass)
BRIGHTFIELD_SMALL_CELL_NUCLEI = 4.0
BRIGHTFIELD_SMALL_CELL_STAIN = 1 / 3
BRIGHTFIELD_SMALL_CELL_MIN_GLASS = 0.1
# ... and one as small and as clear whose "nucleus" is at least this many times
# as dense (neutral OD) as the field's median nucleus is a dark speck of debris,
# on glass or not (segment.drop_dense_specks; 40 fresh fields, seed 9191: 11
# specks in one sparse field, 0.12-0.19 OD against real nuclei's 0.04-0.06);
# so is a "cell" of any size whose body's median reads as much
# (segment.drop_dense_bodies: debris seeded as a cell whose nucleus did not
# show; on 160 development fields the cores of the real cells seeded that way
# read at most 1.1x the nuclei, those of debris 1.7-24x)
BRIGHTFIELD_DENSE_SPECK_RATIO = 2.0
# ... and so is one up to this many times that small size whose "nucleus" is
# at least this many times as dense (a clump of dirt, its blur in its
# territory): over six development sets, of 83 such "cells" 64 lay on no true
# cell, 6 matched one (IoU >= 0.5)
BRIGHTFIELD_DENSE_CLUMP_AREA_FACTOR = 2.0
BRIGHTFIELD_DENSE_CLUMP_RATIO = 3.0

# Touching cells meet along the pale seam between their bodies (each is
# thickest round its nucleus, stained or not), so the nuclei flood the summed
# density smoothed at SEAM_SIGMA_NUCLEI nucleus diameters, scaled to the
# cells' own range (segment.seam_map), with the size-weighted distance in
# nucleus radii added as a tie-break at 1/SEAM_WEIGHT of the seam's weight
# (segment.size_weighted_territories), in every set-up: the distance alone
# drew borders by nucleus size, and gave enlarged unstained cells (large,
# flat, their nuclei only 1.2-1.8x) 0.7x their area and small stained cells
# among enlarged ones 1.2x theirs. This is the seeded watershed on the image
# of CellProfiler's "Propagation" secondary objects. Detection F1, plain
# brightfield, 40-field sets: 99001 0.9368 -> 0.9542, 161803 0.9418 ->
# 0.9549, 777001 0.9462 -> 0.9536, 27182 0.9466 -> 0.9511, 31415 0.9606 ->
# 0.9596, 8181 0.9546 -> 0.958, fresh 424242 0.9486 -> 0.9576, negatives
# 6464 0.928 -> 0.933 (positive-call F1 up on all but 31415, 0.9574 ->
# 0.9559; the largest fraction error on 99001 10.6 -> 3.4 pp, on 31415 9.4
# -> 6.1); mixed sets of 42 (seeds 20261122, 99002, the second before the
# blocks were capped at 2 px): counterstain 0.981 -> 0.994 and 0.974 -> 0.987, DAPI
# 0.968 -> 0.975 and 0.972 -> 0.982. Weight and smoothing were chosen on
# 99001 and 161803 (flooding every pixel): weight 6 gained a third of it,
# 24 most, 100 lost positive-call F1 (0.95 -> 0.947 on both); smoothing at
# 0.15 or 0.4 diameters, less.
SEAM_WEIGHT = 48.0
SEAM_SIGMA_NUCLEI = 0.25
# ... the flood running on blocks so that a nucleus spans about this many of
# them, blocks at most SEAM_MAX_BLOCK_PX wide (a flood costs time with the
# pixels it visits: at every pixel it made the pipeline a quarter slower; a
# 10 px nucleus, 2 px blocks; 3 px blocks for 13 px nuclei lost a cell in 58
# on a small sheet, detection 0.911 -> 0.875, and 27182 0.9511 -> 0.9505)
SEAM_BLOCK_NUCLEUS_PX = 4.0
SEAM_MAX_BLOCK_PX = 2

# The borders between touching cells move onto the cells' own edges where the
# image shows them (segment.borders_on_outlines), in every set-up: a faint
# dark line in the grey (neutral) density, sought at this scale (px at full
# resolution: the blurred half-width of a thin edge through the optics),
# within this many nucleus diameters of the border the territories drew,
# never within this many of a nucleus (its own edge, the stain ringing it); a
# line's strength counts from LOW noise units and fully from HIGH. Where no
# line shows, the borders stay where they were. Detection F1 on development
# fields: brightfield 0.898 -> 0.906 (60) and 0.920 -> 0.923 (50), DAPI
# 0.952 -> 0.957 (30), counterstain 0.963 -> 0.965 (30); cell counts unchanged.
OUTLINE_SIGMA_PX = 2.0
OUTLINE_BAND_NUCLEI = 0.75
# ... and between two cells with no X-gal anywhere in them, within this many
# nucleus diameters: a large pale cell's edge beside a small neighbour lies
# far past the border the nuclei drew (multiplicatively weighted by nucleus
# size, but such cells grow their area 3-5x and their nucleus 1.2-1.8x), and
# without stain nothing else places it. Not where either cell is stained:
# granules and the stain's edge leave lines in the grey density too (the
# same wide band around every border: detection F1 on fresh sets 161803 0.928
# -> 0.916, 99001 0.934 -> 0.933), and the stain already gives stained cells
# their cytoplasm (segment.size_weighted_territories). Only those cells'
# pixels are flooded again, so no stained cell gains or loses a pixel.
# Plain-brightfield detection F1 on five 40-field sets: 99001 0.9335 ->
# 0.9366, 161803 0.9281 -> 0.9301, 27182 0.9413 -> 0.9432, 31415 0.9590 ->
# 0.9604, 8181 0.9523 -> 0.9534; positive-call F1 within 0.0003 of before.
OUTLINE_WIDE_BAND_NUCLEI = 1.5
OUTLINE_CLEAR_NUCLEI = 0.5
OUTLINE_LOW = 1.0
OUTLINE_HIGH = 3.0

# Brightfield: unstained cells clear inside but ringed by a thin dark outline
# (segment.outlined_cells) are the star-shaped regions their outlines close,
# sought where the lamp, fitted to bare glass, found it on less than
# OUTLINED_MAX_GLASS_FRACTION of the field (in sparser fields the foreground
# sees the cells against the glass, and a speck's "outline" would make it a
# cell). A path round a nucleus counts as its cell's outline when it crosses
# OUTLINED_MIN_STRENGTH noise units of line on average and the density just
# inside it exceeds that just outside by at most OUTLINED_MAX_STEP_SD glass
# noise SDs (a line, not the edge of a body); the field must show them: its
# median path OUTLINED_FIELD_STRENGTH or more, the accepted ones' median step
# OUTLINED_FIELD_STEP_SD or less. On 210 brightfield development fields
# (seeds 5151, 2468, 9191, 7272, 6161, 5858) detection F1 rose in each set
# (pooled 0.9153 -> 0.9230 on 5151, 0.911 -> 0.913 on 2468); one field of
# faint outlined cells 0.73 -> 0.93; a second renderer's soft-edged cells
# (no outlines) unchanged.
OUTLINED_MAX_GLASS_FRACTION = 0.4
# ... or this where the lamp read its glass off the glass's own histogram peak
# (JPEG glass, faint cells): the clear insides of outlined cells are glass to
# it, half a field of them (one such field 0.57 -> 0.72). Not everywhere: in a
# second renderer's sparse field at 0.6 a speck's "outline" made cells (0.86
# -> 0.39, 7.7 -> 28.6 pp).
OUTLINED_MAX_GLASS_FRACTION_PEAK = 0.6
# The same where that glass lies on the cells (segment.glass_among_nuclei, and
# near the nuclei at a sheet's rate): it overstates the glass by their faint
# cytoplasm. A fresh field of faint outlined cells, 8 % stained, whose lamp
# took 51 % of the field for glass (24 % true): detection 0.10 -> 0.92. Not
# past 0.6 (a sparse negative field read as a sheet at 0.81: its JPEG blocks
# made outlines, 0.93 -> 0.50); no development field moved.
# (2.0 until the outlined-cell gate followed the lamp's glass peak: at 1.75
# a DAPI field of large faint outlined cells 0.69 -> 0.77 detection, a
# brightfield field of clear outlined cells 0.72 -> 0.78, development sets'
# detection +0.0007 to +0.0026, 4242 and the second renderer's sets unchanged.
# 1.75 until faint outlines of a sheet's cells were seen half left open: at
# 1.25 negative controls 3131 detection 0.913 -> 0.920 (one field 0.60 ->
# 0.75), 5151 0.9336 -> 0.9357, 2468 0.9481 -> 0.9485, 9393 unchanged; a
# mixed set with DAPI fields (7474) and the second renderer's unchanged; the
# field gate below still keeps fields of no outlines out.)
OUTLINED_MIN_STRENGTH = 1.25
# (The field's median path: 1.5 until this release, set when a path needed
# 1.75 to count; once paths counted from 1.25, fields whose outlined cells'
# paths lie mostly at 1.25-1.5 were refused whole. Just under the path gate,
# about half a field's clear nuclei must show a path that counts: two fresh
# sheets of faint outlined cells 0.44 -> 0.73 and 0.53 -> 0.71 detection, a
# pale-X-gal sheet 0.09 -> 0.59, DAPI fields of the benchmark and a mixed set
# 0.75 -> 0.79 and 0.90 -> 0.95; four development fields lost 0.015-0.067
# (sets 9393, 2468, 777001, 3131 -0.0001 to -0.0008); the second renderer's
# soft-edged fields, whose step gate refuses them, unchanged.)
OUTLINED_FIELD_STRENGTH = 1.2
OUTLINED_MAX_STEP_SD = 2.0
OUTLINED_FIELD_STEP_SD = 1.0

# Brightfield: a cell of which more than this share lies outside the foreground
# is too faint to have a blur halo (its extent is a minimum reach around its
# nucleus), and keeps its edge (segment.untrimmable_cells).
BRIGHTFIELD_TRIM_MAX_OUTSIDE = 0.1

# Brightfield: where the lamp estimate, fitted to bare glass, found it on less
# than this share of the field, the field is one confluent sheet: what the
# foreground leaves between its cells, up to this many nucleus diameters from
# a cell and off the glass the lamp saw, is their faint margins
# (segment.fill_sheet_gaps). So is it in a field the lamp found no glass in
# whose gaps between cells are stained (the stained-sheet test below,
# SHEET_GAP_STAIN_FRACTION): there the cells were drawn as discs of the sheet
# extent with unassigned stained cytoplasm between them. And so is it in a
# sheet whose lamp "glass" lies on the cells (sheet_mask and on_cells: the
# lamp was fitted to their faint cytoplasm, and the foreground, measured
# against that level, leaves the same cytoplasm out between the cells):
# development sheets found 15-31 % background where 2-4 % is true; filling
# within one diameter raised detection F1 on 9 of 12 such development fields
# (by up to 0.09; three lost up to 0.009), on two negative controls by 0.05
# and 0.06; reaching three diameters did no better.
BRIGHTFIELD_CONFLUENT_GLASS_FRACTION = 0.05
BRIGHTFIELD_SHEET_GAP_NUCLEI = 1.0

# Without a counterstain (plain brightfield, or DAPI beside such an image): when
# the lamp estimate (from the image itself) was fitted to bare glass it found on
# less than this share of the field, the field is a confluent sheet (with or
# without a counterstain): the faint cell bodies are what the foreground calls
# glass, and each cell reaches at
# least SHEET_EXTENT_NUCLEI nucleus diameters from its nucleus, capped at half
# the gap to its nearest neighbour (segment_cells' min_extent_nuclei), instead
# of segment.min_cell_extent_nuclei. A lamp that found no glass to fit (its
# bright-percentile fallback) says nothing: that also happens in sparse fields
# (strong vignetting, JPEG).
SHEET_GLASS_FRACTION = 0.15
SHEET_EXTENT_NUCLEI = 2.5
# A lamp estimate that found glass on too little of the field to fit it (its
# bright-percentile fallback, which takes the brightest 3 % for the lamp) says
# the same when what the foreground leaves between the cells is stained: the
# median X-gal there at least this fraction of the positivity floor. Glass
# carries no X-gal, and beside it the brightest 3 % are glass, so a field with
# glass reads ~0 there (development fields with glass, sheets: <= 0.0001 and
# 0.010-0.040 OD); an unstained sheet is not recognised this way. The nuclei
# must also lie close enough for sheet cells to meet (_close_packed): the
# fallback also meets fields with glass whose vignetting or colour defeats the
# fit, and there sheet-sized cells reach onto the glass (one field half glass:
# detection F1 0.94 -> 0.71).
SHEET_GAP_STAIN_FRACTION = 1 / 6
# ... and when the lamp's glass mask lies on the cells (segment.glass_among_nuclei:
# it is their faint cytoplasm) and covers less than this share of the field ...
SHEET_ON_CELLS_GLASS_FRACTION = 0.5
# ... which in plain brightfield, whose guessed nuclei include false ones on glass
# (they put some of a sparse field's glass "among" them: up to 0.53x on
# development fields, sheets 0.67-1.16x), means lying within one nucleus
# diameter of the nuclei at this many times its field-wide rate or more.
BRIGHTFIELD_SHEET_NEAR_NUCLEI_RATIO = 0.6
# ... or, the cells large (their cytoplasm mostly more than a diameter from the
# nucleus), within half the nuclei's median spacing of them at this many times
# its field-wide rate: glass between cells lies farther out (sparse and
# clustered development fields 0.10-0.77x; sheets of large cells 0.83-1.22x,
# two of them, on a fresh set, at 0.83 and 0.85: the line was 0.85)
BRIGHTFIELD_SHEET_SPACING_RATIO = 0.82
# ... or this, where the lamp's glass runs only as a thin network between the
# cells -- 90 % of it within this many nucleus diameters of the nearest pixel
# off it (segment.glass_depth): glass between separate cells is as wide as the
# gaps between their bodies, a sheet's thinnest margins are a thin network.
# Of 268 brightfield development fields (seeds 5151, 2468, 9393, 3131, 7474,
# 20261122, second renderer) the 44 that reach this look read 0.25-0.86 (sparse
# ones up to 0.79); the six whose glass ran that thin (0.43-0.73 diameters)
# were all sheets (true cover 0.95-0.99); the thinnest glass between separate
# cells ran 0.85 deep (a second-renderer field, 48 % covered; a half-covered
# test field, 0.92 deep, reads 0.74 on spacing and is drawn as a sheet with
# the lower line: detection F1 0.92 -> 0.51).
# Only one field's cells changed: the benchmark's sheet of large faint cells
# (22 % lamp "glass", 2 % true; 0.57 deep), which read 0.63 once more of its
# nuclei were found, from small discs round its nuclei (detection F1 0.51) to
# the sheet (0.96). The body check below still applies.
BRIGHTFIELD_THIN_GLASS_DEPTH_NUCLEI = 0.75
BRIGHTFIELD_THIN_GLASS_SPACING_RATIO = 0.55
# That second look is taken even when the checks one diameter out found the
# "glass" off the cells, as long as some of it lies within a diameter of the
# nuclei at this many times its field-wide rate: one fresh field's sheet of
# large cells (lamp "glass" 22 % of the field, 4 % true) read 0.28 there and
# 0.85 within half the spacing; a sparse second-renderer field of small
# cells far apart (53 % true glass) read 0.08 and 1.09 -- near its nuclei
# there is no glass at all, only beyond their visible bodies.
BRIGHTFIELD_LARGE_SHEET_NEAR_NUCLEI_RATIO = 0.15
# The spacing rule is not taken where the foreground, measured from the glass
# level alone (no lamp mask), already covers at least this many typical nucleus
# areas per nucleus found: a body per nucleus of that size (a disc reaching ~1.7 nucleus
# diameters from its centre) is the cells' cytoplasm seen whole, and the glass
# around such bodies is glass. The three development fields that took the
# spacing rule for a sheet read 1.8, 6.0 and 8.8; a second-renderer field of
# separate grey cells on white glass (spacing ratio 0.821) read 16.2 and was
# drawn as a sheet, every cell reaching across the glass (detection F1 0.30;
# 0.94 with the rule not taken). The line was 12 until the check was confined to
# fields with glass (below): of the fields that then reach it, a magnified field
# of 50 small faint cells spread over 52 % glass (lamp 47 %) read 11.8 and was
# drawn as a sheet (F1 0.22; 0.94 kept apart), and one with 35 % glass (lamp 51 %)
# read 8.8 and scores the same either way (0.904, 0.901).
BRIGHTFIELD_SHEET_MAX_BODY_NUCLEI = 10.0
# ... and that check is taken only where the lamp found at least this share of
# the field glass. In a sheet of large stained cells with pale unstained cells
# between them, the stained cells' bodies alone lift the foreground per nucleus
# past the line while the unstained ones go unseen: four fresh-set sheets (true
# glass 1-8 %, lamp "glass" 1-19 %) read 18-21 and their unstained cells came out
# as small discs round their nuclei (detection F1 0.79, 0.76, 0.92, 0.92; as
# sheets 0.94, 0.95, 0.94, 0.96). Separate cells spread over glass leave the lamp
# plenty of it (the second-renderer field above: 36 %; of ~430 development
# fields, 12 reached the check).
BRIGHTFIELD_SHEET_BODY_CHECK_MIN_GLASS = 0.25


# Plain brightfield whose lamp estimate found no glass (its bright-percentile
# fallback): the cells are all but what lies this many SDs below the level the
# foreground reads as glass (segment.sheet_foreground). Such fields are
# confluent (true cell cover over 0.85 on 18 of 19 development fields, 0.61 on
# the other, whose result the rule leaves as it was);
# their unstained cells came out as small discs round their nuclei (foreground
# 12-28 % of the field). On the seven such fields of three 60-field sets:
# detection F1 0.887 -> 0.939, fraction MAE 1.47 -> 1.05 pp; on twelve from
# seven other sets 0.804 -> 0.907 (one field of navy X-gal 0.23 -> 0.66, its
# fraction error 3.0 -> 8 pp: the learnt threshold moved); the results barely
# move for 1-4 SDs (measured with enclosed gaps filled, as brightfield_foreground
# fills its holes: 0.937 / 0.904; left as glass, as now, is physically right).
# (Extending it to sheets whose lamp was fitted to glass it found on under 5 %
# or 15 % of the field while the foreground left most of it as "glass" gained
# up to 0.0015 detection F1 on development sets, but every gate tried -- glass
# share, or the lamp's glass lying well below the foreground's level -- had a
# field at its edge that a colour cast moved across: sample04 by 5 cells, a
# negative control's detection 0.92 -> 0.45.)
BRIGHTFIELD_NO_GLASS_BODY_SD = 2.0


def _close_packed(nuclei: np.ndarray, diameter_px: float) -> bool:
    """Whether the nuclei's median nearest-neighbour distance is at most two
    sheet cells' reach (2 x (0.5 + SHEET_EXTENT_NUCLEI) diameters; False
    with under 10 nuclei)."""
    nn = segment.median_neighbour_distance(nuclei)
    return nn is not None and nn <= 2 * (0.5 + SHEET_EXTENT_NUCLEI) * diameter_px


def _stained_gaps(xgal: np.ndarray, foreground: np.ndarray, floor: float) -> bool:
    """Whether the median X-gal of what ``foreground`` leaves (at least 1000
    px) is at least SHEET_GAP_STAIN_FRACTION of the positivity ``floor``."""
    gaps = ~foreground
    return int(gaps.sum()) >= 1000 and float(filters.median(xgal[gaps])) >= SHEET_GAP_STAIN_FRACTION * floor


def segment_image(prep: StainedImage, *, nuclear: np.ndarray | None = None,
                  config: Config | None = None,
                  od_sum: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Nuclei and cells (stage 3). Returns (cells uint32, nuclei uint32, foreground, diameter_px).

    Sizes come from the nucleus diameter estimated on the image; when nuclei
    are large the maps are block-averaged so a nucleus spans about
    :data:`WORKING_NUCLEUS_PX` pixels, and the labels are enlarged back.
    """
    return _segment(prep, nuclear=nuclear, config=config, od_sum=od_sum)[:4]


def _borders_on_outlines(cells: np.ndarray, nuclei: np.ndarray, grey: np.ndarray, *, f: int,
                         diameter_px: float, strength: np.ndarray | None = None,
                         stain: np.ndarray | None = None, floor: float = 0.0) -> np.ndarray:
    """:func:`segment.borders_on_outlines` with the outline map of ``grey``
    (working scale ``f``, nucleus diameter ``diameter_px`` there), computed
    only over the box holding the cells' shared borders, their bands and
    the filter's reach (a sparse field's few touching cells); ``strength``:
    that map over the whole field, when the caller has it. ``stain``: the
    smoothed X-gal: between two cells in which it stays under ``floor``
    everywhere, the band reaches OUTLINE_WIDE_BAND_NUCLEI diameters."""
    sigma = max(1.0, OUTLINE_SIGMA_PX / f)
    band = OUTLINE_BAND_NUCLEI * diameter_px
    shared = morph.inner_boundaries(cells, shared_only=True)
    if not shared.any():
        return cells
    rows, cols = np.flatnonzero(shared.any(axis=1)), np.flatnonzero(shared.any(axis=0))
    wide_px = OUTLINE_WIDE_BAND_NUCLEI * diameter_px
    wide = None
    if stain is not None and wide_px > band:
        # (the cells with no stain anywhere -- no pixel at the floor: a
        # faintly stained cell's mean lies under the floor too)
        n = int(cells.max()) + 1
        if floor > 0:
            wide = np.bincount(cells[np.asarray(stain, dtype=np.float32) >= floor], minlength=n) == 0
        else:
            wide = np.zeros(n, dtype=bool)
        wide[0] = False
        band_reach = wide_px
    else:
        band_reach = band
    margin = int(np.ceil(band_reach + 2 * (4 * sigma + 1)))
    box = (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
           slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))
    strength = segment.outline_strength(grey[box], sigma_px=sigma) if strength is None else strength[box]
    out = cells.copy()
    out[box] = segment.borders_on_outlines(cells[box], nuclei[box], strength, band_px=band,
                                           clear_px=OUTLINE_CLEAR_NUCLEI * diameter_px, low=OUTLINE_LOW,
                                           high=OUTLINE_HIGH, shared=shared[box], wide_px=wide_px, wide=wide)
    return out


def _glass_allows_outlines(lamp: illumination.Lamp, *, on_sheet: bool = False) -> bool:
    """The lamp found glass on little enough of the field for the
    outlined-cell step (OUTLINED_MAX_GLASS_FRACTION, or
    OUTLINED_MAX_GLASS_FRACTION_PEAK where it read the glass off its peak
    or, ``on_sheet``, its glass lies on a sheet's cells)."""
    gate = OUTLINED_MAX_GLASS_FRACTION_PEAK if (lamp.glass_from_peak or on_sheet) else OUTLINED_MAX_GLASS_FRACTION
    return lamp.background_fraction < gate


def _outlined(grey: np.ndarray, nuclei: np.ndarray, *, f: int, d: float, smoothed: np.ndarray, glass_sd: float,
              fine: np.ndarray, broad: np.ndarray, floor: float) -> tuple[np.ndarray | None, np.ndarray]:
    """(:func:`segment.outlined_cells` over the outline map of ``grey`` at
    working scale ``f`` -- the mask, or None when it closes nothing -- and
    that outline map, which the border step reuses). ``fine``, ``broad``:
    X-gal smoothed at 1 px and half a nucleus; ``floor``: the positivity
    floor (stained cells show their body; their stain bars an outline)."""
    sigma_ol = max(1.0, OUTLINE_SIGMA_PX / f)
    strength = segment.outline_strength(grey, sigma_px=sigma_ol)
    outlined = segment.outlined_cells(
        strength, nuclei, diameter_px=d, density=smoothed, density_sd=glass_sd,
        clear=broad < floor, barrier=fine >= floor, side_px=2 * sigma_ol,
        min_strength=OUTLINED_MIN_STRENGTH, field_strength=OUTLINED_FIELD_STRENGTH,
        max_step_sd=OUTLINED_MAX_STEP_SD, field_step_sd=OUTLINED_FIELD_STEP_SD)
    return (outlined if outlined.any() else None), strength


def _fill_lattice_holes(nuclei: np.ndarray, unstained, stained_z: np.ndarray | None, xgal: np.ndarray, *,
                        diameter_px: float, min_xgal: float, smoothed: np.ndarray,
                        maps: segment.StainMaps | None, response: np.ndarray) -> np.ndarray:
    """Nuclei of a brightfield sheet's cells in the gaps of its lattice of
    nuclei: unstained ones (``unstained``: the pipeline's
    :func:`segment.add_unstained_nuclei` with its maps) from
    BRIGHTFIELD_HOLE_UNSTAINED_SNR, stained ones enclosed by their stain
    (:func:`segment.add_enclosed_stained_nuclei`), each more than
    BRIGHTFIELD_HOLE_SPACING x the median nearest-neighbour distance from
    every nucleus (the unstained search repeated, up to
    BRIGHTFIELD_HOLE_PASSES times, with the spacing of the nuclei it has so
    far). An unstained one must also be at least
    BRIGHTFIELD_HOLE_RELATIVE_SNR x as strong as the median of the unstained
    nuclei already found (``response``: the blob response ``unstained``
    reads, in noise SDs)."""
    nn = segment.median_neighbour_distance(nuclei)
    if nn is None:
        return nuclei
    spacing = BRIGHTFIELD_HOLE_SPACING * nn / diameter_px
    snr = BRIGHTFIELD_HOLE_UNSTAINED_SNR
    found = segment.response_at_nuclei(nuclei, response)
    found = found[found > 0]  # (stained nuclei are not sought on this map)
    if found.size >= BRIGHTFIELD_HOLE_RELATIVE_MIN_NUCLEI:
        snr = max(snr, BRIGHTFIELD_HOLE_RELATIVE_SNR * float(np.median(found)))
    for _ in range(BRIGHTFIELD_HOLE_PASSES):
        # (each pass's nuclei close the lattice: the spacing is read again)
        more = unstained(nuclei, spacing=spacing, snr=snr, band=0.0)
        if np.array_equal(more > 0, nuclei > 0):
            break
        nuclei = more
        spacing = BRIGHTFIELD_HOLE_SPACING * segment.median_neighbour_distance(nuclei) / diameter_px
    return segment.add_enclosed_stained_nuclei(nuclei, stained_z, xgal, diameter_px=diameter_px,
                                               snr=BRIGHTFIELD_ENCLOSED_NUCLEUS_SNR, spacing=spacing,
                                               min_xgal=min_xgal, smoothed=smoothed, maps=maps)


def _segment(prep: StainedImage, *, nuclear: np.ndarray | None, config: Config | None,
             od_sum: np.ndarray | None, nucleus_hint_px: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray | None, str]:
    """:func:`segment_image`, plus the distance of each pixel to the nearest
    nucleus pixel of the returned nuclei when segmentation computed it on
    those same nuclei (else None): measuring needs it again; and where the
    nucleus size came from (``"config"``, ``"nuclear_stain"``, or
    :func:`brightfield_nucleus_size`'s source, given ``nucleus_hint_px``)."""
    config = config or Config()
    seg = config.segment
    xgal, grey, counter, mode = prep.xgal, prep.grey, prep.counterstain, prep.mode
    shape = xgal.shape
    od_sum = _channel_sum(prep.od) if od_sum is None else od_sum  # (summed OD, when the caller has it)
    if mode == "fluorescence":
        nmap = nuclear
    elif counter is not None:
        nmap = counter
    else:
        nmap = None
    if seg.nucleus_diameter_px > 0:
        diameter, size_source = float(seg.nucleus_diameter_px), "config"
    elif nmap is not None:
        diameter, size_source = segment.estimate_nucleus_diameter(nmap), "nuclear_stain"
    else:
        diameter, size_source = brightfield_nucleus_size(grey, xgal, excluded=prep.excluded,
                                                         hint_px=nucleus_hint_px, glass=prep.lamp.background)
    f = max(1, int(diameter // WORKING_NUCLEUS_PX))
    d = diameter / f
    grey_r, xgal_r = illumination.block_reduce_mean_padded(grey, f), illumination.block_reduce_mean_padded(xgal, f)
    # (a JPEG's grey with its colour re-estimated from the luma, where the
    # image has colour blocks: no false density beside stained cells; what
    # the brightfield nucleus search reads)
    grey_u = grey_r if prep.grey_deblocked is None else illumination.block_reduce_mean_padded(prep.grey_deblocked, f)
    if nmap is None:
        nmap = nuclear_map_brightfield(grey_u, xgal_r, sigma=max(1.0, d / 8))
    else:
        nmap = illumination.block_reduce_mean_padded(nmap, f)
    od_sum = illumination.block_reduce_mean_padded(od_sum, f)
    background = prep.lamp.background
    if background is not None and f > 1:
        background = illumination.block_reduce_mean_padded(background.astype(np.float32), f) > 0.99
    nuc_area = np.pi * (d / 2) ** 2
    # without a nuclear stain the map is noisier (gaps between X-gal granules):
    # demand twice the size before a blob counts as a nucleus
    min_frac = seg.min_nucleus_area_fraction * (2.0 if mode == "brightfield" else 1.0)
    nuclei = segment.segment_nuclei(nmap, diameter_px=d, min_area_px=min_frac * nuc_area)
    if mode == "brightfield":
        nuclei = segment.drop_large_objects(nuclei, BRIGHTFIELD_MAX_NUCLEUS_AREAS * nuc_area)
        # X-gal smoothed at 1 px (the stain around a candidate) and at half a
        # nucleus (where stained cells are), shared by the three checks
        fine, broad = segment.smoothed_stain(xgal_r, 1.0), segment.smoothed_stain(xgal_r, d / 2)
        nuclei = segment.drop_stain_edge_nuclei(nuclei, xgal_r, diameter_px=d,
                                                level=config.classify.min_positive_threshold, smoothed=fine)
        floor = config.classify.min_positive_threshold
        in_stain = broad >= floor  # (where the checks below spare or skip a candidate)
        # a dark speck (debris, dust, a crystal) far smaller than a nucleus
        # still answers the nuclear map, and outshines a faint nucleus beside
        # it; out of the stain, the unstained search's own size test
        nuclei = segment.drop_fine_specks(nuclei, grey_r, diameter_px=d, max_ratio=BRIGHTFIELD_MAX_FINER_BLOB_RATIO,
                                          exempt=in_stain, max_share=BRIGHTFIELD_MAX_SPECK_SHARE)
        # a pale hole in the blue is a nucleus only if the stain owns it (the
        # stain's maps, for this and the search for missed stained nuclei,
        # made once, where the field has stain at all)
        owner_maps = (segment.stain_maps(xgal_r, diameter_px=d, min_xgal=floor, smoothed=broad)
                      if in_stain.any() else None)
        nuclei = segment.drop_unowned_stained_nuclei(nuclei, xgal_r, diameter_px=d, min_xgal=floor,
                                                     enclosure=BRIGHTFIELD_OWNED_NUCLEUS_ENCLOSURE, smoothed=broad,
                                                     maps=owner_maps)
        # (searched twice in a dense field: what it measures is measured once)
        evidence = segment.unstained_nucleus_evidence(grey_u, xgal_r, diameter_px=d, max_xgal=floor,
                                                      smoothed=(fine, broad))
        unstained = functools.partial(segment.add_unstained_nuclei, grey=grey_u, xgal=xgal_r, diameter_px=d,
                                      snr=BRIGHTFIELD_DARK_NUCLEUS_SNR, max_xgal=floor, smoothed=(fine, broad),
                                      evidence=evidence, max_finer_ratio=BRIGHTFIELD_MAX_FINER_BLOB_RATIO,
                                      band=BRIGHTFIELD_FAINT_NUCLEUS_BAND,
                                      mirror_band=BRIGHTFIELD_MIRROR_NUCLEUS_BAND,
                                      min_roundness=BRIGHTFIELD_MIN_UNSTAINED_ROUNDNESS)
        nuclei = unstained(nuclei, spacing=BRIGHTFIELD_NUCLEUS_SPACING)
        # how close two nuclei out of the stain may be: from the field's spacing
        clear_spacing = BRIGHTFIELD_NUCLEUS_SPACING
        # (a lamp fitted to bare glass says how much of the field is glass; its
        # percentile fallback, that it found none -- a sheet; a flat-field
        # lamp says nothing)
        glass_fitted = prep.lamp.method == "auto"
        dense = ((glass_fitted and prep.lamp.background_fraction < BRIGHTFIELD_DENSE_GLASS_FRACTION)
                 or prep.lamp.method == "auto-percentile")
        sparse = glass_fitted and not dense
        nn = segment.median_neighbour_distance(nuclei) if dense else None
        if nn is not None:
            clear_spacing = float(np.clip(BRIGHTFIELD_CLOSE_PAIR_FRACTION * nn / d,
                                          BRIGHTFIELD_MIN_CLEAR_SPACING, BRIGHTFIELD_NUCLEUS_SPACING))
        if clear_spacing < BRIGHTFIELD_NUCLEUS_SPACING:
            # a dense field: the unstained nuclei that lie closer to a neighbour
            nuclei = unstained(nuclei, spacing=clear_spacing)
        stained_z = segment.stained_blob_response(nmap, xgal_r, diameter_px=d, min_xgal=floor, smoothed=broad)
        nuclei = segment.add_enclosed_stained_nuclei(nuclei, stained_z, xgal_r, diameter_px=d,
                                                     snr=BRIGHTFIELD_ENCLOSED_NUCLEUS_SNR,
                                                     spacing=BRIGHTFIELD_ENCLOSED_NUCLEUS_SPACING,
                                                     min_xgal=floor, smoothed=broad, maps=owner_maps)
    excluded = against_excluded = prep.excluded
    if excluded is not None:
        excluded = illumination.block_reduce_mean_padded(excluded.astype(np.float32), f) > 0.5
        against_excluded = morph.dilate_cross(excluded, iterations=2)
        # no nucleus, cell or cell body where the image shows no specimen; a
        # "nucleus" touching that region is the dim rim of a field stop or the
        # fringe of a label, not a cell cut by it
        drop = np.unique(nuclei[against_excluded])
        drop = drop[drop > 0]
        if drop.size:
            nuclei = np.where(np.isin(nuclei, drop), 0, nuclei).astype(nuclei.dtype)
    sigma_fg = max(1.0, d / 8)
    outlined = strength = None  # (outlined cells and the outline map, brightfield)
    if mode == "brightfield":
        clear, clear_radius = ~in_stain, clear_spacing
        if clear_spacing >= BRIGHTFIELD_NUCLEUS_SPACING:
            # (a sparse field, or a dense one whose nuclei lie far apart: two
            # plainly typical unstained nuclei may still be close neighbours;
            # see BRIGHTFIELD_DENSE_GLASS_FRACTION)
            typical = segment.typical_unstained_nuclei(
                nuclei, evidence.response, fine >= floor, diameter_px=d,
                relative=BRIGHTFIELD_RIM_SPARE_RELATIVE_SNR, min_count=BRIGHTFIELD_HOLE_RELATIVE_MIN_NUCLEI,
                min_reference=BRIGHTFIELD_RIM_SPARE_MIN_SNR)
            spread = segment.median_neighbour_distance(nuclei)
            if spread is not None and typical.any():
                clear = clear & typical
                clear_radius = float(np.clip(BRIGHTFIELD_CLOSE_PAIR_FRACTION * spread / d,
                                             BRIGHTFIELD_MIN_CLEAR_SPACING, BRIGHTFIELD_NUCLEUS_SPACING))
        nuclei = segment.suppress_close_nuclei(nuclei, nmap - float(filters.median(nmap)),
                                               radius_px=BRIGHTFIELD_NUCLEUS_SPACING * d,
                                               clear=clear, clear_radius_px=clear_radius * d)
        if sparse:
            nuclei = segment.drop_flat_nuclei(nuclei, nmap, diameter_px=d,
                                              min_lower=BRIGHTFIELD_PROMINENT_RING_SHARE,
                                              contrast_sd=BRIGHTFIELD_PROMINENCE_SD,
                                              rise_share=BRIGHTFIELD_PLATEAU_RISE_SHARE,
                                              ring_quantile=BRIGHTFIELD_PLATEAU_RING_QUANTILE)
        elif glass_fitted:
            # (a denser field: nuclei closer to their neighbours, so a contrast
            # scaled to each candidate's own rise, and only out of the stain,
            # whose granules set the noise that stained cells' holes must clear)
            nuclei = segment.drop_flat_nuclei(nuclei, nmap, diameter_px=d,
                                              min_lower=BRIGHTFIELD_PROMINENT_RING_SHARE,
                                              contrast_sd=BRIGHTFIELD_PLATEAU_CONTRAST_SD,
                                              rise_share=BRIGHTFIELD_PLATEAU_RISE_SHARE,
                                              ring_quantile=BRIGHTFIELD_PLATEAU_RING_QUANTILE, exempt=in_stain)
        # glass the lamp estimate saw is not filled in where touching cells
        # enclose it, unless it lies on the cells (a lamp fitted to the faint
        # cytoplasm of a confluent sheet)
        on_cells = sheet_mask = filled = False
        seen = None  # (the foreground with no lamp glass kept out, where the body check made it)
        smoothed = filters.gaussian_filter(od_sum.astype(np.float32, copy=False), sigma_fg)
        glass_stats = segment.glass_level(smoothed, ignore=excluded)  # (the halo trim reads them again)
        if background is not None:
            ndist = filters.distance_within(nuclei, d)  # (both look one diameter out)
            on_cells = segment.glass_among_nuclei(background, nuclei, diameter_px=d, dist=ndist)
            # (guessed nuclei include false ones on glass, which can put a
            # sparse field's glass "among" them: a sheet needs more)
            near_ratio = segment.glass_near_nuclei_ratio(background, nuclei, diameter_px=d, dist=ndist)
            sheet_mask = on_cells and near_ratio > BRIGHTFIELD_SHEET_NEAR_NUCLEI_RATIO
            if on_cells and near_ratio >= BRIGHTFIELD_HOLE_NEAR_NUCLEI_RATIO:
                # a sheet for certain: every gap in its lattice of nuclei is a
                # cell whose nucleus the searches' spacing or strength missed
                nuclei = _fill_lattice_holes(nuclei, unstained, stained_z, xgal_r, diameter_px=d,
                                             min_xgal=floor, smoothed=broad, maps=owner_maps,
                                             response=evidence.response)
                filled = True
            whole_cells_on_glass = size_source == "blobs_within_cells"
            if not sheet_mask and not whole_cells_on_glass and (
                    on_cells or near_ratio >= BRIGHTFIELD_LARGE_SHEET_NEAR_NUCLEI_RATIO):
                # large cells: their faint cytoplasm lies mostly beyond a
                # diameter from their nuclei (so the checks one diameter
                # out may not see it on the cells), but still as near them
                # as any of the field is -- within half the nuclei's spacing.
                # (Not where the nuclei were sized inside whole cells ringed
                # by the glass: that glass lies between the cells, however
                # evenly they are spread.)
                spacing = segment.median_neighbour_distance(nuclei)
                # (glass that runs only as a thin network between the cells
                # is their thinnest margins: a lower line)
                line = (BRIGHTFIELD_THIN_GLASS_SPACING_RATIO
                        if segment.glass_depth(background) <= BRIGHTFIELD_THIN_GLASS_DEPTH_NUCLEI * d
                        else BRIGHTFIELD_SHEET_SPACING_RATIO)
                sheet_mask = spacing is not None and segment.glass_near_nuclei_ratio(
                    background, nuclei, diameter_px=0.5 * spacing) >= line
                if sheet_mask:
                    # ... unless the cells' bodies show: the foreground
                    # measured without the lamp's glass already gives each
                    # nucleus a body reaching well past a diameter from it,
                    # and what lies beyond is glass between whole cells
                    seen = segment.brightfield_foreground(od_sum, sigma_px=sigma_fg,
                                                          k=4.0 / seg.foreground_sensitivity, ignore=excluded,
                                                          smoothed=smoothed, stats=glass_stats)
                    # (where the lamp found glass enough for separate cells
                    # to stand on: BRIGHTFIELD_SHEET_BODY_CHECK_MIN_GLASS)
                    n_nuclei = max(int(np.unique(nuclei).size) - 1, 1)
                    sheet_mask = (prep.lamp.background_fraction < BRIGHTFIELD_SHEET_BODY_CHECK_MIN_GLASS
                                  or np.count_nonzero(seen) / n_nuclei / nuc_area < BRIGHTFIELD_SHEET_MAX_BODY_NUCLEI)
                on_cells = on_cells or sheet_mask
        enclosed = background if background is not None and not on_cells else None
        if enclosed is None and seen is not None:
            foreground = seen
        else:
            foreground = segment.brightfield_foreground(od_sum, sigma_px=sigma_fg,
                                                        k=4.0 / seg.foreground_sensitivity, ignore=excluded,
                                                        glass=enclosed, smoothed=smoothed, stats=glass_stats,
                                                        clear=(broad < BRIGHTFIELD_FAINT_BODY_MAX_STAIN * floor
                                                               if enclosed is not None else None))
        if glass_fitted and _glass_allows_outlines(prep.lamp, on_sheet=on_cells and sheet_mask):
            # cells clear inside but ringed by their outline are what it closes
            outlined, strength = _outlined(grey_r, nuclei, f=f, d=d, smoothed=smoothed, glass_sd=glass_stats[1],
                                           fine=fine, broad=broad, floor=floor)
            if outlined is not None:
                foreground = foreground | outlined
                if background is not None:
                    background = background & ~outlined
        if prep.lamp.method == "auto-percentile" and BRIGHTFIELD_NO_GLASS_BODY_SD > 0:
            # the lamp found no glass: a sheet, whose faint cytoplasm is the
            # "glass" level the foreground was measured from
            foreground = foreground | segment.sheet_foreground(smoothed, glass_stats,
                                                               k=BRIGHTFIELD_NO_GLASS_BODY_SD)
        covered = float(np.mean(foreground))
        if (
                # no glass found, cells everywhere: every gap in the lattice of
                # nuclei holds a cell, as in a sheet its lamp's glass shows (such
                # a lamp has no glass mask, so the search above has not run)
                (prep.lamp.method == "auto-percentile" and covered >= BRIGHTFIELD_HOLE_NO_GLASS_FOREGROUND)
                # a dense field with a few patches of glass: as good as a sheet
                # (unless the search above ran)
                or (not filled and prep.lamp.method == "auto" and prep.lamp.background_fraction < SHEET_GLASS_FRACTION
                    and covered >= BRIGHTFIELD_HOLE_DENSE_FOREGROUND)):
            nuclei = _fill_lattice_holes(nuclei, unstained, stained_z, xgal_r, diameter_px=d,
                                         min_xgal=floor, smoothed=broad, maps=owner_maps,
                                         response=evidence.response)
        # a pocket of "glass" holding its own nuclei, no larger than the
        # cells in the foreground, is cells too faint to stand out of the
        # glass (unstained cells among stained ones in a dense field)
        pale = segment.pale_cell_pockets(foreground, nuclei, max_area_ratio=BRIGHTFIELD_PALE_POCKET_CELLS)
        if (glass_fitted and not on_cells and BRIGHTFIELD_FAINT_BODY_SD > 0
                and filters.jpeg_blockiness(grey) <= BRIGHTFIELD_FAINT_BODY_MAX_BLOCKINESS):
            # unstained cells too faint for the foreground's scale, seen at
            # a cell's (they are seeded from their shape)
            pale = pale | segment.faint_bodies(grey_r, foreground | pale, nuclei, sigma_px=d / 2,
                                               k=BRIGHTFIELD_FAINT_BODY_SD, peak_k=BRIGHTFIELD_FAINT_BODY_PEAK_SD,
                                               ignore=excluded,
                                               min_area_px=BRIGHTFIELD_FAINT_BODY_MIN_NUCLEI * nuc_area,
                                               max_area_px=BRIGHTFIELD_FAINT_BODY_MAX_NUCLEI * nuc_area)
        if pale.any():
            foreground = foreground | pale
            if background is not None:
                background = background & ~pale
        # a ring round a clear middle, with no nucleus in or on it, is dust
        # on the optics, not a cell (filled, it made one large round "cell")
        # (and, in a sparse field, its strands; in a dense one a thin
        # nucleus-less piece is likelier the visible part of a faint cell
        # whose seed grows into the rest)
        foreground = segment.drop_empty_rings(foreground, nuclei, min_hole_px=nuc_area, stained=fine >= floor,
                                              min_depth_px=BRIGHTFIELD_STRAND_MAX_DEPTH_NUCLEI * d if sparse else 0.0)
        # (in a dense field, glass the lamp saw enclosed by touching cells
        # lies between them: left unfilled, so their bodies keep their own
        # lobes; in a sparse one such "glass" is likelier a pale part of one
        # large cell, or the inside of a ring-shaped speck)
        depth = segment.body_depth(foreground, nuclei, glass=enclosed if dense else None)
        # (a candidate in the stain is a stained cell's nucleus, not its pale
        # margin; in a dense field a clump's rim is lined with unstained
        # cells' nuclei as well, and the check would spare every candidate)
        dense_clear = glass_fitted and prep.lamp.background_fraction < BRIGHTFIELD_RIM_CLEAR_GLASS_FRACTION
        if not dense_clear:
            # (spared: candidates in the stain, and in a dense field those as
            # plainly a nucleus as the field's deep ones, with no stain round them)
            spare = in_stain
            if dense:
                spare = spare | segment.typical_unstained_nuclei(
                    nuclei, evidence.response, fine >= floor, diameter_px=d,
                    relative=BRIGHTFIELD_RIM_SPARE_RELATIVE_SNR, min_count=BRIGHTFIELD_HOLE_RELATIVE_MIN_NUCLEI,
                    reference=depth >= BRIGHTFIELD_RIM_DEPTH_NUCLEI * d, min_reference=BRIGHTFIELD_RIM_SPARE_MIN_SNR)
            nuclei = segment.drop_rim_nuclei(nuclei, foreground, min_depth_px=BRIGHTFIELD_RIM_DEPTH_NUCLEI * d,
                                             depth=depth, rel_depth=BRIGHTFIELD_RIM_RELATIVE_DEPTH,
                                             neck=BRIGHTFIELD_LOBE_NECK, exempt=spare)
        if dense:
            # touching stained cells: a blob of stain with no nucleus is a
            # cell whose nucleus the haze hid
            nuclei = segment.add_stain_blob_seeds(nuclei, xgal_r, diameter_px=d, level=floor, region=foreground,
                                                  sigma_nuclei=BRIGHTFIELD_STAIN_BLOB_SIGMA_NUCLEI,
                                                  min_level=BRIGHTFIELD_STAIN_BLOB_MIN_LEVEL,
                                                  neck=BRIGHTFIELD_STAIN_BLOB_NECK)
        nuclei = segment.add_lobe_seeds(nuclei, depth, min_radius_px=BRIGHTFIELD_LOBE_RADIUS_NUCLEI * d,
                                        neck=BRIGHTFIELD_LOBE_NECK)
        # the nucleus search's maps are done with: let them go before the
        # territories, where a field's memory peaks (two float64 blob
        # responses and seven float32 maps: ~200 MB at 2048 x 2048)
        del unstained, evidence, stained_z, fine, broad, owner_maps, depth, nmap, grey_u
        ndist = None
    else:
        # a lamp fitted to the faint cytoplasm of unstained cells calls it
        # glass: with exact nuclei that shows, and the mask is not used
        if mode != "fluorescence" and prep.model.counterstain != "hematoxylin":
            # stray X-gal crystals bleed into the counterstain: a peak of
            # X-gal is no nucleus (not with hematoxylin, whose colour lies
            # so close to X-gal's that its nuclei bleed into the X-gal)
            nuclei = segment.drop_stain_peak_nuclei(nuclei, xgal_r, nmap, diameter_px=d,
                                                    peak_ratio=COUNTERSTAIN_CRYSTAL_PEAK_RATIO)
        nuclei = nuclei.astype(np.int32, copy=False)
        nearest = segment.nearest_nucleus(nuclei)  # (distance, label): used three times below
        on_cells = background is not None and segment.glass_among_nuclei(background, nuclei, diameter_px=d,
                                                                          dist=nearest[0])
        if on_cells:
            background = None
        sheet_mask = on_cells  # (exact nuclei)
        smoothed, texture = _texture(od_sum, sigma_fg)
        glass_stats = segment.background_stats(smoothed, od_sum, sigma_fg, background)
        foreground = segment.cell_foreground(od_sum, sigma_px=sigma_fg, sensitivity=seg.foreground_sensitivity,
                                             texture=texture, background=background, smoothed=smoothed,
                                             stats=glass_stats)
        if background is not None and prep.lamp.method == "auto" and _glass_allows_outlines(prep.lamp):
            # exact nuclei too: large cells as faint as the glass inside but
            # ringed by their outline are what the outlines close
            floor = config.classify.min_positive_threshold
            outlined, strength = _outlined(grey_r, nuclei, f=f, d=d, smoothed=smoothed, glass_sd=glass_stats[1],
                                           fine=segment.smoothed_stain(xgal_r, 1.0),
                                           broad=segment.smoothed_stain(xgal_r, d / 2), floor=floor)
            if outlined is not None:
                foreground = foreground | outlined
                background = background & ~outlined
    unseeded = "seed" if mode == "brightfield" else "drop"
    no_cells = background
    if excluded is not None:
        foreground = foreground & ~excluded
        no_cells = excluded if background is None else (background | excluded)
        if unseeded == "seed":
            # a piece of "cell body" against a label or field stop holding no
            # nucleus is the stop's blurred rim (the lamp fit cannot follow
            # it), not a cell whose nucleus was missed: it gets no seed
            comp, n = morph.label(foreground)
            if n:
                near = np.zeros(n + 1, dtype=bool)
                near[comp[against_excluded]] = True
                near[comp[nuclei > 0]] = False
                near[0] = False
                foreground = foreground & ~near[comp]
    # X-gal marks stained cells only: their blue cytoplasm is not handed to
    # unstained neighbours (segment.size_weighted_territories)
    xs = filters.gaussian_filter(np.maximum(xgal_r, 0).astype(np.float32), max(1.0, d / 4))
    seeds = nuclei
    extent = seg.min_cell_extent_nuclei
    stained_sheet = False
    glass_share = prep.lamp.background_fraction
    if prep.lamp.method == "auto" and (
            # the lamp was fitted to bare glass and found little of it (with
            # a counterstain too: the cells meet, their faint bodies at the
            # level the foreground calls glass) ...
            glass_share < SHEET_GLASS_FRACTION
            # ... or, without a counterstain, what it took for glass lies on the cells
            or (counter is None and sheet_mask and glass_share < SHEET_ON_CELLS_GLASS_FRACTION)):
        # a confluent sheet, whose unstained cells (as faint as the "glass"
        # level) meet their neighbours
        extent = max(extent, SHEET_EXTENT_NUCLEI)
        if on_cells:
            no_cells = excluded  # (that "glass" is their cytoplasm)
    elif (counter is None and prep.lamp.method == "auto-percentile"
          and _stained_gaps(xgal_r, foreground, config.classify.min_positive_threshold)
          and _close_packed(nuclei, d)):
        # the lamp found no glass to fit, what lies between the cells is
        # stained cytoplasm, and the nuclei lie close enough for sheet cells
        extent = max(extent, SHEET_EXTENT_NUCLEI)
        stained_sheet = True
    if background is not None and no_cells is not None and no_cells is not excluded:
        # the lamp's glass mask is made of blocks and stops short of every
        # object; what lies in that margin at the glass's own level is glass
        # (every set-up: the least extent of a small, faint cell claims it)
        glass_level_od, glass_sd = glass_stats
        no_cells = segment.close_glass_margin(no_cells, foreground, smoothed,
                                              max_od=glass_level_od + GLASS_MARGIN_SD * glass_sd,
                                              margin_px=max(1, round(GLASS_MARGIN_PX / f)))
    if mode == "brightfield":
        # (the seeds' distance map: segment_cells' reach, and the trim's again
        # below when every seed kept its cell)
        nuclei = nuclei.astype(np.int32, copy=False)
        nearest = segment.nearest_nucleus(nuclei)
    cells, nuclei = segment.segment_cells(
        nuclei, foreground, max_reach_px=seg.max_cell_radius_nuclei * d,
        min_cell_area_px=seg.min_cell_area_fraction * nuc_area, unseeded=unseeded, diameter_px=d,
        # faint cells still reach a little past their nucleus, but never onto
        # glass the lamp estimate saw
        min_extent_nuclei=extent, glass=no_cells,
        # touching cells share by nucleus size, blue cytoplasm to stained cells
        size_weighted=True, xgal=xs, stain_level=config.classify.min_positive_threshold,
        nearest=nearest,
        # (the borders follow the pale seams between the cells' bodies)
        seam=segment.seam_map(od_sum, foreground, sigma_px=SEAM_SIGMA_NUCLEI * d), seam_weight=SEAM_WEIGHT,
        seam_step=min(SEAM_MAX_BLOCK_PX, max(1, int(d // SEAM_BLOCK_NUCLEUS_PX))))
    nucleus_dist = nucleus_mask = keep = None
    # (where a brightfield lamp found no glass, its percentile fallback, the
    # histogram's "glass" level may be cytoplasm: no trim)
    trim = mode != "brightfield" or prep.lamp.method != "auto-percentile"
    if mode != "brightfield":
        # the nuclei's distance map, for the trim and again for measuring
        nucleus_mask = nuclei > 0
        nucleus_dist = (nearest[0] if np.array_equal(nucleus_mask, seeds > 0)
                        else filters.distance_transform(~nucleus_mask))
        if outlined is not None:
            # (an outlined cell's edge is its outline, not a blurred step)
            keep = segment.mostly_within(cells, outlined)
    elif trim:
        if np.array_equal(nuclei > 0, seeds > 0):
            nucleus_dist = nearest[0]  # (else the trim measures its own near band)
        # the brightfield foreground crosses the blur around a cell's body at
        # its low limit too; but a faint cell's reach is no blur. (Stained
        # cells are trimmed too: their level is read next to their edge,
        # away from the nucleus, so their pale margin, not the perinuclear
        # stain, sets it; small stained cells kept 1.5x their true area.)
        keep = segment.untrimmable_cells(cells, foreground, max_outside=BRIGHTFIELD_TRIM_MAX_OUTSIDE)
        if outlined is not None:
            # (an outlined cell's edge is its outline, not a blurred step)
            keep |= segment.mostly_within(cells, outlined)
    if trim:
        # the foreground reaches out into the blur around each cell: edges
        # go back to half way up (segment.trim_blur_halo)
        glass_level, glass_sd = glass_stats  # (as the foreground measured them)
        trimmed = segment.trim_blur_halo(cells, nuclei, smoothed, glass_level, band_px=3 * sigma_fg + 2,
                                         min_cut=glass_level + 5.0 / seg.foreground_sensitivity * glass_sd,
                                         nucleus_dist=nucleus_dist, keep=keep)
        # (the halo is blur, not cell body nor debris)
        foreground = foreground & ~((cells > 0) & (trimmed == 0))
        cells = trimmed
    if mode == "brightfield":
        merged = segment.merge_stained_fragments(cells, xs, level=config.classify.min_positive_threshold,
                                                 max_area_ratio=BRIGHTFIELD_FRAGMENT_AREA_RATIO,
                                                 min_shared=BRIGHTFIELD_FRAGMENT_SHARED_OUTLINE)
        # (a merged piece's "nucleus" was a pale gap in the stain)
        nuclei = np.where(merged != cells, 0, nuclei).astype(nuclei.dtype)
        cells = merged
    if mode == "brightfield" and no_cells is not None:
        # (the field's cells are those holding a nucleus: a crowd of specks,
        # which hold none, would drag the median down to their own size)
        nucleated = np.zeros(int(cells.max()) + 1, dtype=bool)
        nucleated[cells[nuclei > 0]] = True
        nucleated[0] = False
        speck = segment.speck_area_limit(np.where(nucleated[cells], cells, 0),
                                         min_px=BRIGHTFIELD_SPECK_NUCLEI * nuc_area,
                                         max_px=BRIGHTFIELD_SPECK_MAX_NUCLEI * nuc_area,
                                         fraction=BRIGHTFIELD_SPECK_CELL_FRACTION)
        # (a speck's surroundings are known glass, or simply show no cell
        # body: the lamp's glass mask stops short of every dark object)
        specks = segment.specks_on_glass(cells, no_cells | ~foreground, max_area_px=speck)
        lattice = segment.speck_lattice(cells, specks)
        if lattice is not None:
            # a hundred or more evenly spaced "specks": the nuclei of a sheet whose
            # cytoplasm the lamp took for glass. Each is a nucleus, and its
            # cell reaches half way to its neighbours (the rules for specks
            # and small cells on glass do not apply: that glass is cells)
            nuclei = np.where((nuclei == 0) & specks[cells], cells, nuclei).astype(nuclei.dtype)
            cells = segment.fill_sheet_gaps(cells, reach_px=lattice, glass=excluded)
            no_cells = excluded
        else:
            cells = segment.drop_labels(cells, specks)
            cells = segment.drop_bodiless_cells(cells, foreground, no_cells,
                                                max_body=BRIGHTFIELD_BODILESS_MAX_BODY,
                                                min_glass=BRIGHTFIELD_BODILESS_MIN_GLASS)
            cells = segment.drop_small_clear_cells_on_glass(
                cells, no_cells, xgal_r, max_area_px=BRIGHTFIELD_SMALL_CELL_NUCLEI * nuc_area,
                min_glass=BRIGHTFIELD_SMALL_CELL_MIN_GLASS, max_stain=floor * BRIGHTFIELD_SMALL_CELL_STAIN)
            cells = segment.drop_dense_specks(cells, nuclei, grey_r, xgal_r,
                                              max_area_px=BRIGHTFIELD_SMALL_CELL_NUCLEI * nuc_area,
                                              density_ratio=BRIGHTFIELD_DENSE_SPECK_RATIO,
                                              max_stain=floor * BRIGHTFIELD_SMALL_CELL_STAIN,
                                              large_area_factor=BRIGHTFIELD_DENSE_CLUMP_AREA_FACTOR,
                                              large_density_ratio=BRIGHTFIELD_DENSE_CLUMP_RATIO)
            cells = segment.drop_dense_bodies(cells, nuclei, grey_r, xgal_r,
                                              density_ratio=BRIGHTFIELD_DENSE_SPECK_RATIO,
                                              max_stain=floor * BRIGHTFIELD_SMALL_CELL_STAIN)
    if mode == "brightfield" and (
            (glass_fitted and (glass_share < BRIGHTFIELD_CONFLUENT_GLASS_FRACTION or (sheet_mask and on_cells)))
            or stained_sheet):
        # a confluent sheet (little glass; or "glass" that lies on the cells,
        # their faint cytoplasm; or none and stained cytoplasm between the
        # cells): no gaps between its cells
        cells = segment.fill_sheet_gaps(cells, reach_px=BRIGHTFIELD_SHEET_GAP_NUCLEI * d, glass=no_cells)
    # where the cells' own edges show, the borders between touching cells
    # follow them rather than the distance between nuclei (last: which cells
    # there are was decided on the territories, only their shapes change)
    cells = _borders_on_outlines(cells, nuclei, grey_r, f=f, diameter_px=d, strength=strength,
                                 stain=xs, floor=config.classify.min_positive_threshold)
    cells = segment.relabel_sequential(cells)
    nuclei = np.where(nuclei > 0, cells, 0).astype(np.uint32)
    # (the same nuclei, at full scale: their distance map holds)
    if not (f == 1 and nucleus_mask is not None and np.array_equal(nuclei > 0, nucleus_mask)):
        nucleus_dist = None
    cells, nuclei = illumination.block_expand(cells, f, shape), illumination.block_expand(nuclei, f, shape)
    foreground = illumination.block_expand(foreground, f, shape)
    return cells.astype(np.uint32, copy=False), nuclei, foreground, diameter, nucleus_dist, size_source


def analyze_image(rgb: np.ndarray, *, nuclear: np.ndarray | None = None, config: Config | None = None,
                  pixel_size_um: float | None = None, flat_field: np.ndarray | None = None,
                  classify_cells: bool = True, nucleus_hint_px: float | None = None,
                  encoding: str | None = None) -> ImageResult:
    """Run the whole pipeline on one image.

    Parameters
    ----------
    rgb : (M, N, 3) ndarray
        Brightfield image: uint8, uint16, or float in [0, 1].
    nuclear : (M, N) ndarray, optional
        Nuclear fluorescence (DAPI/Hoechst) of the same field.
    config : Config, optional
        Defaults to :class:`sabgal.config.Config` (set-up decided per image).
    pixel_size_um : float, optional
        µm per pixel (falls back to ``config.setup.pixel_size_um``).
    flat_field : (M, N, 3) ndarray, optional
        Blank image for ``illumination.method = "flat_field"``.
    classify_cells : bool
        Add the calls with thresholds learnt from this image alone (a batch
        re-classifies with thresholds learnt from the whole set).
    nucleus_hint_px : float, optional
        The plate's nucleus diameter, for a plain-brightfield field whose own
        is unchecked (:func:`brightfield_nucleus_size`; ``sabgal run`` passes
        it, :func:`sabgal.batch.refine_nucleus_sizes`).
    encoding : str, optional
        The encoding the image's file declares (:attr:`sabgal.io.ImageData.encoding`),
        read under ``illumination.encoding = "auto"`` (:func:`pixel_encoding`).

    Returns
    -------
    ImageResult
    """
    config = config or Config()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if nuclear is not None:
        nuclear = np.asarray(nuclear, dtype=np.float32)
        if nuclear.shape != np.shape(rgb)[:2]:
            raise ValueError(f"nuclear image shape {nuclear.shape} differs from the RGB image {np.shape(rgb)[:2]}")
    px = pixel_size_um or config.setup.pixel_size_um
    prep, od_sum, image_qc, lamp_rgb = _read_and_release(
        prepare_image(rgb, nuclear=nuclear, config=config, flat_field=flat_field, encoding=encoding))
    height, width = od_sum.shape
    timings["illumination_stains_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    cells, nuclei, foreground, diameter, nucleus_dist, size_source = _segment(
        prep, nuclear=nuclear, config=config, od_sum=od_sum, nucleus_hint_px=nucleus_hint_px)
    timings["segment_s"] = time.perf_counter() - t
    if (prep.mode == "brightfield" and prep.counterstain is None and prep.lamp.method == "auto-percentile"
            and config.illumination.method == "auto"):
        # the lamp found no glass, so the field was read as a sheet; glass
        # noisier than the lamp's limits allow is found with wider ones, and
        # taken if it lies between the cells whose nuclei were just found
        t = time.perf_counter()
        lamp = _glass_lamp_for_sparse_field(rgb, nuclei, diameter_px=diameter, config=config, encoding=encoding)
        if lamp is not None:
            prep, od_sum, image_qc, lamp_rgb = _read_and_release(
                prepare_image(rgb, nuclear=nuclear, config=config, flat_field=flat_field, encoding=encoding,
                              lamp=lamp))
            prep.warnings.append("no glass within the lamp estimate's noise limits; glass found with limits "
                                 f"{SPARSE_GLASS_SPREAD_FACTOR:g}x wider lies between the cells (noisy glass, "
                                 "e.g. a decoded sRGB JPEG)")
            cells, nuclei, foreground, diameter, nucleus_dist, size_source = _segment(
                prep, nuclear=nuclear, config=config, od_sum=od_sum, nucleus_hint_px=nucleus_hint_px)
        timings["segment_s"] += time.perf_counter() - t

    t = time.perf_counter()
    table, xgal_c, xgal_bg, glass = measure_image(prep, cells, nuclei, foreground=foreground,
                                                  pixel_size_um=px, config=config, diameter_px=diameter,
                                                  nucleus_dist=nucleus_dist)
    timings["measure_s"] = time.perf_counter() - t
    model, lamp = prep.model, prep.lamp
    info: dict[str, Any] = {
        "setup": prep.mode,
        "counterstain": model.counterstain,
        "xgal_vector": [round(float(v), 4) for v in model.matrix[0]],
        "xgal_vector_refined": bool(prep.refined),
        "xgal_angle_from_reference_deg": round(model.xgal_angle_deg, 2),
        "counterstain_vector": ([round(float(v), 4) for v in model.matrix[1]]
                                if prep.counterstain is not None else None),
        "stain_condition_number": round(model.condition, 2),
        "pixel_encoding": (f"gamma {config.illumination.encoding_gamma:g}" if prep.encoding == "gamma"
                           else prep.encoding),
        "lamp_method": lamp.method,
        "jpeg_chroma_smoothed": prep.grey_deblocked is not None,
        "background_fraction": round(lamp.background_fraction, 4) if np.isfinite(lamp.background_fraction) else None,
        "illumination_nonuniformity": round(lamp.nonuniformity, 4),
        "lamp_rgb": lamp_rgb,
        "xgal_background_od": round(xgal_bg, 4),
        "nucleus_diameter_px": round(diameter, 2),
        "nucleus_size_source": size_source,
        "nucleus_size_hint_px": None if nucleus_hint_px is None else round(float(nucleus_hint_px), 2),
        "pixel_size_um": px,
        "height_px": int(height),
        "width_px": int(width),
        "warnings": prep.warnings,
        "qc": {**image_qc, **_qc_metrics(od_sum, glass, foreground, cells, lamp)},
    }
    if classify_cells:
        # the same composition as a batch rebuild of this image alone
        cc = config.classify
        one = table.assign(image="")
        th = classify.learn_thresholds(one, cc)
        per_image = (classify.image_thresholds(one, cc, th.positive)
                     if cc.positive_threshold == "auto" and cc.threshold_scope == "image" else {})
        table = classify.classify_cells(one, th, rule=cc.senescent_rule, per_image=per_image).drop(columns="image")
        info["thresholds"] = th.to_dict()
        if "" in per_image:
            info["thresholds"]["positive"], info["thresholds"]["positive_source"] = (
                per_image[""][0], per_image[""][1] if per_image[""][1] != "set" else th.positive_source)
    timings["total_s"] = time.perf_counter() - t0
    info["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return ImageResult(table, cells, nuclei, xgal_c.astype(np.float32, copy=False),
                       prep.counterstain, info)


def _read_and_release(prep: StainedImage) -> tuple[StainedImage, np.ndarray, dict, list[float]]:
    """What the rest of :func:`analyze_image` needs of the colour planes and
    the lamp field -- the summed OD, the pixel-level QC numbers and the
    lamp's median colour -- and ``prep`` without them: ~150 MB on a 2048 x
    2048 field, held through the rest of the pipeline otherwise (several
    images run at once in threads)."""
    od_sum = _channel_sum(prep.od)
    image_qc = qc.image_metrics(prep.rgb)
    lamp_rgb = [round(float(v), 4) for v in np.median(prep.lamp.image[::8, ::8].reshape(-1, 3), axis=0)]
    return (dataclasses.replace(prep, rgb=None, od=None, lamp=dataclasses.replace(prep.lamp, image=None)),
            od_sum, image_qc, lamp_rgb)


# Plain brightfield whose lamp estimate found no glass (its bright-percentile
# fallback: the field is read as a confluent sheet): the lamp is estimated again
# with its glass-spread limits (illumination.GLASS_MAX_SPREAD and
# GLASS_ACCEPT_SPREAD) this many times wider -- sRGB's decode enlarges the glass
# noise ~2.25x -- and the glass it finds is taken when it lies between the cells
# the first reading found: not on them (segment.glass_among_nuclei), not within
# half the nuclei's spacing of them at BRIGHTFIELD_SHEET_SPACING_RATIO times
# its field-wide rate or more, and round at most SPARSE_GLASS_MAX_ENCLOSED of
# the nuclei (its share of the ring one nucleus diameter from their centre over
# a half). A fresh sRGB JPEG field, decoded (79 % glass; its glass 0.55 % noisy,
# over the 0.5 % limit), came out as one sheet (detection F1 0.02): its wider
# limits found 59 % glass, round 2 % of its nuclei, 0.08x near them. Of the 22
# other development fields whose lamp fell back (nine sets: eight linear, one
# sRGB), 13 found glass on their cells with the wider limits
# (glass_among_nuclei) and 8 none; the other, a sheet of large stained cells
# with pale unstained cells between them (the wider "glass" on the pale cells:
# 0.38x near the nuclei, mostly those of stained cells), had it round 11 % of
# its nuclei.
SPARSE_GLASS_SPREAD_FACTOR = 2.25
SPARSE_GLASS_MAX_ENCLOSED = 0.05


def _glass_lamp_for_sparse_field(rgb: np.ndarray, nuclei: np.ndarray, *, diameter_px: float, config: Config,
                                 encoding: str | None) -> illumination.Lamp | None:
    """The lamp estimated with SPARSE_GLASS_SPREAD_FACTOR wider glass limits,
    when it finds glass that lies between the ``nuclei`` (full-resolution
    labels of a first reading, nuclei ``diameter_px`` across); else None."""
    ill = config.illumination
    # (the light prepare_image reads, overexposed channels rebuilt alike)
    light, at_max, _ = _light(_validate_rgb(rgb), pixel_encoding(config, encoding), ill)
    lamp = illumination.estimate_lamp(light, block_px=ill.block_px, degree=ill.polynomial_degree,
                                      at_max=at_max, spread_factor=SPARSE_GLASS_SPREAD_FACTOR)
    del light, at_max
    glass = lamp.background
    if lamp.method != "auto" or glass is None or not nuclei.any():
        return None
    spacing = segment.median_neighbour_distance(nuclei)
    if spacing is None or segment.glass_among_nuclei(glass, nuclei, diameter_px=diameter_px):
        return None
    if segment.glass_near_nuclei_ratio(glass, nuclei, diameter_px=0.5 * spacing) >= BRIGHTFIELD_SHEET_SPACING_RATIO:
        return None
    if segment.enclosed_nuclei_share(glass, nuclei, radius_px=diameter_px) > SPARSE_GLASS_MAX_ENCLOSED:
        return None
    return lamp


def _qc_metrics(od_sum, glass, foreground, cells, lamp) -> dict[str, float]:
    """Image-quality numbers from the summed OD and the segmentation (the
    pixel-level ones are :func:`sabgal.qc.image_metrics`); flags and cut-offs
    are applied by ``sabgal.qc``."""
    if glass.sum() > 1000:
        bg = od_sum[glass]
        # background uniformity: spread of coarse-block medians of glass OD
        f = max(1, min(od_sum.shape) // 8)
        vals = []
        for y in range(0, od_sum.shape[0] - f + 1, f):
            for x in range(0, od_sum.shape[1] - f + 1, f):
                g = glass[y:y + f, x:x + f]
                if g.sum() > 0.2 * f * f:
                    vals.append(filters.median(od_sum[y:y + f, x:x + f][g]))
        nonuni = float(np.percentile(vals, 95) - np.percentile(vals, 5)) if len(vals) >= 4 else float("nan")
        bg_noise = float(np.std(bg))
    else:
        nonuni, bg_noise = float("nan"), float("nan")
    debris = foreground & (cells == 0)
    return {
        "background_od_nonuniformity": nonuni,
        "background_od_noise": bg_noise,
        "foreground_fraction": float(foreground.mean()),
        "debris_area_fraction": float(debris.mean()),
        "lamp_residual_od": lamp.residual_od,
    }
