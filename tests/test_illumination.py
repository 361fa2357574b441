import numpy as np

from sabgal import illumination
from conftest import paint_field


def _vignetted(shape=(256, 320), strength=0.3, tint=(0.95, 0.8, 0.9)):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    r2 = ((yy - shape[0] * 0.45) / shape[0]) ** 2 + ((xx - shape[1] * 0.55) / shape[1]) ** 2
    v = 1 - strength * r2 / r2.max()
    return v[..., None] * np.asarray(tint)


def test_lamp_recovers_vignetting_and_tint_on_a_blank_field():
    lamp_true = _vignetted()
    rng = np.random.default_rng(0)
    img = (lamp_true + rng.normal(0, 0.003, lamp_true.shape)).astype(np.float32)
    lamp = illumination.estimate_lamp(img)
    rel = lamp.image / lamp_true
    assert np.abs(rel - 1).max() < 0.03
    assert lamp.background_fraction > 0.5
    assert lamp.nonuniformity > 0.15


def test_lamp_is_not_pulled_down_by_cells():
    cells = [(60, 60, 40, 9, 0.5), (150, 200, 45, 9, 0.0), (200, 80, 35, 8, 0.3)]
    rgb, lab, _ = paint_field((256, 320), cells, lamp=(0.9, 0.8, 0.7), noise=0.003)
    lamp = illumination.estimate_lamp(rgb.astype(np.float32) / 255)
    np.testing.assert_allclose(np.median(lamp.image[lab == 0], axis=0), [0.9, 0.8, 0.7], atol=0.01)


def test_flat_lamp_and_blank_lamp():
    img = _vignetted().astype(np.float32)
    flat = illumination.flat_lamp(img)
    assert flat.image.shape == img.shape and flat.nonuniformity == 0
    blank = illumination.lamp_from_blank(img, img.shape)
    assert np.abs(blank.image / img - 1).max() < 0.03


def test_block_reduce_mean_crops_edges():
    out = illumination.block_reduce_mean(np.ones((9, 10, 3)), 4)
    assert out.shape == (2, 2, 3)
