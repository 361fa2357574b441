"""Sample data (File ▸ Open Sample ▸ sabgal): synthetic SA-β-gal fields from
:mod:`sabgal.synth`, with their true cell labels (hidden) for comparison."""

from __future__ import annotations

import numpy as np

from sabgal._napari._layers import image_layer_data

__all__ = ["sample_field", "sample_field_dapi", "synthetic_layers", "SAMPLE_SHAPE"]

SAMPLE_SHAPE = (512, 640)
# Draw seeds picked for a readable mix of negative, positive, enlarged and senescent cells.
_SEEDS = {"counterstain": 3, "fluorescence": 1}


def synthetic_layers(setup: str, *, seed: int, shape: tuple[int, int] = SAMPLE_SHAPE,
                     senescent_fraction: float | None = 0.35) -> list[tuple]:
    """Layer data of one synthetic field: RGB, DAPI (fluorescence set-up) and true cells.

    The pixels are scaled as :func:`sabgal.io.read_rgb` scales a file of the
    same bit depth, so the widget analyses what ``sabgal run`` would.
    """
    from sabgal import synth

    params = synth.random_params(np.random.default_rng(seed), setup=setup, shape=shape,
                                 senescent_fraction=senescent_fraction, formats=("png",))
    field = synth.render_field(params, np.random.default_rng(params.seed))
    rgb = field.rgb.astype(np.float32) / np.float32(np.iinfo(field.rgb.dtype).max)
    nuclear = None
    if field.nuclear is not None:
        nuclear = field.nuclear.astype(np.float32) / np.float32(params.dapi_full_scale)
    name = f"synthetic {setup}"
    meta = {"image": f"{name}.png", "pixel_size_um": None, "synthetic_seed": seed}
    layers = image_layer_data(rgb, name, nuclear=nuclear, meta=meta)
    truth = field.truth
    layers.append((field.cell_labels, {"name": f"{name} true cells", "visible": False, "opacity": 0.5,
                                       "features": truth.assign(index=truth["cell_id"]) if "cell_id" in truth
                                       else None,
                                       "metadata": {"sabgal": {"role": "truth", "stem": name}}}, "labels"))
    return layers


def sample_field() -> list[tuple]:
    """A synthetic counterstained SA-β-gal field (512 x 640 px)."""
    return synthetic_layers("counterstain", seed=_SEEDS["counterstain"])


def sample_field_dapi() -> list[tuple]:
    """A synthetic SA-β-gal brightfield field with its DAPI image (512 x 640 px)."""
    return synthetic_layers("fluorescence", seed=_SEEDS["fluorescence"])
