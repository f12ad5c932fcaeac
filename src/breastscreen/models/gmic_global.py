"""Global context / saliency network ("globally-aware" classifier; Shen et al. GMIC, Wu et al. 2020).

A pre-activation ResNet-22-style backbone (16-256 filters) whose first conv and pool are padded so
that the total stride is exactly 64; its last feature map goes through a 1x1 convolution + sigmoid
to two saliency maps in HEATMAP_CHANNELS order (benign, malignant): 46x30 for a 2944x1920 input.
Top-t% pooling (mean of the largest ``t`` fraction of each map) gives image-level probabilities.

Output: ``saliency`` [B, 2, h, w], ``probs`` [B, 2] (benign, malignant), ``features`` [B, 256, h, w]
(the backbone map, for the lesion classifier's context features). The saliency maps feed
:mod:`breastscreen.models.lesion_agg` as its context input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from breastscreen.labels import HEATMAP_CHANNELS
from breastscreen.models.layers import check_image_batch, top_t_pool
from breastscreen.models.nyu_resnet22 import ResNet22, ResNet22Config
from breastscreen.models.registry import register_model


@dataclass(frozen=True)
class GlobalNetConfig:
    """Configuration of the global saliency network."""

    in_channels: int = 1
    num_filters: int = 16
    blocks_per_layer: tuple[int, ...] = (2, 2, 2, 2, 2)
    layer_strides: tuple[int, ...] = (1, 2, 2, 2, 2)
    top_t: float = 0.02  # fraction of saliency-map cells averaged by top-t% pooling
    input_size: tuple[int, int] = (2944, 1920)


class GlobalSaliencyNet(nn.Module):
    """Image [B, C, H, W] -> saliency maps at stride 64 and image-level probabilities."""

    def __init__(self, config: GlobalNetConfig) -> None:
        super().__init__()
        if not 0 < config.top_t <= 1:
            raise ValueError(f"top_t must be in (0, 1], got {config.top_t}")
        self.config = config
        self.backbone = ResNet22(ResNet22Config(
            in_channels=config.in_channels, num_filters=config.num_filters,
            first_padding=3, pool_padding=1,
            blocks_per_layer=config.blocks_per_layer, layer_strides=config.layer_strides,
        ))
        self.saliency = nn.Conv2d(self.backbone.out_channels, len(HEATMAP_CHANNELS), 1)

    def example_inputs(self, batch_size: int = 2, height: int = 128, width: int = 96) -> dict:
        """Random forward() arguments."""
        return {"x": torch.randn(batch_size, self.config.in_channels, height, width)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Saliency maps, pooled probabilities and backbone features."""
        check_image_batch(x, self.config.in_channels, "global network input")
        features = self.backbone(x)
        saliency = torch.sigmoid(self.saliency(features))
        return {"saliency": saliency, "probs": top_t_pool(saliency, self.config.top_t), "features": features}


def build_global_net(config: GlobalNetConfig) -> GlobalSaliencyNet:
    """Builder used by the registry."""
    return GlobalSaliencyNet(config)


register_model("gmic-global", build_global_net, GlobalNetConfig(),
               "Global context/saliency network, stride 64, 2 saliency maps + top-t% pooling",
               "2944x1920", "saliency", {"num_filters": 4})
