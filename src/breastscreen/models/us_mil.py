"""Breast ultrasound classifier: weakly supervised saliency + gated-attention MIL (Shen et al. 2021).

Per image: a ResNet-18 trunk (256x256 -> 512x8x8), a 1x1 convolution + sigmoid -> benign and
malignant saliency maps (8x8), top-t% pooling of each map -> image-level predictions.
Over the K images of a breast: global max pooled features h_k (L=512), gated attention
a_k ∝ exp(w^T (tanh(V h_k) ⊙ sigm(U h_k))) with M=128 hidden units and 2 scores per image (one per
class), softmax over the images; breast-level probability of class c = Σ_k a_k,c · ŷ_k,c.

forward(images [B, K, C, H, W], mask [B, K] bool (True = real image; default all True)) returns
``probs`` [B, 2] (benign, malignant), ``attention`` [B, K, 2] (exactly 0 at padded positions,
summing to 1 over real images), ``saliency`` [B, K, 2, 8, 8], ``image_probs`` [B, K, 2] (padded
positions are 0) and ``features`` [B, K, L]. Padded images are never run through the trunk, so
they cannot influence batch-norm statistics. Every bag needs at least one real image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from breastscreen.labels import HEATMAP_CHANNELS
from breastscreen.models.layers import top_t_pool
from breastscreen.models.registry import register_model
from breastscreen.models.resnet import ResNet, ResNetConfig


@dataclass(frozen=True)
class USMILConfig:
    """Configuration of the ultrasound MIL classifier."""

    in_channels: int = 1
    stem_channels: int = 3
    width: int = 64  # ResNet-18 widths 64..512 (L = 8 * width)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    attention_hidden: int = 128  # M
    top_t: float = 0.1
    input_size: int = 256


class GatedAttention(nn.Module):
    """Gated attention scores w^T (tanh(V h) ⊙ sigm(U h)), one score per class."""

    def __init__(self, dim: int, hidden: int, n_scores: int) -> None:
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, n_scores)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores [..., n_scores]."""
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))


class UltrasoundMIL(nn.Module):
    """Bag of ultrasound images -> breast-level benign/malignant probabilities with attention."""

    def __init__(self, config: USMILConfig) -> None:
        super().__init__()
        if not 0 < config.top_t <= 1:
            raise ValueError(f"top_t must be in (0, 1], got {config.top_t}")
        self.config = config
        trunk = ResNet(ResNetConfig(block="basic", layers=config.layers, width=config.width,
                                    in_channels=config.in_channels, stem_channels=config.stem_channels))
        trunk.head = nn.Identity()  # classification head of the trunk is not used
        self.trunk = trunk
        dim = trunk.out_channels
        self.feature_dim = dim
        self.saliency = nn.Conv2d(dim, len(HEATMAP_CHANNELS), 1)
        self.attention = GatedAttention(dim, config.attention_hidden, len(HEATMAP_CHANNELS))

    def example_inputs(self, batch_size: int = 2, n_images: int = 3, size: int = 64) -> dict:
        """Random forward() arguments: a padded batch of bags with a mask."""
        images = torch.randn(batch_size, n_images, self.config.in_channels, size, size)
        mask = torch.ones(batch_size, n_images, dtype=torch.bool)
        mask[1:, n_images - 1:] = False
        return {"images": images, "mask": mask}

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Breast-level probabilities, attention weights, saliency maps and image-level predictions."""
        if images.dim() != 5 or images.shape[2] != self.config.in_channels:
            raise ValueError(f"images must be [B, K, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        B, K = images.shape[:2]
        if mask is None:
            mask = torch.ones(B, K, dtype=torch.bool, device=images.device)
        mask = mask.to(device=images.device, dtype=torch.bool)
        if mask.shape != (B, K):
            raise ValueError(f"mask must have shape ({B}, {K}), got {tuple(mask.shape)}")
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"every bag needs at least one image; bags {empty} are all padding")
        flat_mask = mask.reshape(-1)
        fmap = self.trunk.forward_features(images.reshape(B * K, *images.shape[2:])[flat_mask])
        sal = torch.sigmoid(self.saliency(fmap))
        img_p = top_t_pool(sal, self.config.top_t)
        h = fmap.amax(dim=(2, 3))
        scores = self.attention(h)

        def scatter(values: torch.Tensor, fill: float) -> torch.Tensor:
            full = values.new_full((B * K, *values.shape[1:]), fill)
            full[flat_mask] = values
            return full.view(B, K, *values.shape[1:])

        scores = scatter(scores, float("-inf"))
        attention = torch.softmax(scores, dim=1)  # exp(-inf) = 0 exactly at padding
        image_probs = scatter(img_p, 0.0)
        probs = (attention * image_probs).sum(dim=1)
        return {"probs": probs, "attention": attention, "saliency": scatter(sal, 0.0),
                "image_probs": image_probs, "features": scatter(h, 0.0)}


def build_us_mil(config: USMILConfig) -> UltrasoundMIL:
    """Builder used by the registry."""
    return UltrasoundMIL(config)


register_model("us-mil", build_us_mil, USMILConfig(),
               "Ultrasound ResNet-18 saliency + gated-attention MIL over a breast's images (Shen 2021)",
               "K x 256x256", "ultrasound", {"width": 4, "attention_hidden": 16})
register_model("us-mil-tiny", build_us_mil, USMILConfig(width=8, layers=(1, 1, 1, 1), attention_hidden=32),
               "REDUCED ultrasound MIL (width 8, 1 block per stage) for CPU tests/examples", "K x 256x256", "ultrasound")
