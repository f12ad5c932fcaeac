"""DenseNet patch classifiers (Huang et al. 2017) as used by Wu et al. 2019 and Wu et al. 2020.

* ``densenet121-patch``: blocks (6, 12, 24, 16), growth 32, 64 initial features, 4 outputs in
  PATCH_CLASSES order (malignant, benign, outside, negative) - the heatmap patch classifier.
* ``densenet161-patch-embed``: blocks (6, 12, 36, 24), growth 48, 96 initial features, with an
  extra 32-unit fully connected layer (+ ReLU) before the classifier whose activations are the
  patch embedding ``h`` of the lesion classifier's local module (output key ``embedding``).
* ``densenet-tiny`` / ``densenet-tiny-embed``: REDUCED variants (2 blocks, growth 8) for CPU demos
  and tests; not architectures from the papers.

Input: [N, in_channels, h, w]. The stem has ``stem_channels`` inputs (3 = ImageNet-compatible);
grey (1-channel) input is repeated to 3 channels when ``in_channels=1, stem_channels=3``.
Output: ``logits``/``probs`` [N, n_classes], ``features`` [N, C] (pooled), ``embedding`` [N, 32]
when configured. Module names (``stem.conv``, ``blocks.i.layers.j.conv1`` ...) are this package's
own; :mod:`breastscreen.models.pretrained` maps torchvision-style names onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.labels import PATCH_CLASSES, PATCH_SIZE
from breastscreen.models.layers import check_image_batch, repeat_grey
from breastscreen.models.registry import register_model


@dataclass(frozen=True)
class DenseNetConfig:
    """Configuration of a DenseNet patch classifier."""

    block_config: tuple[int, ...] = (6, 12, 24, 16)
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    num_classes: int = len(PATCH_CLASSES)
    embedding_dim: int = 0  # > 0 adds an FC layer of this size before the classifier
    in_channels: int = 1
    stem_channels: int = 3
    drop_rate: float = 0.0
    input_size: int = PATCH_SIZE


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bottleneck) then BN-ReLU-conv3x3 producing ``growth`` new channels."""

    def __init__(self, cin: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The new feature maps (to be concatenated by the block)."""
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return F.dropout(h, self.drop_rate, self.training) if self.drop_rate > 0 else h


class DenseBlock(nn.Module):
    """Dense block: every layer sees the concatenation of all previous feature maps."""

    def __init__(self, n_layers: int, cin: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(cin + i * growth, growth, bn_size, drop_rate) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input and all new features, concatenated."""
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return torch.cat(feats, dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compressed, downsampled features."""
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNetStem(nn.Module):
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, stride=2, padding=3, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem features at stride 4."""
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 3, 2, 1)


class ClassifierHead(nn.Module):
    """Pooled features -> (optional embedding FC + ReLU) -> linear classifier."""

    def __init__(self, cin: int, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(cin, embedding_dim) if embedding_dim > 0 else None
        self.fc = nn.Linear(embedding_dim if embedding_dim > 0 else cin, num_classes)

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """logits/probs (+ embedding) from pooled features."""
        out: dict[str, torch.Tensor] = {"features": pooled}
        h = pooled
        if self.embed is not None:
            h = F.relu(self.embed(pooled))
            out["embedding"] = h
        logits = self.fc(h)
        out["logits"] = logits
        out["probs"] = F.softmax(logits, dim=1)
        return out


class DenseNet(nn.Module):
    """DenseNet patch classifier; ``forward_features`` gives the final feature map (stride 32)."""

    def __init__(self, config: DenseNetConfig) -> None:
        super().__init__()
        if config.in_channels not in (1, config.stem_channels):
            raise ValueError(f"in_channels must be 1 or stem_channels={config.stem_channels}, got {config.in_channels}")
        self.config = config
        self.stem = DenseNetStem(config.stem_channels, config.num_init_features)
        blocks, transitions = [], []
        c = config.num_init_features
        for i, n in enumerate(config.block_config):
            blocks.append(DenseBlock(n, c, config.growth_rate, config.bn_size, config.drop_rate))
            c += n * config.growth_rate
            if i < len(config.block_config) - 1:
                cout = int(c * config.compression)
                transitions.append(Transition(c, cout))
                c = cout
        self.blocks = nn.ModuleList(blocks)
        self.transitions = nn.ModuleList(transitions)
        self.final_norm = nn.BatchNorm2d(c)
        self.out_channels = c
        self.head = ClassifierHead(c, config.num_classes, config.embedding_dim)

    def example_inputs(self, batch_size: int = 2, size: int = 32) -> dict:
        """Random forward() arguments."""
        return {"x": torch.randn(batch_size, self.config.in_channels, size, size)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final (BN + ReLU) feature map [N, C, h/32, w/32]."""
        check_image_batch(x, self.config.in_channels, "DenseNet input")
        h = self.stem(repeat_grey(x, self.config.stem_channels))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.transitions):
                h = self.transitions[i](h)
        return F.relu(self.final_norm(h))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patch logits, probabilities, pooled features (and embedding)."""
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def build_densenet(config: DenseNetConfig) -> DenseNet:
    """Builder used by the registry."""
    return DenseNet(config)


_TINY = {"block_config": (2, 2), "growth_rate": 4, "num_init_features": 8}
register_model("densenet121-patch", build_densenet, DenseNetConfig(),
               "DenseNet-121 patch classifier, 4 classes (Wu 2019 heatmaps)", "256x256", "patch", _TINY)
register_model("densenet161-patch-embed", build_densenet,
               DenseNetConfig(block_config=(6, 12, 36, 24), growth_rate=48, num_init_features=96, embedding_dim=32),
               "DenseNet-161 + 32-unit embedding FC, 4 classes (Wu 2020 f_loc)", "256x256", "patch", _TINY)
register_model("densenet-tiny", build_densenet,
               DenseNetConfig(block_config=(2, 2), growth_rate=8, num_init_features=16),
               "REDUCED DenseNet (2 blocks, growth 8) for CPU tests/examples; 4 classes", "256x256", "patch")
register_model("densenet-tiny-embed", build_densenet,
               DenseNetConfig(block_config=(2, 2), growth_rate=8, num_init_features=16, embedding_dim=32),
               "REDUCED DenseNet + 32-d embedding for CPU tests/examples; 4 classes", "256x256", "patch")
