"""The "safe" ultrasound field-of-view crop never cuts tissue (issue 14, part 2).

Every layout is built here: speckle inside a field of view (fan or rectangle) on an exactly-zero
background, with side panels, text, dark lesions and anechoic cysts. The guarantee is exact:
every FOV and lesion pixel is inside the crop box and not cleared.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from breastscreen.errors import PreprocessError
from breastscreen.preprocess.ultrasound import (
    crop_ultrasound,
    find_field_of_view,
    find_field_of_view_safe,
    fov_crop_uint8,
    uniform_background,
)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], scale: float = 40.0) -> np.ndarray:
    return rng.gamma(2.0, scale, shape).clip(1, 255).round().astype(np.uint8)


def _kept(fov_mask: np.ndarray, box: tuple[int, int, int, int], region: np.ndarray) -> bool:
    x0, y0, x1, y1 = box
    keep = np.zeros(region.shape, bool)
    keep[y0:y1, x0:x1] = True
    return bool((region <= (keep & fov_mask)).all())


def _rect(rng: np.random.Generator, h: int = 300, w: int = 400, box=(60, 30, 340, 280)) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = box
    fov = np.zeros((h, w), bool)
    fov[y0:y1, x0:x1] = True
    return np.where(fov, _speckle(rng, (h, w)), 0).astype(np.uint8), fov


def _assert_safe(img: np.ndarray, *regions: np.ndarray) -> tuple[int, int, int, int]:
    fov = find_field_of_view_safe(img)
    for region in regions:
        assert _kept(fov.mask, fov.box, region)
    crop, rec = crop_ultrasound(img, mode="safe")
    x0, y0, x1, y1 = rec["crop_box"]
    assert crop.shape == (y1 - y0, x1 - x0) and rec["crop_mode"] == "safe"
    for region in regions:  # the cropped pixels are the original ones
        assert np.array_equal(crop[region[y0:y1, x0:x1]], img[region].astype(np.float32))
    return fov.box


def test_fan_with_corner_text_and_scale_panel() -> None:
    rng = np.random.default_rng(1)
    h, w = 360, 480
    fov = np.zeros((h, w), np.uint8)
    cv2.ellipse(fov, (220, -10), (330, 330), 0, 55, 125, 1, -1)
    fov = fov.astype(bool)
    img = np.where(fov, _speckle(rng, (h, w)), 0).astype(np.uint8)
    cv2.putText(img, "GE L12", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)  # top-left corner
    for y in range(40, 320, 40):  # depth-scale ticks in a panel beside the image
        cv2.drawMarker(img, (462, y), 255, cv2.MARKER_CROSS, 7, 1)
    text = (img > 2) & ~fov & (np.arange(w)[None, :] < 100)  # background tolerance: 2 grey levels
    box = _assert_safe(img, fov)
    ys, xs = np.nonzero(fov)
    assert box[2] == xs.max() + 3 and box[3] == ys.max() + 3  # the scale panel (x >= 458) is cut off; 2 px margin
    crop, rec = crop_ultrasound(img, mode="safe")
    x0, y0 = rec["crop_box"][:2]
    # The corner text shares rows and columns with the fan, so it stays in the box, but it is a
    # small island outside the fan's hull: cleared.
    assert text.any() and (crop[text[y0:, x0:][: crop.shape[0], : crop.shape[1]]] == 0).all()


def test_rectangle_with_text_side_panels_removed() -> None:
    rng = np.random.default_rng(2)
    img, fov = _rect(rng, 300, 460, (90, 40, 380, 290))
    cv2.putText(img, "TGC", (4, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 230, 1)  # left panel
    cv2.putText(img, "12", (400, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)  # right panel
    cv2.putText(img, "RIGHT BREAST", (120, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)  # header
    box = _assert_safe(img, fov)
    assert box == (88, 38, 382, 292)  # the field of view and a 2-px margin: every panel beyond a gap is gone


def test_dark_lesion_touching_the_border_is_kept() -> None:
    rng = np.random.default_rng(3)
    # The FOV reaches the bottom and right image edges; a dark, partly exactly-zero lesion touches both.
    img, fov = _rect(rng, 300, 400, (50, 30, 400, 300))
    yy, xx = np.mgrid[0:300, 0:400]
    lesion = ((yy - 290) / 60.0) ** 2 + ((xx - 390) / 90.0) ** 2 <= 1.0
    img[lesion] = np.abs(rng.normal(0.0, 2.0, lesion.sum())).round()
    assert (img[lesion] == 0).mean() > 0.15
    _assert_safe(img, fov, lesion)


def test_large_anechoic_cyst_is_kept_where_v1_cuts_it() -> None:
    rng = np.random.default_rng(4)
    # 600 rows: a large anechoic cyst and its dark surroundings fill the lower FOV down to its edge.
    h, w = 600, 420
    img, fov = _rect(rng, h, w, (40, 20, 380, 580))
    yy, xx = np.mgrid[0:h, 0:w]
    cyst = (((yy - 420) / 170.0) ** 2 + ((xx - 210) / 150.0) ** 2 <= 1.0) & fov
    dark = fov & (yy > 240)
    img[dark] = rng.gamma(1.5, 2.5, dark.sum()).clip(0, 255).round()  # shadowed tissue, very dark
    img[cyst] = np.abs(rng.normal(0.0, 2.5, cyst.sum())).round()  # anechoic: noise around 0
    _assert_safe(img, fov, cyst)
    old = find_field_of_view(img)
    x0, y0, x1, y1 = old.box
    kept_v1 = (cyst[y0:y1, x0:x1] & old.mask[y0:y1, x0:x1]).sum() / cyst.sum()
    assert kept_v1 < 0.5  # the legacy crop loses most of it (the failure this crop fixes)


def test_enclosed_exact_zero_cyst_is_not_background() -> None:
    rng = np.random.default_rng(5)
    img, fov = _rect(rng)
    img[120:200, 150:260] = 0  # exactly zero, but enclosed by tissue
    assert not uniform_background(img)[120:200, 150:260].any()
    assert _assert_safe(img, fov) == (58, 28, 342, 282)


def test_image_without_background_is_not_cropped() -> None:
    rng = np.random.default_rng(6)
    img = _speckle(rng, (200, 260))
    img[150:, :] = np.abs(rng.normal(0, 2, (50, 260))).round()  # dark bottom, touching three borders
    assert find_field_of_view_safe(img).box == (0, 0, 260, 200)


def test_uniform_or_empty_image_is_an_error() -> None:
    with pytest.raises(PreprocessError, match="uniform"):
        find_field_of_view_safe(np.zeros((40, 40)), name="x.png")
    img = np.zeros((200, 200))
    img[5:9, 5:9] = 200.0
    with pytest.raises(PreprocessError, match="x.png"):
        find_field_of_view_safe(img, name="x.png")


def test_v1_record_unchanged_and_modes_checked() -> None:
    rng = np.random.default_rng(7)
    img, _ = _rect(rng)
    _, rec = fov_crop_uint8(img.astype(np.uint8))
    assert "crop_mode" not in rec and "annotations_removed" not in rec
    _, rec = fov_crop_uint8(img.astype(np.uint8), crop="safe")
    assert rec["crop_mode"] == "safe" and rec["crop_box"] == [58, 28, 342, 282]
    with pytest.raises(ValueError, match="crop mode"):
        crop_ultrasound(img, mode="v3")
