"""sabgal: quantify SA-β-gal stained microscopy, cell by cell.

The core stages are pure functions on arrays (``illumination``, ``stains``,
``segment``, ``measure``, ``classify``) composed by :func:`analyze_image`;
file I/O lives in ``io`` and ``batch``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sabgal")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from sabgal.config import Config, load_config

__all__ = ["__version__", "Config", "load_config", "analyze_image"]


def __getattr__(name: str):
    if name == "analyze_image":
        from sabgal.pipeline import analyze_image

        return analyze_image
    raise AttributeError(f"module 'sabgal' has no attribute {name!r}")
