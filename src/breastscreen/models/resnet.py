"""ResNet (He et al. 2016) trunks and patch classifiers.

* ``resnet50-patch``: bottleneck blocks (3, 4, 6, 3), global average pooling + one linear layer
  with 5 outputs in PATCH_CLASSES_5 order - the all-convolutional classifier's patch model
  (Shen et al. 2019).
* ``resnet-tiny-patch``: a REDUCED variant (basic blocks (1, 1), width 8) for CPU tests/examples.
* The same class with basic blocks (2, 2, 2, 2) is the ResNet-18 trunk of the ultrasound model.

Module names: ``stem.conv``/``stem.bn``, ``layers.i.j.conv1 ... bn3``, ``layers.i.j.downsample.conv/bn``,
``head.fc``; :mod:`breastscreen.models.pretrained` maps torchvision-style names onto them.
Output: ``logits``/``probs`` [N, n_classes] and pooled ``features`` [N, C].
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
class ResNetConfig:
    """Configuration of a (post-activation) ResNet."""

    block: str = "bottleneck"  # basic | bottleneck
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = len(PATCH_CLASSES_5)
    in_channels: int = 1
    stem_channels: int = 3
    input_size: int = PATCH_SIZE


class Downsample(nn.Module):
    """1x1 strided projection + BN for the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projected shortcut."""
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = Downsample(cin, planes, stride) if stride != 1 or cin != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a residual connection."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, out_channels: int | None = None) -> None:
        super().__init__()
        cout = out_channels if out_channels is not None else planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = Downsample(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNetStem(nn.Module):
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem features at stride 4."""
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)


class ResNet(nn.Module):
    """ResNet classifier; ``forward_features`` gives the last feature map (stride 32)."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        if config.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {config.block!r}")
        if config.in_channels not in (1, config.stem_channels):
            raise ValueError(f"in_channels must be 1 or stem_channels={config.stem_channels}, got {config.in_channels}")
        self.config = config
        block = BasicBlock if config.block == "basic" else Bottleneck
        self.stem = ResNetStem(config.stem_channels, config.width)
        layers = []
        cin = config.width
        for i, n in enumerate(config.layers):
            planes = config.width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)
        self.out_channels = cin
        self.head = ClassifierHead(cin, config.num_classes, 0)

    def example_inputs(self, batch_size: int = 2, size: int = 32) -> dict:
        """Random forward() arguments."""
        return {"x": torch.randn(batch_size, self.config.in_channels, size, size)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map [N, C, h/32, w/32]."""
        check_image_batch(x, self.config.in_channels, "ResNet input")
        h = self.stem(repeat_grey(x, self.config.stem_channels))
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patch logits, probabilities and pooled features."""
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def build_resnet(config: ResNetConfig) -> ResNet:
    """Builder used by the registry."""
    return ResNet(config)


register_model("resnet50-patch", build_resnet, ResNetConfig(),
               "ResNet-50 patch classifier, 5 classes, GAP (Shen 2019)", "224x224 patches", "patch",
               {"layers": (1, 1), "width": 8})
register_model("resnet-tiny-patch", build_resnet, ResNetConfig(block="basic", layers=(1, 1), width=8),
               "REDUCED ResNet (2 basic blocks, width 8) for CPU tests/examples; 5 classes", "224x224 patches", "patch")
