"""Augmentations keep masks and heatmaps aligned with the image and are deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.preprocess.augment import (
    AllConvAugment,
    Compose,
    MVDCNCropNoise,
    NYUWindowJitter,
    crop_resize,
    tta_samples,
)


def _square_sample(h: int = 120, w: int = 90) -> dict:
    img = np.full((h, w), 0.1, np.float32)
    img[40:70, 30:60] = 1.0
    mask = np.zeros((h, w), bool)
    mask[40:70, 30:60] = True
    heat = np.stack([mask.astype(np.float32), 0.5 * mask.astype(np.float32)])
    return {"image": img, "lesion": mask, "heat": heat, "id": "x"}


def _check_aligned(out: dict) -> None:
    m = out["lesion"].astype(bool)
    assert m.dtype == bool and m.sum() > 50
    img = out["image"]
    # the mask covers the bright square: inside bright, just outside dark
    assert np.median(img[m]) > 0.8
    # heatmap channel 0 matches the mask where it is confident
    assert np.mean(out["heat"][0][m] > 0.5) > 0.9
    assert out["id"] == "x"


@pytest.mark.parametrize("seed", range(6))
def test_allconv_keeps_mask_aligned(seed: int) -> None:
    t = AllConvAugment(mask_keys=("lesion",), map_keys=("heat",), max_shift=0.0)
    out = t(_square_sample(), np.random.default_rng(seed))
    _check_aligned(out)


@pytest.mark.parametrize("seed", range(4))
def test_nyu_window_jitter_keeps_alignment_and_size(seed: int) -> None:
    t = NYUWindowJitter(mask_keys=("lesion",), map_keys=("heat",), window=(0, 10, 80, 110), max_jitter=12)
    out = t(_square_sample(), np.random.default_rng(seed))
    assert out["image"].shape == (100, 80) and out["heat"].shape == (2, 100, 80)
    _check_aligned(out)


def test_window_jitter_pads_when_no_room() -> None:
    s = _square_sample(60, 40)
    t = NYUWindowJitter(mask_keys=("lesion",), window=(0, -20, 60, 80), max_jitter=5)
    out = t(s, np.random.default_rng(0))
    assert out["image"].shape == (100, 60)
    assert out["image"].min() == pytest.approx(0.1)  # padded with the background value


def test_mvdcn_crop_noise_moves_everything_together() -> None:
    t = MVDCNCropNoise(mask_keys=("lesion",), map_keys=("heat",), window=(5, 5, 85, 115), max_noise=10)
    out = t(_square_sample(), np.random.default_rng(1))
    assert out["image"].shape == (110, 80)
    assert np.array_equal(out["image"] == 1.0, out["lesion"])


def test_same_seed_same_output_and_tta() -> None:
    t = Compose([
        NYUWindowJitter(mask_keys=("lesion",), map_keys=("heat",), window=(0, 0, 90, 120), max_jitter=8),
        AllConvAugment(mask_keys=("lesion",), map_keys=("heat",)),
    ])
    s = _square_sample()
    a = list(tta_samples(s, 4, seed=7, transform=t))
    b = list(tta_samples(s, 4, seed=7, transform=t))
    assert len(a) == 4
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["lesion"], y["lesion"])
    assert np.allclose(a[0]["image"], s["image"])  # first copy is the identity
    assert not np.allclose(a[1]["image"], a[2]["image"])
    c = list(tta_samples(s, 4, seed=8, transform=t))
    assert not np.allclose(a[1]["image"], c[1]["image"])
    with pytest.raises(ValueError, match="n must be >= 1"):
        list(tta_samples(s, 0, seed=0))


def test_rng_must_be_generator() -> None:
    with pytest.raises(TypeError, match="Generator"):
        AllConvAugment()(_square_sample(), 3)  # type: ignore[arg-type]


def test_crop_resize_bicubic_stays_in_range() -> None:
    a = np.zeros((20, 20), np.float32)
    a[5:15, 5:15] = 1
    out = crop_resize(a, (0, 0, 20, 20), (57, 43))
    assert out.shape == (57, 43) and out.min() >= 0 and out.max() <= 1
