"""Sliding-window heatmaps: batched inferer against a naive per-patch loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from breastscreen.inference.heatmaps import (
    SlidingWindowHeatmapper,
    extract_patches,
    merge_window_probs,
    patch_geometry,
    windows_with_tissue,
)
from breastscreen.inference.strides import window_offsets
from breastscreen.labels import PATCH_CLASSES


class TinyPatchNet(nn.Module):
    """A small patch classifier (4 classes) whose output depends on patch content and position."""

    def __init__(self, in_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, len(PATCH_CLASSES))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = torch.relu(self.conv(x))
        y = nn.functional.adaptive_avg_pool2d(y, 4).flatten(1)
        return {"logits": self.head(y)}


def naive_heatmaps(model: nn.Module, image: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """One patch at a time, float64 accumulation (reference for the batched code)."""
    h, w = image.shape
    ph, pw = max(h, patch), max(w, patch)
    padded = np.full((ph, pw), image.min(), dtype=np.float32)
    padded[:h, :w] = image
    total = np.zeros((2, ph, pw))
    count = np.zeros((ph, pw))
    with torch.no_grad():
        for r in window_offsets(h, patch, stride):
            for c in window_offsets(w, patch, stride):
                x = torch.from_numpy(padded[r : r + patch, c : c + patch].copy())[None, None].repeat(1, 3, 1, 1)
                p = torch.softmax(model(x)["logits"], 1)[0].numpy()
                total[0, r : r + patch, c : c + patch] += p[PATCH_CLASSES.index("benign")]
                total[1, r : r + patch, c : c + patch] += p[PATCH_CLASSES.index("malignant")]
                count[r : r + patch, c : c + patch] += 1
    return (total / count)[:, :h, :w]


@pytest.mark.parametrize("shape", [(61, 45), (16, 30), (10, 9), (40, 16)])
def test_batched_equals_naive(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    model = TinyPatchNet().eval()
    images = [rng.normal(size=shape).astype(np.float32), rng.normal(size=(33, 50)).astype(np.float32)]
    inferer = SlidingWindowHeatmapper(model, patch_size=16, stride=5, batch_size=7, standardize=False)
    results = inferer.heatmaps(images)
    for img, res in zip(images, results):
        ref = naive_heatmaps(model, img, 16, 5)
        assert res.maps.shape == (2, *img.shape)
        np.testing.assert_allclose(res.maps, ref, atol=1e-5)
        assert res.maps.min() >= 0 and res.maps.max() <= 1
        assert sum(res.row_strides) == max(img.shape[0] - 16, 0)


def test_batch_size_does_not_change_result() -> None:
    rng = np.random.default_rng(2)
    model = TinyPatchNet().eval()
    images = [rng.normal(size=(50, 40)).astype(np.float32) for _ in range(3)]
    a = SlidingWindowHeatmapper(model, 16, 5, batch_size=1000, standardize=False).heatmaps(images)
    b = SlidingWindowHeatmapper(model, 16, 5, batch_size=3, standardize=False).heatmaps(images)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.maps, y.maps, atol=1e-6)


def test_skip_background_keeps_breast_values() -> None:
    rng = np.random.default_rng(3)
    model = TinyPatchNet().eval()
    img = rng.normal(size=(60, 70)).astype(np.float32)
    mask = np.zeros_like(img, dtype=np.uint8)
    mask[5:40, :25] = 1
    full = SlidingWindowHeatmapper(model, 16, 5, standardize=False).heatmaps([img])[0]
    skip = SlidingWindowHeatmapper(model, 16, 5, standardize=False, skip_background=True).heatmaps([img], [mask])[0]
    assert skip.n_evaluated < skip.n_windows == full.n_windows
    inside = mask > 0
    np.testing.assert_allclose(skip.maps[:, inside], full.maps[:, inside], atol=1e-6)
    # far from the breast nothing was evaluated: zero
    assert np.all(skip.maps[:, 55:, 60:] == 0)
    empty = SlidingWindowHeatmapper(model, 16, 5, standardize=False, skip_background=True).heatmaps(
        [img], [np.zeros_like(mask)]
    )[0]
    assert empty.n_evaluated == 0 and not empty.maps.any()


def test_extract_patches_and_tissue_windows() -> None:
    img = torch.arange(2 * 9 * 11, dtype=torch.float32).reshape(2, 9, 11)
    rows, cols = torch.tensor([0, 3, 5]), torch.tensor([7, 0, 2])
    out = extract_patches(img, rows, cols, 4)
    assert out.shape == (3, 2, 4, 4)
    for k in range(3):
        assert torch.equal(out[k], img[:, rows[k] : rows[k] + 4, cols[k] : cols[k] + 4])
    mask = np.zeros((9, 11))
    mask[8, 10] = 1
    has = windows_with_tissue(mask, np.array([0, 5]), np.array([0, 7]), 4)
    assert has.tolist() == [[False, False], [False, True]]


def test_merge_constant_probs_is_constant() -> None:
    row_off, col_off = window_offsets(30, 8, 3), window_offsets(20, 8, 3)
    probs = np.full((len(row_off), len(col_off), 2), 0.25, dtype=np.float32)
    out = merge_window_probs(probs, row_off, col_off, 8, (30, 20))
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_patch_geometry() -> None:
    assert patch_geometry(1.0) == (256, 70)
    assert patch_geometry(0.25) == (64, 18)
    assert patch_geometry(0.25, {"patch_size": 32}) == (32, 9)
    with pytest.raises(ValueError):
        patch_geometry(0)
