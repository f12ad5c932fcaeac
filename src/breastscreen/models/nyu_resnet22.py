"""NYU single-view column "ResNet-22" (Wu et al. 2019): a pre-activation residual network.

First conv 7x7 stride 2 (no padding, no bias, 16 filters), max-pool 3x3 stride 2 (no padding),
five layers of two basic blocks (16, 32, 64, 128, 256 filters; strides 1, 2, 2, 2, 2), final
BN + ReLU. A block is BN->ReLU->conv3x3(stride s)->BN->ReLU->conv3x3 plus the residual; the first
block of every layer uses a bias-free 1x1 conv (with the layer's stride) on the pre-activated input
as shortcut. For a 2677x1942 input the output is 256x42x31, for 2974x1748 it is 256x47x28.

The same class with padding on the first conv and pool is the backbone of the global context
network (:mod:`breastscreen.models.gmic_global`), whose total stride is exactly 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResNet22Config:
    """Geometry of a pre-activation ResNet column."""

    in_channels: int = 1
    num_filters: int = 16
    first_kernel: int = 7
    first_stride: int = 2
    first_padding: int = 0
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_padding: int = 0
    blocks_per_layer: tuple[int, ...] = (2, 2, 2, 2, 2)
    layer_strides: tuple[int, ...] = (1, 2, 2, 2, 2)
    growth_factor: int = 2

    @property
    def out_channels(self) -> int:
        """Channels of the final feature map."""
        return self.num_filters * self.growth_factor ** (len(self.blocks_per_layer) - 1)


class PreActBlock(nn.Module):
    """Pre-activation basic block; ``shortcut`` is a 1x1 conv on the pre-activated input when set."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, project: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if project else None
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        pre = self.relu(self.bn1(x))
        residual = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


class ResNet22(nn.Module):
    """A single-view pre-activation ResNet column: image [N, C, H, W] -> feature map [N, 256, h, w]."""

    def __init__(self, config: ResNet22Config) -> None:
        super().__init__()
        if len(config.blocks_per_layer) != len(config.layer_strides):
            raise ValueError(
                f"blocks_per_layer and layer_strides must have equal length, got "
                f"{config.blocks_per_layer} and {config.layer_strides}"
            )
        self.config = config
        self.first_conv = nn.Conv2d(
            config.in_channels, config.num_filters, config.first_kernel,
            stride=config.first_stride, padding=config.first_padding, bias=False,
        )
        self.first_pool = nn.MaxPool2d(config.pool_kernel, config.pool_stride, config.pool_padding)
        layers = []
        in_ch = config.num_filters
        width = config.num_filters
        for n_blocks, stride in zip(config.blocks_per_layer, config.layer_strides):
            blocks = [PreActBlock(in_ch, width, stride, project=True)]
            blocks += [PreActBlock(width, width, 1, project=False) for _ in range(n_blocks - 1)]
            layers.append(nn.Sequential(*blocks))
            in_ch = width
            width *= config.growth_factor
        self.layers = nn.ModuleList(layers)
        self.final_bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)

    @property
    def out_channels(self) -> int:
        """Channels of the output feature map."""
        return self.config.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the column."""
        h = self.first_pool(self.first_conv(x))
        for layer in self.layers:
            h = layer(h)
        return self.relu(self.final_bn(h))


def output_size(config: ResNet22Config, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the column's output for an input of ``height`` x ``width`` (arithmetic only)."""

    def conv(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1

    sizes = []
    for n in (height, width):
        n = conv(n, config.first_kernel, config.first_stride, config.first_padding)
        n = conv(n, config.pool_kernel, config.pool_stride, config.pool_padding)
        for s in config.layer_strides:
            n = conv(n, 3, s, 1)
        sizes.append(n)
    return sizes[0], sizes[1]
