"""Configuration: frozen, keyword-only dataclasses loaded from TOML.

A configuration is data. Every scientific setting lives in one of the sections
below, each with a documented default that works for all three imaging set-ups
(counterstain, plain brightfield, brightfield + nuclear fluorescence) without
tuning. Presets in ``configs/*.toml`` pin a set-up; a user file overrides any
subset of keys. Unknown keys and bad values are rejected on load with a message
naming the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Config",
    "SetupConfig",
    "IlluminationConfig",
    "StainConfig",
    "SegmentConfig",
    "ClassifyConfig",
    "BatchConfig",
    "QCConfig",
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "preset_names",
    "PRESET_DIR",
]

Mode = Literal["auto", "counterstain", "brightfield", "fluorescence"]
Counterstain = Literal[
    "auto", "none", "nuclear_fast_red", "eosin", "neutral_red", "hematoxylin", "custom"
]
Rule = Literal["positive_and_enlarged", "positive", "positive_or_enlarged"]
Executor = Literal["processes", "threads"]
PositiveMeasure = Literal["xgal_od_core_p60", "xgal_od_perinuclear_p60", "xgal_od_p90", "xgal_od_mean"]
ThresholdScope = Literal["image", "set"]


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_choice(name: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    _check(value in choices, f"{name} must be one of {list(choices)}, got {value!r}")


def _check_vector(name: str, vec: tuple[float, ...] | None) -> None:
    if vec is None:
        return
    _check(
        len(vec) == 3 and all(isinstance(v, (int, float)) and v >= 0 for v in vec)
        and sum(vec) > 0,
        f"{name} must be three non-negative numbers (R, G, B optical density), got {vec!r}",
    )


@dataclass(frozen=True, kw_only=True)
class SetupConfig:
    """Which imaging set-up an image is, and how to find its nuclear companion.

    mode: ``auto`` decides per image (companion present -> fluorescence; else a
    counterstain detected -> counterstain; else brightfield).
    companion_suffixes: a nuclear image pairs with ``<stem><suffix>.<any ext>``.
    companion_channels: pairs ``[rgb_token, nuclear_token]`` for plate readers
      that name channels inside the file name (ImageXpress ``A01_s1_w1`` /
      ``A01_s1_w2``): a file whose name holds ``nuclear_token`` is the nuclear
      image of the file named the same with (its last) ``nuclear_token``
      replaced by ``rgb_token``, in the same folder.
    """

    mode: Mode = "auto"
    counterstain: Counterstain = "auto"
    custom_counterstain_vector: tuple[float, float, float] | None = None
    companion_suffixes: tuple[str, ...] = ("_dapi", "_hoechst", "_nuclei", "_nuc", "_DAPI", "_Hoechst")
    companion_channels: tuple[tuple[str, str], ...] = ()  # e.g. (("_w1", "_w2"),)
    pixel_size_um: float | None = None  # µm per pixel when the file has none

    def __post_init__(self) -> None:
        _check_choice("setup.mode", self.mode, Mode)
        _check_choice("setup.counterstain", self.counterstain, Counterstain)
        _check_vector("setup.custom_counterstain_vector", self.custom_counterstain_vector)
        _check(
            self.counterstain != "custom" or self.custom_counterstain_vector is not None,
            "setup.counterstain = 'custom' needs setup.custom_counterstain_vector = [r, g, b]",
        )
        _check(
            self.pixel_size_um is None or self.pixel_size_um > 0,
            f"setup.pixel_size_um must be > 0 (µm per pixel), got {self.pixel_size_um!r}",
        )
        _check(
            all(isinstance(s, str) and s for s in self.companion_suffixes),
            "setup.companion_suffixes must be non-empty strings",
        )
        _check(
            all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(t, str) and t for t in p) and p[0] != p[1]
                for p in self.companion_channels),
            "setup.companion_channels must be pairs [rgb_token, nuclear_token] of different non-empty strings, "
            f"got {self.companion_channels!r}",
        )


@dataclass(frozen=True, kw_only=True)
class IlluminationConfig:
    """Lamp estimation. ``auto`` fits a smooth per-channel white level to the
    image's own background; ``flat_field`` divides by a blank image; ``none``
    uses the brightest plausible value per channel, flat across the field."""

    method: Literal["auto", "flat_field", "none"] = "auto"
    flat_field_path: str | None = None
    block_px: int = 48  # tile size for local background estimates
    polynomial_degree: int = 2  # smooth vignetting model per channel
    # How the camera encoded light in the pixel values: "linear" (a scientific
    # camera's raw output, and sabgal's renderer), "srgb" (the sRGB curve that
    # consumer cameras and most microscope software's JPEG/"display" exports
    # apply), "gamma" (value = light ** (1 / encoding_gamma)), or "auto":
    # sRGB where the file declares it (sabgal.io.ImageData.encoding), else
    # linear. Beer-Lambert needs light: an encoded image is decoded first, or
    # every optical density reads ~1/2.2 of its value.
    encoding: Literal["auto", "linear", "srgb", "gamma"] = "auto"
    encoding_gamma: float = 2.2

    def __post_init__(self) -> None:
        _check(self.method in ("auto", "flat_field", "none"),
               f"illumination.method must be one of ['auto', 'flat_field', 'none'], got {self.method!r}")
        _check(self.method != "flat_field" or bool(self.flat_field_path),
               "illumination.method = 'flat_field' needs illumination.flat_field_path")
        _check(8 <= self.block_px <= 1024, f"illumination.block_px must be in [8, 1024], got {self.block_px}")
        _check(0 <= self.polynomial_degree <= 6,
               f"illumination.polynomial_degree must be in [0, 6], got {self.polynomial_degree}")
        _check(self.encoding in ("auto", "linear", "srgb", "gamma"),
               f"illumination.encoding must be one of ['auto', 'linear', 'srgb', 'gamma'], got {self.encoding!r}")
        _check(isinstance(self.encoding_gamma, (int, float)) and 1.0 <= self.encoding_gamma <= 3.0,
               f"illumination.encoding_gamma must be in [1, 3], got {self.encoding_gamma!r}")


@dataclass(frozen=True, kw_only=True)
class StainConfig:
    """Colour deconvolution. Vectors are R, G, B optical density (normalised on use).

    estimate_xgal: refine the X-gal vector from the image's own blue pixels,
    accepted only within ``max_xgal_angle_deg`` of the reference.
    """

    xgal_vector: tuple[float, float, float] = (0.722, 0.557, 0.411)
    estimate_xgal: bool = True
    max_xgal_angle_deg: float = 25.0
    estimate_counterstain: bool = True
    max_counterstain_angle_deg: float = 20.0
    min_grey_angle_deg: float = 8.0  # unmix a grey channel only if X-gal is this far from neutral

    def __post_init__(self) -> None:
        _check_vector("stains.xgal_vector", self.xgal_vector)
        _check(0 <= self.min_grey_angle_deg <= 30,
               f"stains.min_grey_angle_deg must be in [0, 30], got {self.min_grey_angle_deg}")
        _check(0 < self.max_xgal_angle_deg <= 45,
               f"stains.max_xgal_angle_deg must be in (0, 45], got {self.max_xgal_angle_deg}")
        _check(0 < self.max_counterstain_angle_deg <= 45,
               f"stains.max_counterstain_angle_deg must be in (0, 45], got {self.max_counterstain_angle_deg}")


@dataclass(frozen=True, kw_only=True)
class SegmentConfig:
    """Nucleus and cell segmentation. Sizes in pixels; ``auto`` (0) estimates the
    nucleus diameter from the image itself."""

    nucleus_diameter_px: float = 0.0  # 0 = estimate from the image
    min_nucleus_area_fraction: float = 0.25  # of the typical nucleus area
    min_cell_area_fraction: float = 0.5  # of the typical nucleus area
    max_cell_radius_nuclei: float = 8.0  # territory reach, in nucleus diameters
    foreground_sensitivity: float = 1.0  # >1 grows cells into fainter cytoplasm
    min_cell_extent_nuclei: float = 1.2  # a cell reaches at least this far (nucleus diameters, capped at half the gap to the next nucleus)

    def __post_init__(self) -> None:
        _check(self.nucleus_diameter_px >= 0,
               f"segment.nucleus_diameter_px must be >= 0 (0 = auto), got {self.nucleus_diameter_px}")
        _check(0 < self.min_nucleus_area_fraction < 1,
               f"segment.min_nucleus_area_fraction must be in (0, 1), got {self.min_nucleus_area_fraction}")
        _check(0 < self.min_cell_area_fraction <= 5,
               f"segment.min_cell_area_fraction must be in (0, 5], got {self.min_cell_area_fraction}")
        _check(1 <= self.max_cell_radius_nuclei <= 50,
               f"segment.max_cell_radius_nuclei must be in [1, 50], got {self.max_cell_radius_nuclei}")
        _check(0 <= self.min_cell_extent_nuclei <= 10,
               f"segment.min_cell_extent_nuclei must be in [0, 10], got {self.min_cell_extent_nuclei}")
        _check(0.25 <= self.foreground_sensitivity <= 4,
               f"segment.foreground_sensitivity must be in [0.25, 4], got {self.foreground_sensitivity}")


POSITIVE_MEASURES = get_args(PositiveMeasure)


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig:
    """Per-cell calls.

    positive_threshold: ``"auto"`` learns the X-gal threshold from the cells of
    the image set (valley between negative and positive populations, never
    below ``min_positive_threshold``, or half of it where an image shows its
    faint positives apart from its unstained cells); a number fixes it (X-gal OD units of
    ``positive_measure``).
    threshold_scope: with ``"auto"``, ``"image"`` anchors each image's
    threshold just above its own unstained cells (the set's threshold for an
    image without any); ``"set"`` uses one threshold for every image.
    enlarged_threshold_px / _um2: fixed area threshold; otherwise
    ``enlarged_factor`` x the median area of SA-β-gal negative cells.
    """

    positive_measure: PositiveMeasure = "xgal_od_perinuclear_p60"
    positive_threshold: float | Literal["auto"] = "auto"
    threshold_scope: ThresholdScope = "image"
    min_positive_threshold: float = 0.03
    default_positive_threshold: float = 0.10  # "visibly blue"; used when nothing can be learnt
    enlarged_factor: float = 1.8
    enlarged_threshold_px: float | None = None
    enlarged_threshold_um2: float | None = None
    senescent_rule: Rule = "positive_and_enlarged"
    exclude_border_cells: bool = False

    def __post_init__(self) -> None:
        _check_choice("classify.positive_measure", self.positive_measure, PositiveMeasure)
        _check(self.positive_threshold == "auto" or (
            isinstance(self.positive_threshold, (int, float)) and self.positive_threshold > 0),
            f"classify.positive_threshold must be 'auto' or a number > 0, got {self.positive_threshold!r}")
        _check_choice("classify.threshold_scope", self.threshold_scope, ThresholdScope)
        _check(self.min_positive_threshold > 0,
               f"classify.min_positive_threshold must be > 0, got {self.min_positive_threshold}")
        _check(self.default_positive_threshold > 0,
               f"classify.default_positive_threshold must be > 0, got {self.default_positive_threshold}")
        _check(self.enlarged_factor > 1,
               f"classify.enlarged_factor must be > 1, got {self.enlarged_factor}")
        for name in ("enlarged_threshold_px", "enlarged_threshold_um2"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"classify.{name} must be > 0, got {v}")
        _check_choice("classify.senescent_rule", self.senescent_rule, Rule)


@dataclass(frozen=True, kw_only=True)
class QCConfig:
    """Quality-control cut-offs (see README, 'Quality control')."""

    min_focus_ratio: float = 0.35  # focus score / plate median below this -> blurred
    max_saturated_fraction: float = 0.05
    max_background_nonuniformity: float = 0.08  # OD, after correction
    min_cells: int = 5
    max_cell_count_ratio: float = 4.0  # vs plate median, either way
    max_stain_angle_deg: float = 20.0
    max_debris_fraction: float = 0.05
    overlay_max_px: int = 1024  # long side of the DIR/qc/<key>.png overlays (bigger images shrink)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            _check(v >= 0, f"qc.{f.name} must be >= 0, got {v}")
        _check(isinstance(self.overlay_max_px, int) and 64 <= self.overlay_max_px <= 16384,
               f"qc.overlay_max_px must be an integer in [64, 16384], got {self.overlay_max_px!r}")


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How a run is executed and what it writes."""

    workers: int = 0  # 0 = all cores
    executor: Executor = "processes"  # "processes" (isolated workers) or "threads" (one process)
    filename_pattern: str = "auto"  # preset name or a regex with named groups
    write_labels: bool = True
    overlays: bool = True
    dask_scheduler: str | None = None
    calibrate_from_controls: bool = True
    control_percentile: float = 95.0

    def __post_init__(self) -> None:
        _check(self.workers >= 0, f"batch.workers must be >= 0 (0 = all cores), got {self.workers}")
        _check_choice("batch.executor", self.executor, Executor)
        _check(0 < self.control_percentile < 100,
               f"batch.control_percentile must be in (0, 100), got {self.control_percentile}")


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration; sections mirror the TOML tables."""

    setup: SetupConfig = field(default_factory=SetupConfig)
    illumination: IlluminationConfig = field(default_factory=IlluminationConfig)
    stains: StainConfig = field(default_factory=StainConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Return a copy with some keys of some sections replaced.

        >>> Config().replace(classify={"positive_threshold": 0.2}).classify.positive_threshold
        0.2
        """
        merged = config_to_dict(self)
        for name, values in sections.items():
            _check(name in merged, f"unknown config section {name!r}; valid: {sorted(merged)}")
            merged[name].update(values)
        return config_from_dict(merged)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_TYPES = {
    "setup": SetupConfig,
    "illumination": IlluminationConfig,
    "stains": StainConfig,
    "segment": SegmentConfig,
    "classify": ClassifyConfig,
    "qc": QCConfig,
    "batch": BatchConfig,
}

PRESET_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/`` (usable as ``--config NAME``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    # TOML arrays arrive as lists; dataclass fields hold tuples (of tuples).
    if isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> Config:
    """Build a validated :class:`Config` from nested dicts (as read from TOML).

    Raises
    ------
    ConfigError
        On an unknown section or key, or an invalid value; the message names it.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of sections, got {type(data).__name__}")
    sections: dict[str, Any] = {}
    for name, values in data.items():
        if name in ("sabgal_version", "preset", "description"):
            continue
        if name not in _SECTION_TYPES:
            raise ConfigError(f"{source}: unknown section [{name}]; valid sections: {sorted(_SECTION_TYPES)}")
        cls = _SECTION_TYPES[name]
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key}; valid keys in [{name}]: {sorted(known)}")
            default = known[key].default
            kwargs[key] = _coerce(name, key, value, default)
        try:
            sections[name] = cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: [{name}] {exc}") from None
    return Config(**sections)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict of every setting (tuples as lists), for JSON/TOML provenance."""
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTION_TYPES:
        section = getattr(config, name)
        out[name] = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(section).items()
        }
    return out


def load_config(path_or_name: str | Path | None) -> Config:
    """Load a TOML file, or a preset by name (see :func:`preset_names`).

    ``None`` returns the defaults (set-up decided per image).

    Raises
    ------
    ConfigError
        When the file is missing, is not valid TOML, or holds bad keys/values.
    """
    if path_or_name is None:
        return Config()
    path = Path(path_or_name)
    if not path.exists() and (PRESET_DIR / f"{path_or_name}.toml").exists():
        path = PRESET_DIR / f"{path_or_name}.toml"
    if not path.exists():
        raise ConfigError(
            f"{path_or_name}: no such config file or preset; presets: {preset_names()}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))
