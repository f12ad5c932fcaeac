"""crop_min_lesion_fraction: the share of each lesion the model's field-of-view crop keeps."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from breastscreen.data.types import Exam, ImageRef, LesionMask, Modality
from breastscreen.preprocess.ultrasound import fov_crop_uint8
from breastscreen.specs import USSpec
from breastscreen.ultrasound.crop_guarantee import (
    cached_crop_check,
    crop_lesion_fractions,
    kept_mask,
    lesion_fraction_kept,
)

H, W, TOP = 160, 140, 30  # uniform black band above the tissue: the crop cuts it (but keeps 2 px)


def _image(seed: int = 0) -> np.ndarray:
    img = np.zeros((H, W), np.uint8)
    img[TOP:, :] = np.random.default_rng(seed).integers(40, 200, (H - TOP, W))
    return img


def _half_outside() -> np.ndarray:
    """100 lesion pixels in the black band (rows 5-14, far above the 2-px margin) and 100 in tissue."""
    m = np.zeros((H, W), np.uint8)
    m[5:15, 50:60] = 255
    m[60:70, 50:60] = 255
    return m


@pytest.mark.parametrize("remove", [False, True])
def test_kept_mask_is_the_crop_the_spec_prepares(remove):
    img = _image()
    spec = USSpec(crop="safe", remove_annotations=remove)
    keep = kept_mask(img, spec)
    _, record = fov_crop_uint8(img, crop="safe", annotations=spec.annotation_params if remove else None)
    x0, y0, x1, y1 = record["crop_box"]
    expected = np.zeros_like(keep)
    expected[y0:y1, x0:x1] = True
    assert np.array_equal(keep, expected) and (x0, y0, x1, y1) == (0, TOP - 2, W, H)


def test_fraction_on_crafted_masks():
    img, spec = _image(), USSpec(crop="safe")
    assert lesion_fraction_kept(img, _half_outside(), spec) == pytest.approx(0.5)
    inside = np.zeros((H, W), np.uint8)
    inside[80:90, 20:40] = 1
    assert lesion_fraction_kept(img, inside, spec) == 1.0
    # an image the preparation refuses (> 80 % zero pixels) keeps nothing
    empty = np.zeros((H, W), np.uint8)
    empty[150:, :] = 100
    assert lesion_fraction_kept(empty, inside, spec) == 0.0
    with pytest.raises(ValueError, match="does not match"):
        lesion_fraction_kept(img, np.ones((H + 1, W)), spec)
    with pytest.raises(ValueError, match="empty"):
        lesion_fraction_kept(img, np.zeros((H, W)), spec)


def _exams(root: Path) -> list[Exam]:
    root.mkdir()
    masks = {"a": _half_outside(), "b": np.zeros((H, W), np.uint8), "c": np.zeros((H + 4, W), np.uint8),
             "d": np.zeros((H, W), np.uint8)}
    masks["b"][100:110, 100:120] = 255
    masks["d"][40:44, 0:10] = 255  # 40 pixels, all kept
    images = []
    for k, m in masks.items():
        cv2.imwrite(str(root / f"{k}.png"), _image())
        cv2.imwrite(str(root / f"{k}_mask.png"), m)
        images.append(ImageRef(str(root / f"{k}.png"), masks=[LesionMask(str(root / f"{k}_mask.png"), "benign")]))
    images.append(ImageRef(str(root / "a.png")))  # no mask: not measured, not listed
    return [Exam("e1", Modality.US, {"U-US": images})]


def test_minimum_over_images_with_skipped_ones_listed(tmp_path):
    exams = _exams(tmp_path / "d")
    r = crop_lesion_fractions(exams, USSpec(crop="safe", remove_annotations=True))
    assert r["crop_min_lesion_fraction"] == pytest.approx(0.5)
    assert r["n_images"] == 2 + 1 and r["n_below_1"] == 1  # a, b, d measured; c (size) skipped
    assert r["mean_lesion_fraction"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    # named relative to the folder the images share: no machine's absolute paths in a results file
    assert r["worst"][0]["image"] == "a.png" and r["crop"] == "safe" and r["annotations_removed_first"]
    assert {w["image"] for w in r["worst"]} == {"a.png", "b.png", "d.png"} and r["skipped"][0]["image"] == "c.png"
    assert [s["reason"].split(":")[0] for s in r["skipped"]] == ["mask-shape"]
    c = cached_crop_check(exams, USSpec(crop="safe"), tmp_path / "cg.json")
    assert c == cached_crop_check(exams, USSpec(crop="safe"), tmp_path / "cg.json")
    assert c["crop_min_lesion_fraction"] == pytest.approx(0.5)
    # a cache written with absolute names (before they were made relative) is measured again
    cached = json.loads((tmp_path / "cg.json").read_text())
    for row in cached["result"]["worst"]:
        row["image"] = str(tmp_path / "d" / row["image"])
    cached["result"]["crop_min_lesion_fraction"] = 0.25  # a stale figure that must not come back
    (tmp_path / "cg.json").write_text(json.dumps(cached))
    again = cached_crop_check(exams, USSpec(crop="safe"), tmp_path / "cg.json")
    assert again == c


def test_real_busbra_images_lose_no_lesion_pixel(shared_data):
    root = shared_data / "bus-bra"
    if not root.is_dir():
        pytest.skip(f"BUS-BRA not found at {root}")
    from breastscreen.data.adapters import adapt_bus_bra

    r = crop_lesion_fractions(adapt_bus_bra(root)[:8], USSpec(crop="safe", remove_annotations=True))
    assert r["n_images"] >= 8 and r["crop_min_lesion_fraction"] == 1.0
