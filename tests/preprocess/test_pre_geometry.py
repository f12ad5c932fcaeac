"""Resampling, the preprocessed <-> original mapping, fixed windows and standardisation."""

from __future__ import annotations

import numpy as np
import pytest
from pre_phantoms import phantom_mammo

from breastscreen.preprocess.mammo import (
    box_to_preprocessed,
    extract_window,
    place_window,
    preprocess_image,
    resample_factors,
    standardize,
    to_original,
    to_preprocessed,
    window_size,
)


def test_resample_to_reference_spacing() -> None:
    assert resample_factors(None, 1.0) == (1.0, 1.0)
    assert resample_factors((0.2, 0.2), 1.0) == (2.0, 2.0)
    assert resample_factors((0.1, 0.1), 0.25) == (0.25, 0.25)
    img, _ = phantom_mammo(h=400, w=300)
    res = preprocess_image(img, (0.2, 0.2), 0.5)  # 0.2 mm pixels -> 0.2 mm: same size as the crop
    x0, y0, x1, y1 = res.record["crop_box"]
    assert res.image.shape == (y1 - y0, x1 - x0)
    assert res.record["spacing_mm"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="scale must be > 0"):
        resample_factors(None, 0.0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_round_trip_to_original(side: str) -> None:
    img, _ = phantom_mammo(h=500, w=360, chest_wall=side)
    marker = np.zeros(img.shape, np.uint8)
    marker[200:260, 30:90] = 1  # a lesion near the chest wall
    if side == "right":
        marker = marker[:, ::-1].copy()
    res = preprocess_image(img, None, 0.5)
    rec = res.record
    moved = to_preprocessed(marker, rec, kind="mask")
    assert moved.shape == res.image.shape and moved.sum() > 0
    # the lesion is near the chest wall, which is at the LEFT after orientation
    xs = np.nonzero(moved)[1]
    assert xs.mean() < moved.shape[1] / 2
    back = to_original(moved, rec, kind="mask")
    assert back.shape == img.shape
    inter = (back > 0) & (marker > 0)
    union = (back > 0) | (marker > 0)
    assert inter.sum() / union.sum() > 0.9
    # a heatmap stack maps back too, with zeros outside the crop
    stack = np.ones((2,) + res.image.shape, np.float32)
    b2 = to_original(stack, rec)
    x0, y0, x1, y1 = rec["crop_box"]
    assert b2.shape == (2,) + img.shape and b2[:, y0:y1, x0:x1].min() > 0.99
    assert b2.sum() == pytest.approx(2 * (x1 - x0) * (y1 - y0), rel=1e-3)
    # ROI boxes follow the same geometry
    roi = (30, 200, 90, 260) if side == "left" else (360 - 90, 200, 360 - 30, 260)
    box = box_to_preprocessed(roi, rec)
    ys, xs = np.nonzero(moved)
    assert box[0] <= xs.min() + 1 and box[2] >= xs.max() and box[1] <= ys.min() + 1 and box[3] >= ys.max()


def test_to_original_checks_shape() -> None:
    img, _ = phantom_mammo(h=200, w=150)
    res = preprocess_image(img, None, 1.0)
    with pytest.raises(ValueError, match="preprocessed shape"):
        to_original(np.zeros((3, 3)), res.record)


def test_place_window_anchors_chest_wall_and_covers_breast() -> None:
    mask = np.zeros((1000, 600), bool)
    mask[600:900, :300] = True  # breast low in the image
    box = place_window(mask, (400, 500))
    assert box[0] == 0 and box[2] == 500 and box[3] - box[1] == 400
    assert box[1] <= 600 and box[3] >= 900
    # smaller image than the window: the window contains the whole image, padded
    small = np.zeros((100, 50), bool)
    small[20:80, :30] = True
    b = place_window(small, (300, 200))
    assert b[0] == 0 and b[1] <= 0 and b[3] >= 100
    win = extract_window(np.ones((100, 50)), b, fill=-1.0)
    assert win.shape == (300, 200) and (win == 1).sum() == 100 * 50


def test_window_sizes_scale() -> None:
    assert window_size("CC", 1.0) == (2677, 1942)
    assert window_size("MLO", 0.5) == (1487, 874)
    assert window_size("MVDCN", 0.25) == (650, 500)
    with pytest.raises(ValueError, match="CC, MLO or MVDCN"):
        window_size("XX", 1.0)


def test_standardize() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    z = standardize(x)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    c = standardize(np.full((4, 4), 7.0))
    assert np.all(c == 0)  # zero std: only centred
    m = np.zeros((3, 4), bool)
    m[0] = True
    zm = standardize(x, m)
    assert abs(zm[0].mean()) < 1e-6
