"""Ultrasound field-of-view crop, exclusion rules and augmentation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from breastscreen.errors import PreprocessError
from breastscreen.preprocess.ultrasound import (
    USTransform,
    crop_ultrasound,
    find_duplicates,
    find_field_of_view,
    pixel_hash,
    zero_fraction,
)


def _us_image(shape: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speckle inside a fan or rectangle, burned-in text and calipers outside it."""
    rng = np.random.default_rng(seed)
    h, w = 300, 400
    fov = np.zeros((h, w), np.uint8)
    if shape == "fan":
        cv2.ellipse(fov, (200, 20), (250, 250), 0, 55, 125, 1, -1)
    else:
        fov[60:280, 80:340] = 1
    speckle = rng.gamma(2.0, 40.0, (h, w)).clip(0, 255)
    img = np.where(fov > 0, speckle, 0).astype(np.uint8)
    cv2.putText(img, "GE L12 BREAST", (5, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1)
    cv2.putText(img, "D 3.2cm", (300, 295), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 230, 1)
    cv2.drawMarker(img, (20, 150), 255, cv2.MARKER_CROSS, 9, 1)
    return img, fov.astype(bool)


@pytest.mark.parametrize("shape", ["fan", "rect"])
def test_crop_removes_text_keeps_fov(shape: str) -> None:
    img, fov = _us_image(shape)
    crop, rec = crop_ultrasound(img)
    x0, y0, x1, y1 = rec["crop_box"]
    ys, xs = np.nonzero(fov)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1  # FOV not cut
    # the text and marker are gone: no bright pixel left outside the true field of view
    outside = ~fov[y0:y1, x0:x1]
    assert crop[outside].max() == 0
    assert crop.shape == (y1 - y0, x1 - x0)
    assert (x1 - x0) * (y1 - y0) < 0.8 * img.size


def test_no_field_of_view_is_an_error() -> None:
    with pytest.raises(PreprocessError, match="img.png"):
        find_field_of_view(np.zeros((50, 50)), name="img.png")


def test_exclusion_helpers() -> None:
    a = np.zeros((10, 10))
    a[:1] = 1
    assert zero_fraction(a) == pytest.approx(0.9)
    b = np.arange(20.0).reshape(4, 5)
    assert pixel_hash(b) == pixel_hash(b.copy()) != pixel_hash(b.T)
    assert find_duplicates([("a", "h1"), ("b", "h2"), ("c", "h1")]) == [("c", "a")]


def test_augmentation_deterministic_and_masks_aligned() -> None:
    img = np.full((100, 140), 20.0, np.float32)
    img[30:60, 50:90] = 250.0
    mask = np.zeros((100, 140), bool)
    mask[30:60, 50:90] = True
    t = USTransform(train=True)
    a, ma = t(img, np.random.default_rng(5), {"lesion": mask})
    b, mb = t(img, np.random.default_rng(5), {"lesion": mask})
    assert a.shape == (256, 256) and np.array_equal(a, b) and np.array_equal(ma["lesion"], mb["lesion"])
    for seed in range(5):
        out, m = t(img, np.random.default_rng(seed), {"lesion": mask})
        lm = m["lesion"] > 0
        if lm.sum() > 20:
            assert np.median(out[lm]) > np.median(out[~lm])
    ev, _ = USTransform(train=False)(img)
    assert ev.shape == (256, 256) and abs(float(ev.mean())) < 1e-4
    with pytest.raises(ValueError, match="Generator"):
        t(img)


def test_bus_bra_crop_keeps_lesion_box(shared_data) -> None:
    root = shared_data / "bus-bra"
    if not (root / "bus_data.csv").is_file():
        pytest.skip("no BUS-BRA")
    import csv

    rows = list(csv.DictReader(open(root / "bus_data.csv")))[::150]
    assert rows
    for row in rows[:12]:
        img = np.array(Image.open(root / "Images" / f"{row['ID']}.png").convert("L"))
        _, rec = crop_ultrasound(img)
        x, y, w, h = json.loads(row["BBOX"])
        x0, y0, x1, y1 = rec["crop_box"]
        assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1, row["ID"]
