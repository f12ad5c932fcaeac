"""Fully-convolutional heatmap preview: the patch network's trunk run once over the whole image.

Shen et al. (2019) observe that a patch classifier ending in global average pooling is a filter
over the whole image. Here the trunk (``model.forward_features``, total stride ``s``) runs once over
the standardised image, in horizontal tiles when asked, and each sliding window's prediction is
the classifier head applied to the average of the feature cells under the window, each cell
weighted by the fraction of the window it covers (a window offset need not fall on a cell edge).

How this differs from the exact patch-wise heatmap, and why it is a *preview*:

* in the exact heatmap every window is classified on its own pixels only; here the features of
  a cell near the window's border were computed with the neighbouring image in view (the
  receptive field of a DenseNet-121 cell is hundreds of pixels), so context outside the window
  leaks in and zero padding at window borders never happens;
* cells straddling a window edge are counted by area, while the exact network pools only the
  in-window pixels of its own, differently aligned grid;
* batch-norm statistics are the trained running ones in both, so no other difference arises.

Agreement with the exact heatmap is therefore measured, not assumed: Pearson r and max |Δp|
inside the breast with trained weights are in ``benchmarks/results/heatmaps_speed.json``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn


def needs_trunk(model: nn.Module) -> None:
    """Refuse models without ``forward_features`` + ``head`` (the split the preview needs)."""
    if not (hasattr(model, "forward_features") and hasattr(model, "head")):
        raise ValueError(f"{type(model).__name__} has no forward_features/head split; --mode fullconv needs one "
                         "(the DenseNet patch classifiers have it)")


def coverage_weights(offsets: np.ndarray, patch: int, n_cells: int, cell: float) -> np.ndarray:
    """[n_windows, n_cells]: fraction of each window's extent that falls in each feature cell.

    Cell ``j`` covers pixels ``[j * cell, (j + 1) * cell)``. Rows are renormalised to sum to 1,
    so a window reaching past the last cell is pooled over the cells it does reach.
    """
    lo = np.asarray(offsets, dtype=np.float64)[:, None]
    hi = lo + patch
    edges = np.arange(n_cells + 1, dtype=np.float64) * cell
    overlap = np.clip(np.minimum(hi, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]), 0.0, None)
    total = overlap.sum(axis=1, keepdims=True)
    return (overlap / np.where(total > 0, total, 1.0)).astype(np.float32)


def trunk_features(model: nn.Module, image: torch.Tensor, in_channels: int, tile: int | None = None,
                   margin: int = 256, precision: str = "fp32", channels_last: bool = False,
                   trunk: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, float]:
    """Trunk feature map [C, Hf, Wf] of one image [1, H, W] and its stride in pixels.

    With ``tile`` (pixels, rounded to the stride) the image is cut into horizontal bands of that
    height, each run with ``margin`` extra rows of context above and below; the bands' own
    feature rows are stitched, so peak memory follows the band, not the image. ``trunk`` (a
    compiled engine from :func:`~breastscreen.inference.engines.build_trunk`, taking the
    single-channel image) replaces ``model.forward_features``.
    """
    x = image[None]
    if trunk is None and x.shape[1] != in_channels:
        x = x.expand(-1, in_channels, -1, -1)
    if channels_last and trunk is None:
        x = x.contiguous(memory_format=torch.channels_last)
    height = x.shape[-2]

    def forward(part: torch.Tensor) -> torch.Tensor:
        if trunk is not None:
            return trunk(part).float()
        with torch.autocast(device_type=part.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model.forward_features(part).float()[0]

    with torch.inference_mode():
        if not tile or tile >= height:
            feats = forward(x)
            return feats, height / feats.shape[-2]
        side = min(height, 512)
        stride = round(side / forward(x[..., :side, :side]).shape[-2])  # a small probe: the trunk's total stride
        tile = max(stride, (tile // stride) * stride)
        margin = int(math.ceil(margin / stride) * stride)
        bands = []
        for top in range(0, height, tile):
            lo, hi = max(0, top - margin), min(height, top + tile + margin)
            f = forward(x[..., lo:hi, :])
            first = (top - lo) // stride
            rows = math.ceil((min(height, top + tile) - top) / stride)
            bands.append(f[:, first : first + rows])
        feats = torch.cat(bands, dim=1)
        return feats, float(stride)


def fullconv_logits(model: nn.Module, image: torch.Tensor, row_off: np.ndarray, col_off: np.ndarray, patch: int,
                    in_channels: int, tile: int | None = None, precision: str = "fp32",
                    channels_last: bool = False,
                    trunk: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits [n_rows, n_cols, K] of every window of the grid ``row_off`` × ``col_off`` (see module doc).

    The head runs in PyTorch fp32 on the pooled features whichever engine ran the trunk.
    """
    needs_trunk(model)
    feats, stride = trunk_features(model, image, in_channels, tile, precision=precision, channels_last=channels_last,
                                   trunk=trunk)
    a = torch.from_numpy(coverage_weights(row_off, patch, feats.shape[1], stride))
    b = torch.from_numpy(coverage_weights(col_off, patch, feats.shape[2], stride))
    with torch.inference_mode():
        pooled = torch.einsum("ri,cij,qj->rqc", a.to(feats.device), feats, b.to(feats.device))
        n_r, n_c, channels = pooled.shape
        out = model.head(pooled.reshape(n_r * n_c, channels))
        logits = out["logits"] if isinstance(out, dict) else out
    return logits.float().reshape(n_r, n_c, -1)
