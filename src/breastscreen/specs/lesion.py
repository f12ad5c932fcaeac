"""Spec of the lesion-level classifier (Wu et al. 2020): windows, input maps, scores.

A lesion is classified from windows that overlap its region of interest:

* **windows**: ``windows`` squares per lesion, side uniform in ``size_range`` (full-resolution
  px, times ``scale``), each containing a lesion pixel drawn uniformly from the region (so every
  window overlaps the lesion), shifted to lie inside the image, axis-aligned (no rotation at
  prediction time). The draw is deterministic for ``(window_seed, lesion key)``.
* **local module** ``f_loc`` (a patch classifier with a 32-unit embedding): each window, cut from
  the preprocessed image standardised over the whole image (exactly as the patch classifier was
  trained) and resized to ``patch_size``, gives 4 class probabilities (PATCH_CLASSES) and the
  embedding ``h``.
* **global context**: the global saliency network's two maps (benign, malignant) of the whole
  preprocessed image on a ``grid_size`` grid (the image resized to the context model's input, so
  each grid cell covers an equal part of the preprocessed image).
* **f_agg input**, channels in this order, the selected ``maps`` only: saliency (2), location
  indicator (1, the fraction of each grid cell the window covers), embedding maps (``embedding_dim``,
  the window's embedding on every cell the window touches).
* **score** of a lesion: per window, malignant and benign probabilities normalised to sum to one,
  then averaged over the windows. Local-only prediction applies the same to ``f_loc``'s own
  probabilities.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from breastscreen.errors import BreastscreenError
from breastscreen.labels import PATCH_CLASSES
from breastscreen.specs.base import ModelSpec, register_spec
from breastscreen.specs.mammo import derive_seed

MAP_NAMES: tuple[str, ...] = ("saliency", "location", "embedding")
PAPER_WINDOWS = 100
PAPER_SIZE_RANGE = (128.0, 384.0)
_MAL, _BEN = PATCH_CLASSES.index("malignant"), PATCH_CLASSES.index("benign")


def lesion_windows(region: np.ndarray, n: int, size_range: tuple[float, float], seed: int) -> np.ndarray:
    """``n`` axis-aligned windows [n, 4] as (y0, x0, y1, x1) floats, each containing a pixel of ``region``.

    ``size_range`` is in the image's pixels. Windows larger than the image are shrunk to fit.
    """
    region = np.asarray(region, dtype=bool)
    pts = np.argwhere(region)
    if not len(pts):
        raise BreastscreenError("lesion region is empty: no window can overlap it")
    h, w = region.shape
    rng = np.random.default_rng(seed)
    lo, hi = float(size_range[0]), float(size_range[1])
    size = np.minimum(rng.uniform(lo, hi, size=n), float(min(h, w)))
    pick = pts[rng.integers(0, len(pts), size=n)].astype(np.float64) + 0.5
    # where the chosen lesion pixel sits inside its window: uniform, so windows vary around the ROI
    off = rng.uniform(0.0, 1.0, size=(n, 2)) * size[:, None]
    y0 = np.clip(pick[:, 0] - off[:, 0], 0.0, h - size)
    x0 = np.clip(pick[:, 1] - off[:, 1], 0.0, w - size)
    return np.stack([y0, x0, y0 + size, x0 + size], axis=1)


def window_patches(image: np.ndarray, boxes: np.ndarray, out_size: int) -> np.ndarray:
    """Windows of a standardised image resized to ``out_size``: [n, 1, out_size, out_size] float32."""
    from breastscreen.preprocess.patches import extract_patch

    out = np.empty((len(boxes), 1, out_size, out_size), dtype=np.float32)
    for i, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, dtype=np.float64)):
        out[i, 0] = extract_patch(image, (y0 + y1) / 2.0 - 0.5, (x0 + x1) / 2.0 - 0.5, y1 - y0, 0.0, out_size)
    return out


def window_scores(probs: np.ndarray) -> np.ndarray:
    """Per window (malignant, benign) probabilities normalised to sum to one: [n, 2]."""
    p = np.asarray(probs, dtype=np.float64)
    pair = np.stack([p[:, _MAL], p[:, _BEN]], axis=1)
    total = pair.sum(axis=1, keepdims=True)
    # a window the model is sure is background carries no lesion evidence either way: 0.5 / 0.5
    return np.where(total > 0, pair / np.where(total > 0, total, 1.0), 0.5)


def lesion_score(probs: np.ndarray) -> tuple[float, float]:
    """(malignant, benign) of one lesion from its windows' class probabilities [n, 4]."""
    s = window_scores(probs).mean(axis=0)
    return float(s[0]), float(s[1])


@register_spec
class LesionSpec(ModelSpec):
    """``f_agg`` of the lesion classifier: its windows, input maps and the models it was trained on."""

    family: Literal["lesion"] = "lesion"
    scale: float = Field(1.0, gt=0, le=2)
    patch_size: int = Field(256, ge=8, le=2048)
    size_range: tuple[float, float] = PAPER_SIZE_RANGE
    windows: int = Field(PAPER_WINDOWS, ge=1, le=10_000)
    window_seed: int = Field(0, ge=0)
    grid_size: tuple[int, int] = (46, 30)
    maps: tuple[str, ...] = MAP_NAMES
    embedding_dim: int = Field(32, ge=1, le=4096)
    classes: tuple[str, ...] = tuple(PATCH_CLASSES)
    patch_model_sha256: str | None = None
    context_model_sha256: str | None = None

    value_columns: ClassVar[tuple[str, ...]] = ("malignant", "benign")

    @field_validator("maps")
    @classmethod
    def _maps(cls, value: Sequence[str]) -> tuple[str, ...]:
        chosen = set(value)
        unknown = sorted(chosen - set(MAP_NAMES))
        if unknown or not chosen:
            raise ValueError(f"must be a non-empty subset of {list(MAP_NAMES)}")
        return tuple(m for m in MAP_NAMES if m in chosen)

    @field_validator("size_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = (float(v) for v in value)
        if not 0 < lo <= hi:
            raise ValueError("must be (low, high) with 0 < low <= high")
        return lo, hi

    @field_validator("grid_size")
    @classmethod
    def _grid(cls, value: tuple[int, int]) -> tuple[int, int]:
        h, w = (int(v) for v in value)
        if not (1 <= h <= 1024 and 1 <= w <= 1024):
            raise ValueError("must be (height, width) with both in [1, 1024]")
        return h, w

    @property
    def in_channels(self) -> int:
        """Stacked f_agg input channels."""
        sizes = {"saliency": 2, "location": 1, "embedding": self.embedding_dim}
        return sum(sizes[m] for m in self.maps)

    @property
    def needs_context(self) -> bool:
        """True when f_agg takes the global saliency maps."""
        return "saliency" in self.maps

    @property
    def pixel_size_range(self) -> tuple[float, float]:
        """Window sides in the preprocessed image's pixels."""
        return self.size_range[0] * self.scale, self.size_range[1] * self.scale

    def windows_for(self, region: np.ndarray, key: str) -> np.ndarray:
        """The lesion's prediction windows [windows, 4] (deterministic for the lesion key)."""
        return lesion_windows(region, self.windows, self.pixel_size_range, derive_seed(self.window_seed, key))

    def location_maps(self, boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """Location indicators [n, h, w]: the fraction of each grid cell each window covers."""
        import torch

        from breastscreen.models.lesion_agg import location_indicator_map

        boxes_t = torch.as_tensor(np.asarray(boxes, np.float64)).reshape(-1, 4)
        return location_indicator_map(boxes_t, tuple(image_shape), self.grid_size).numpy()

    def stack_maps(self, location: np.ndarray, saliency: np.ndarray | None, embeddings: np.ndarray | None
                   ) -> np.ndarray:
        """f_agg inputs [n, C, h, w] from location maps [n, h, w], saliency [2, h, w] or [n, 2, h, w], embeddings [n, D]."""
        n = len(location)
        gh, gw = self.grid_size
        parts = []
        if "saliency" in self.maps:
            if saliency is None:
                raise BreastscreenError("this lesion model uses the global saliency maps: give a context model")
            sal = np.asarray(saliency, dtype=np.float32)
            if sal.shape[-3:] != (2, gh, gw):
                raise BreastscreenError(f"saliency maps of shape {sal.shape} do not match the model's grid (2, {gh}, {gw})")
            parts.append(np.broadcast_to(sal, (n, 2, gh, gw)))
        if "location" in self.maps:
            parts.append(location[:, None])
        if "embedding" in self.maps:
            if embeddings is None or np.shape(embeddings) != (n, self.embedding_dim):
                raise BreastscreenError(f"expected {n} window embeddings of size {self.embedding_dim}, "
                                        f"got {None if embeddings is None else np.shape(embeddings)}")
            # the embedding on every cell the window touches (the location indicator's non-zero cells)
            parts.append(np.asarray(embeddings, np.float32)[:, :, None, None] * (location > 0)[:, None].astype(np.float32))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def agg_inputs(self, boxes: np.ndarray, image_shape: tuple[int, int], saliency: np.ndarray | None,
                   embeddings: np.ndarray | None) -> np.ndarray:
        """Stacked f_agg inputs [n, C, h, w] of windows ``boxes`` (y0, x0, y1, x1) on an image of ``image_shape``."""
        return self.stack_maps(self.location_maps(boxes, image_shape), saliency, embeddings)
