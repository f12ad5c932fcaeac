"""Patch sampling for the patch classifiers (Wu et al. SI) and the S1/S10 sets (Shen et al.)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from breastscreen.errors import PreprocessError
from breastscreen.labels import PATCH_CLASSES, PATCH_CLASSES_5
from breastscreen.preprocess.patches import PatchSampler, PatchSource, roi_patch_set


def _sources() -> list[PatchSource]:
    H, W = 600, 400
    breast = np.zeros((H, W), bool)
    breast[20:580, :350] = True
    img = np.where(breast, 0.3, 0.0).astype(np.float32)
    mal = np.zeros((H, W), bool)
    mal[200:230, 100:130] = True
    ben = np.zeros((H, W), bool)
    ben[450:456, 200:206] = True  # tiny calcification
    img[mal], img[ben] = 1.0, 0.7
    return [
        PatchSource(img, breast, [(mal, "malignant", "mass"), (ben, "benign", "calcification")], key="a"),
        PatchSource(np.where(breast, 0.3, 0.0).astype(np.float32), breast, [], negative=True, key="b"),
    ]


def test_composition_labels_and_content() -> None:
    sampler = PatchSampler(_sources(), scale=0.5)
    comp = {"malignant": 20, "benign": 35, "outside": 300, "negative": 295}
    specs = sampler.sample_specs(comp, seed=1)
    counts = Counter(PATCH_CLASSES[s.label] for s in specs)
    assert counts == comp
    for s in specs:
        assert 64 <= s.size <= 192 and -30 <= s.angle <= 30
        p = sampler.extract(s)
        assert p.shape == (128, 128)
        name = PATCH_CLASSES[s.label]
        if name == "malignant":
            assert p.max() > 0.9 and s.source == 0
        elif name == "benign":
            assert 0.6 < p.max() < 0.9  # holds the benign lesion, never the malignant one
        elif name == "outside":
            assert p.max() <= 0.31 and s.source == 0  # touches no lesion
        else:
            assert s.source == 1
        assert p.max() > 0.2  # never only background


def test_deterministic_for_seed() -> None:
    sampler = PatchSampler(_sources(), scale=0.5)
    comp = {"malignant": 5, "outside": 10, "negative": 10}
    assert sampler.sample_specs(comp, seed=3) == sampler.sample_specs(comp, seed=3)
    assert sampler.sample_specs(comp, seed=3) != sampler.sample_specs(comp, seed=4)
    patches, labels, _ = sampler.sample(comp, seed=3)
    assert patches.shape == (25, 128, 128) and labels.shape == (25,)


def test_impossible_request_is_an_error() -> None:
    sampler = PatchSampler(_sources()[1:], scale=0.5)
    with pytest.raises(PreprocessError, match="malignant"):
        sampler.sample_specs({"malignant": 1}, seed=0)


def test_s1_and_s10_sets() -> None:
    src = _sources()
    s1 = roi_patch_set(src, 1, seed=0, scale=0.25)
    names = Counter(PATCH_CLASSES_5[s.label] for s in s1.specs)
    assert names == {"malignant_mass": 1, "benign_calcification": 1, "background": 2}
    s10 = roi_patch_set(src, 10, seed=0, scale=0.25)
    names = Counter(PATCH_CLASSES_5[s.label] for s in s10.specs)
    assert names == {"malignant_mass": 10, "benign_calcification": 10, "background": 20}
    mal = src[0].lesions[0][0]
    for s in s10.specs:
        y0, x0 = int(round(s.cy - s.size / 2)), int(round(s.cx - s.size / 2))
        window = np.zeros_like(mal)
        window[y0 : y0 + int(s.size), x0 : x0 + int(s.size)] = True
        if PATCH_CLASSES_5[s.label] == "malignant_mass":
            assert (window & mal).sum() >= 0.9 * min(mal.sum(), s.size**2)
        if s.label == 0:
            assert not (window & mal).any()
        assert s10.extract(src, s).shape == (64, 64)
    unknown = [PatchSource(src[0].image, src[0].breast_mask, [(mal, "malignant", None)], key="u")]
    assert roi_patch_set(unknown, 1, seed=0, scale=0.25).skipped
