"""Stride-setting algorithm (Wu et al. 2019 SI, Algorithm 1)."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.inference.strides import padded_size, stride_list, window_grid, window_offsets


def _paper_multiset(size: int, patch: int, stride: int) -> list[int]:
    """The paper's strides, written independently: n steps, overlap spread by shortening."""
    span = size - patch
    n = span // stride + (1 if span % stride else 0)
    overlap = n * stride - span
    base = stride - overlap // n
    short = overlap % n
    return sorted([base - 1] * short + [base] * (n - short))


@pytest.mark.parametrize("patch,stride", [(256, 70), (64, 18), (32, 9), (16, 16), (8, 1)])
def test_strides_match_algorithm_and_end_at_border(patch: int, stride: int) -> None:
    for size in list(range(1, 4 * patch + 3)) + [2677, 2974, 1942, 1748, 3000, 4096]:
        steps = stride_list(size, patch, stride)
        offsets = window_offsets(size, patch, stride)
        if size <= patch:
            assert steps == [] and offsets.tolist() == [0]
            assert padded_size(size, patch) == patch
            continue
        assert sum(steps) == size - patch, (size, steps)
        assert offsets[-1] + patch == size
        assert sorted(steps) == _paper_multiset(size, patch, stride), size
        assert all(1 <= s <= stride for s in steps)
        assert max(steps) - min(steps) <= 1
        covered = np.zeros(size, dtype=bool)
        for o in offsets:
            covered[o : o + patch] = True
        assert covered.all()


def test_full_resolution_examples() -> None:
    # 2677 - 256 = 2421 = 34*70 + 41: 35 steps, overlap 29 -> 29 strides of 69, 6 of 70
    steps = stride_list(2677, 256, 70)
    assert len(steps) == 35 and steps.count(69) == 29 and steps.count(70) == 6
    # exact multiple: all strides equal the target
    assert stride_list(256 + 7 * 70, 256, 70) == [70] * 7
    rows, cols = window_grid(300, 200, 256, 70)
    assert rows.tolist() == [0, 44] and cols.tolist() == [0]


@pytest.mark.parametrize("args", [(100, 0, 1), (100, 10, 0), (100, 10, 11), (0, 10, 5), (100, 10.5, 5)])
def test_invalid_arguments_raise(args: tuple) -> None:
    with pytest.raises(ValueError):
        stride_list(*args)
