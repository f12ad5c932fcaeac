"""Breast segmentation, crop and orientation on synthetic arrays and on the real sample images."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from pre_phantoms import phantom_mammo, tissue_count

from breastscreen.errors import PreprocessError
from breastscreen.preprocess.mammo import chest_wall_side, preprocess_image, segment_breast


@pytest.mark.parametrize("side", ["left", "right"])
def test_segment_keeps_breast_and_drops_label_and_strip(side: str) -> None:
    img, truth = phantom_mammo(chest_wall=side)
    seg = segment_breast(img)
    x0, y0, x1, y1 = seg.box
    inside = np.zeros_like(truth)
    inside[y0:y1, x0:x1] = True
    assert truth[~inside].sum() == 0  # no breast pixel outside the box
    assert seg.mask[truth].mean() > 0.999  # skin rim included
    # label blob (far corner) and film strip are outside the mask
    h, w = img.shape
    label_cols = slice(int(0.85 * w), int(0.93 * w)) if side == "left" else slice(w - int(0.93 * w), w - int(0.85 * w))
    assert not seg.mask[int(0.03 * h) : int(0.08 * h), label_cols].any()
    strip_cols = slice(w - 4, w - 1) if side == "left" else slice(1, 4)
    assert not seg.mask[:, strip_cols].any()
    assert (x1 - x0) * (y1 - y0) < 0.8 * img.size  # most background removed


def test_segment_mask_box_unpack() -> None:
    img, _ = phantom_mammo()
    mask, box = segment_breast(img)
    assert mask.shape == img.shape and len(box) == 4


@pytest.mark.parametrize("side", ["left", "right"])
def test_orientation_puts_chest_wall_left(side: str) -> None:
    img, _ = phantom_mammo(chest_wall=side, seed=3)
    res = preprocess_image(img, None, 1.0)
    assert res.record["flipped"] is (side == "right")
    # chest wall column is covered by breast over most of the height, the nipple side is not
    assert res.mask[:, :5].mean() > res.mask[:, -5:].mean() + 0.3


def test_orientation_hint_only_breaks_ties() -> None:
    sym = np.zeros((50, 50), bool)
    sym[10:40, 10:40] = True
    assert chest_wall_side(sym, laterality_hint="R") == "right"
    assert chest_wall_side(sym, laterality_hint="L") == "left"
    img, _ = phantom_mammo(chest_wall="left")
    seg = segment_breast(img)
    x0, y0, x1, y1 = seg.box
    crop, mask = img[y0:y1, x0:x1], seg.mask[y0:y1, x0:x1]
    assert chest_wall_side(mask, crop, laterality_hint="R") == "left"  # evidence beats the hint


def test_empty_image_raises_naming_it() -> None:
    with pytest.raises(PreprocessError, match="blank.png"):
        segment_breast(np.zeros((100, 80), np.float32), name="blank.png")
    noise = np.zeros((200, 200), np.float32)
    noise[5, 5] = 100.0
    with pytest.raises(PreprocessError, match="no breast"):
        preprocess_image(noise, None, 1.0, name="speck.png")


def test_bad_input_shape_raises() -> None:
    with pytest.raises(PreprocessError, match="2-D"):
        segment_breast(np.zeros((10, 10, 3)))


def test_full_size_image_is_fast() -> None:
    img, _ = phantom_mammo(h=3000, w=2000, seed=1)
    preprocess_image(img, None, 1.0)  # warm-up (cv2 thread pools, imports)
    t = time.perf_counter()
    preprocess_image(img, None, 1.0)
    assert time.perf_counter() - t < 2.0


def _keep_and_area(a: np.ndarray) -> tuple[float, float]:
    res = preprocess_image(a.astype(np.float32), None, 1.0)
    return tissue_count(res.image) / max(1, tissue_count(a)), res.image.size / a.size


def test_nyu_sample_crops_keep_tissue(shared_data) -> None:
    paths = sorted((shared_data / "nyu-sample-exam").glob("*.png"))
    if not paths:
        pytest.skip("no NYU sample exam")
    flips = {}
    for p in paths:
        a = np.array(Image.open(p))
        keep, area = _keep_and_area(a)
        assert keep >= 0.99, (p.name, keep)
        assert area <= 1.0
        flips[p.stem[2:]] = preprocess_image(a.astype(np.float32), None, 1.0).record["flipped"]
    # in this exam the right breast faces the other way (chest wall on the right)
    assert flips == {"L-CC": False, "L-MLO": False, "R-CC": True, "R-MLO": True}


def test_mini_mias_crops_keep_breast_and_orient(shared_data) -> None:
    folder = shared_data / "mini-mias" / "images"
    if not folder.is_dir():
        pytest.skip("no mini-MIAS")
    # odd numbers: chest wall on the right; even: on the left (checked visually)
    for n in (1, 2, 5, 12, 28, 95, 132, 201, 274, 315):
        a = np.array(Image.open(folder / f"mdb{n:03d}.png")).astype(np.float32)
        res = preprocess_image(a, (0.2, 0.2), 0.5)
        assert res.record["flipped"] is (n % 2 == 1), n
        x0, y0, x1, y1 = res.record["crop_box"]
        assert (x1 - x0) * (y1 - y0) < 0.85 * a.size, n  # the black film border is removed
        # all pixels of the largest bright region (the breast) stay in the box
        import cv2

        fg = (a > a.min() + 0.08 * (a.max() - a.min())).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((9, 9), np.uint8))  # detach film strips
        _, lab, stats, _ = cv2.connectedComponentsWithStats(fg)
        big = lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        ys, xs = np.nonzero(big)
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, n
