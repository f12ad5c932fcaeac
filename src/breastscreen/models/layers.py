"""Small building blocks shared by several architectures (noise, pooling, view handling)."""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianNoise(nn.Module):
    """Add N(0, std^2) noise to the input in training mode only (Wu et al. 2019; Geras et al. 2017).

    The noise comes from torch's global generator, so ``seed_everything`` makes training runs
    reproducible; in eval mode the module is the identity.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy ``x`` when training, ``x`` otherwise."""
        if not self.training or self.std == 0:
            return x
        return x + torch.randn_like(x) * self.std

    def extra_repr(self) -> str:
        return f"std={self.std}"


def top_t_pool(maps: torch.Tensor, t: float) -> torch.Tensor:
    """Mean of the top ``t`` fraction of each map: [..., h, w] -> [...] (GMIC / Shen 2021).

    At least one value is kept, so a 1x1 map pools to itself.
    """
    if not 0 < t <= 1:
        raise ValueError(f"top-t pooling fraction t must be in (0, 1], got {t}")
    flat = maps.flatten(-2)
    k = max(1, int(math.ceil(t * flat.shape[-1])))
    return flat.topk(k, dim=-1).values.mean(dim=-1)


def repeat_grey(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a 1-channel image to ``channels`` (grey input into an RGB-style backbone)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"expected 1 or {channels} input channels, got {x.shape[1]}")


def check_image_batch(x: torch.Tensor, channels: int, what: str) -> None:
    """Raise a clear error unless ``x`` is [N, channels, H, W]."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected a tensor [N, {channels}, H, W], got shape {tuple(x.shape)}")
