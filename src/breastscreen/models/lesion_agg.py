"""Lesion aggregation network ``f_agg`` and its input-map builders (Wu et al. 2020).

The lesion classifier combines local information (the patch embedding ``h`` from the
DenseNet-161 ``f_loc``) with global context (the saliency maps of the global network) on the
saliency-map grid. Input channels, in this order, any subset: saliency maps (2: benign,
malignant), location indicator (1), embedding maps (``embedding_dim``, 32 by default).
Network: [BN -> ReLU -> conv3x3 (32)] x 2, global average pooling, linear classifier to the 4
PATCH_CLASSES. Output: ``logits``/``probs`` [N, 4].

Map builders:
* :func:`location_indicator_map` - for each grid cell, the fraction of its area covered by the
  patch window (values in [0, 1]).
* :func:`embedding_map` - the patch embedding placed on every cell the window overlaps
  (indicator > 0), zeros elsewhere.
* :func:`stack_agg_inputs` - concatenates the selected maps in the documented channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.labels import PATCH_CLASSES
from breastscreen.models.registry import register_model


@dataclass(frozen=True)
class LesionAggConfig:
    """Which input maps are used and the network's width."""

    use_saliency: bool = True
    use_location: bool = True
    use_embedding: bool = True
    embedding_dim: int = 32
    hidden: int = 32
    num_classes: int = len(PATCH_CLASSES)
    grid_size: tuple[int, int] = (46, 30)

    @property
    def in_channels(self) -> int:
        """Number of stacked input channels."""
        return 2 * self.use_saliency + 1 * self.use_location + self.embedding_dim * self.use_embedding


def location_indicator_map(boxes: torch.Tensor, image_size: tuple[int, int],
                           grid_size: tuple[int, int]) -> torch.Tensor:
    """Fraction of every grid cell covered by each patch window.

    ``boxes`` [N, 4] (or [4]) as (y0, x0, y1, x1) in image pixels (y1/x1 exclusive) of an image of
    ``image_size`` (H, W); the grid divides the image into ``grid_size`` (h, w) equal cells.
    Returns [N, h, w] (or [h, w]).
    """
    single = boxes.dim() == 1
    b = boxes.reshape(-1, 4).to(torch.float64)
    (H, W), (gh, gw) = image_size, grid_size
    if H <= 0 or W <= 0 or gh <= 0 or gw <= 0:
        raise ValueError(f"image_size and grid_size must be positive, got {image_size} and {grid_size}")
    if torch.any(b[:, 2] < b[:, 0]) or torch.any(b[:, 3] < b[:, 1]):
        raise ValueError("boxes must be (y0, x0, y1, x1) with y1 >= y0 and x1 >= x0")

    def overlap(lo: torch.Tensor, hi: torch.Tensor, size: int, cells: int) -> torch.Tensor:
        edges = torch.arange(cells + 1, dtype=torch.float64) * (size / cells)
        left, right = edges[:-1], edges[1:]
        ov = torch.minimum(hi[:, None], right[None]) - torch.maximum(lo[:, None], left[None])
        return ov.clamp_min(0) / (size / cells)

    fy = overlap(b[:, 0], b[:, 2], H, gh)
    fx = overlap(b[:, 1], b[:, 3], W, gw)
    out = (fy[:, :, None] * fx[:, None, :]).to(torch.float32)
    return out[0] if single else out


def embedding_map(embeddings: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
    """Place embeddings [N, D] on the cells where ``indicator`` [N, h, w] > 0: returns [N, D, h, w]."""
    if embeddings.dim() != 2 or indicator.dim() != 3 or embeddings.shape[0] != indicator.shape[0]:
        raise ValueError(f"expected embeddings [N, D] and indicator [N, h, w], got "
                         f"{tuple(embeddings.shape)} and {tuple(indicator.shape)}")
    return embeddings[:, :, None, None] * (indicator > 0).to(embeddings.dtype)[:, None]


def stack_agg_inputs(config: LesionAggConfig, saliency: torch.Tensor | None = None,
                     location: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Stack saliency [N, 2, h, w], location [N, h, w] and embedding maps [N, D, h, w] per ``config``."""
    parts = []
    for used, value, name in ((config.use_saliency, saliency, "saliency"),
                              (config.use_location, location, "location"),
                              (config.use_embedding, embedding, "embedding")):
        if used:
            if value is None:
                raise ValueError(f"config uses {name} maps but none were given")
            parts.append(value[:, None] if name == "location" and value.dim() == 3 else value)
    if not parts:
        raise ValueError("at least one of use_saliency, use_location, use_embedding must be true")
    return torch.cat(parts, dim=1)


class LesionAggregator(nn.Module):
    """``f_agg``: stacked maps [N, C, h, w] -> lesion class logits/probs [N, 4]."""

    def __init__(self, config: LesionAggConfig) -> None:
        super().__init__()
        if config.in_channels == 0:
            raise ValueError("at least one of use_saliency, use_location, use_embedding must be true")
        self.config = config
        c = config.in_channels
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, config.hidden, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(config.hidden)
        self.conv2 = nn.Conv2d(config.hidden, config.hidden, 3, padding=1)
        self.fc = nn.Linear(config.hidden, config.num_classes)

    def example_inputs(self, batch_size: int = 2) -> dict:
        """Random forward() arguments on the configured grid."""
        return {"x": torch.randn(batch_size, self.config.in_channels, *self.config.grid_size)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lesion class logits and probabilities."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected [N, {self.config.in_channels}, h, w] stacked maps, got {tuple(x.shape)}")
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.conv2(F.relu(self.bn2(h)))
        logits = self.fc(h.mean(dim=(2, 3)))
        return {"logits": logits, "probs": F.softmax(logits, dim=1)}


def build_lesion_agg(config: LesionAggConfig) -> LesionAggregator:
    """Builder used by the registry."""
    return LesionAggregator(config)


register_model("lesion-agg", build_lesion_agg, LesionAggConfig(),
               "Lesion aggregation f_agg: saliency(2)+location(1)+embedding(32) maps -> 4 classes (Wu 2020)",
               "46x30 grid", "lesion", {"grid_size": (8, 6)})
