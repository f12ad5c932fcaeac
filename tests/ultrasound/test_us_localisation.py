"""Localisation metrics of saliency maps on hand-made maps and masks."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.evaluation.localisation import (
    pointing_game_hit,
    saliency_iou,
    summarise_localisation,
    threshold_map,
    upsample_map,
)


def _mask(shape, box):
    m = np.zeros(shape, dtype=np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def test_pointing_game_hit_and_miss():
    sal = np.zeros((4, 4), dtype=np.float32)
    sal[0, 3] = 1.0  # peak in the top-right cell -> top-right quarter of a 40x40 image
    assert pointing_game_hit(sal, _mask((40, 40), (0, 30, 10, 40)))
    assert not pointing_game_hit(sal, _mask((40, 40), (30, 0, 40, 10)))


def test_pointing_game_tolerance_turns_near_miss_into_hit():
    sal = np.zeros((4, 4), dtype=np.float32)
    sal[0, 3] = 1.0
    # upsampled peak is at x=35, y=5 (the cell centre); the mask ends 5 px to its left
    mask = _mask((40, 40), (0, 20, 10, 30))
    assert not pointing_game_hit(sal, mask)
    assert pointing_game_hit(sal, mask, tolerance=6)


def test_iou_exact_on_aligned_map():
    # A 2x2 map whose top-left cell is hot: thresholded at half the max after bilinear
    # upsampling to 20x20, the region is the top-left 10x10 block (values >= 0.5 there only).
    sal = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    up = upsample_map(sal, (20, 20))
    region = threshold_map(up, 0.5)
    expected_region = up >= 0.5
    assert np.array_equal(region, expected_region)
    mask = _mask((20, 20), (0, 0, 10, 10))
    inter = np.logical_and(expected_region, mask > 0).sum()
    union = np.logical_or(expected_region, mask > 0).sum()
    assert saliency_iou(sal, mask) == pytest.approx(inter / union)


def test_iou_perfect_and_zero():
    sal = np.zeros((8, 8), dtype=np.float32)
    sal[2:6, 2:6] = 1.0
    # at the map's own resolution, the region equals the hot block exactly
    assert saliency_iou(sal, _mask((8, 8), (2, 2, 6, 6))) == pytest.approx(1.0)
    assert saliency_iou(sal, _mask((8, 8), (0, 0, 1, 1))) == pytest.approx(0.0)


def test_absolute_threshold_and_empty_map():
    sal = np.full((4, 4), 0.2, dtype=np.float32)
    assert not threshold_map(sal, 0.5, mode="absolute").any()
    assert threshold_map(sal, 0.5, mode="relative").all()
    assert not threshold_map(np.zeros((4, 4)), 0.5).any()


def test_summary_and_input_validation():
    sal = np.zeros((4, 4), dtype=np.float32)
    sal[1, 1] = 1.0
    hit_mask = _mask((4, 4), (1, 1, 2, 2))
    miss_mask = _mask((4, 4), (3, 3, 4, 4))
    s = summarise_localisation([(sal, hit_mask), (sal, miss_mask)])
    assert s.n_images == 2 and s.pointing_game == 0.5
    assert s.mean_iou == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        pointing_game_hit(sal, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="threshold mode"):
        threshold_map(sal, 0.5, mode="otsu")
    with pytest.raises(ValueError, match="no images"):
        summarise_localisation([])
