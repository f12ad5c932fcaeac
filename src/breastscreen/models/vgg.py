"""VGG-16 patch classifier (Simonyan & Zisserman 2015) as used by Shen et al. 2019.

Thirteen 3x3 convolutions in five stages (64x2, 128x2, 256x3, 512x3, 512x3), each stage ending
in 2x2 max pooling; global average pooling replaces the fully connected layers, then one linear
layer with 5 outputs (PATCH_CLASSES_5). ``batch_norm=True`` gives the BN variant.
``vgg-tiny-patch`` is a REDUCED variant for CPU tests/examples.

Module names: ``stages.s.j.conv`` (+ ``.bn``), ``head.fc``; torchvision-style ``features.N`` indices
are mapped by :mod:`breastscreen.models.pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.labels import PATCH_CLASSES_5, PATCH_SIZE
from breastscreen.models.densenet import ClassifierHead
from breastscreen.models.layers import check_image_batch, repeat_grey
from breastscreen.models.registry import register_model


@dataclass(frozen=True)
class VGGConfig:
    """Configuration of a VGG network (convs per stage and stage widths)."""

    stage_convs: tuple[int, ...] = (2, 2, 3, 3, 3)
    stage_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    batch_norm: bool = False
    num_classes: int = len(PATCH_CLASSES_5)
    in_channels: int = 1
    stem_channels: int = 3
    input_size: int = PATCH_SIZE


class ConvUnit(nn.Module):
    """3x3 conv (+ BN) + ReLU."""

    def __init__(self, cin: int, cout: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activated conv output."""
        h = self.conv(x)
        return F.relu(self.bn(h) if self.bn is not None else h)


class VGG(nn.Module):
    """VGG classifier with global average pooling; ``forward_features`` gives the stride-32 map."""

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        if len(config.stage_convs) != len(config.stage_widths):
            raise ValueError(f"stage_convs and stage_widths differ in length: {config.stage_convs} vs {config.stage_widths}")
        if config.in_channels not in (1, config.stem_channels):
            raise ValueError(f"in_channels must be 1 or stem_channels={config.stem_channels}, got {config.in_channels}")
        self.config = config
        stages, cin = [], config.stem_channels
        for n, w in zip(config.stage_convs, config.stage_widths):
            units = []
            for _ in range(n):
                units.append(ConvUnit(cin, w, config.batch_norm))
                cin = w
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        self.head = ClassifierHead(cin, config.num_classes, 0)

    def example_inputs(self, batch_size: int = 2, size: int = 32) -> dict:
        """Random forward() arguments."""
        return {"x": torch.randn(batch_size, self.config.in_channels, size, size)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the last stage's pooling."""
        check_image_batch(x, self.config.in_channels, "VGG input")
        h = repeat_grey(x, self.config.stem_channels)
        for stage in self.stages:
            h = F.max_pool2d(stage(h), 2)
        return h

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patch logits, probabilities and pooled features."""
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def build_vgg(config: VGGConfig) -> VGG:
    """Builder used by the registry."""
    return VGG(config)


register_model("vgg16-patch", build_vgg, VGGConfig(),
               "VGG-16 patch classifier, GAP instead of FC, 5 classes (Shen 2019)", "224x224 patches", "patch",
               {"stage_widths": (4, 4, 8, 8, 8)})
register_model("vgg-tiny-patch", build_vgg,
               VGGConfig(stage_convs=(1, 1, 1, 1, 1), stage_widths=(8, 8, 16, 16, 16), batch_norm=True),
               "REDUCED VGG (5 single-conv BN stages) for CPU tests/examples; 5 classes", "224x224 patches", "patch")
