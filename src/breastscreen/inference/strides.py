"""Sliding-window geometry: the stride-setting algorithm of Wu et al. 2019 (SI, Algorithm 1).

For one image dimension of length ``size``, a patch of ``patch`` pixels and a target stride
``stride``:

* the number of steps is ``n = (size - patch) // stride``, plus one when there is a remainder
  (so that ``n * stride >= size - patch``);
* the overlap left over, ``n * stride - (size - patch)``, is spread over the ``n`` steps by
  shortening strides: every stride becomes ``stride - overlap // n`` and ``overlap % n`` of them
  one pixel shorter still;
* the strides therefore sum to exactly ``size - patch`` and the last window ends at the border.

The paper chooses at random which strides are one pixel shorter. We spread them evenly and
deterministically instead (same multiset of strides), so heatmaps never depend on a random seed.

When ``size <= patch`` there is a single window at offset 0 and no stride; the image must be
padded up to ``patch`` pixels (with zeros, i.e. background) before patches are taken —
:func:`padded_size` gives the padded length and the heatmap code crops the result back.
"""

from __future__ import annotations

import numpy as np


def _check(size: int, patch: int, stride: int) -> None:
    if int(patch) != patch or patch < 1:
        raise ValueError(f"patch size must be a positive integer, got {patch!r}")
    if int(stride) != stride or not 1 <= stride <= patch:
        raise ValueError(f"stride must be an integer in [1, patch size={patch}] so windows cover the image, got {stride!r}")
    if int(size) != size or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")


def stride_list(size: int, patch: int, stride: int) -> list[int]:
    """Strides between consecutive windows along one dimension (empty when one window suffices).

    The strides lie in ``{stride - q - 1, stride - q}`` with ``q = overlap // n`` (``q`` is 0 for
    all but very short dimensions) and sum to ``size - patch`` (or 0 when ``size <= patch``).
    """
    _check(size, patch, stride)
    span = size - patch
    if span <= 0:
        return []
    n, remainder = divmod(span, stride)
    if remainder:
        n += 1
    # Even spreading: stride i = floor((i+1)*span/n) - floor(i*span/n). These take the two values
    # floor(span/n) and ceil(span/n) and sum to span, which is the paper's multiset of strides.
    edges = (np.arange(n + 1, dtype=np.int64) * span) // n
    return [int(v) for v in np.diff(edges)]


def window_offsets(size: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of the windows along one dimension: ``[0, s1, s1+s2, ...]`` (int64)."""
    steps = stride_list(size, patch, stride)
    return np.concatenate([[0], np.cumsum(steps, dtype=np.int64)]).astype(np.int64)


def padded_size(size: int, patch: int) -> int:
    """Length after padding a too-short dimension up to one patch (``max(size, patch)``)."""
    if size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    return max(int(size), int(patch))


def window_grid(height: int, width: int, patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of all windows of an image (each window is ``patch`` × ``patch``).

    Dimensions shorter than ``patch`` get one window at 0; pad the image to
    ``padded_size(dim, patch)`` before extracting patches.
    """
    return window_offsets(height, patch, stride), window_offsets(width, patch, stride)
