"""All-convolutional whole-image classifier (Shen et al. 2019).

A patch classifier (``resnet50-patch`` or ``vgg16-patch``) is turned into a whole-image classifier:
its convolutional trunk runs on the whole image, then two top blocks, global average pooling and a
2-class output (``logits``/``probs`` [B, 2]: index 1 = malignant / cancer).

Top blocks (``top``, ``top_blocks``), as in the paper's Tables 2-3:

* ``resnet``: each block is ``units`` bottleneck units ``[planes-planes-out]`` (1x1, 3x3, 1x1
  convs with BN) whose first unit has a stride-``top_stride`` 3x3 conv and a projected shortcut;
  the default ``((512, 2048, 1), (512, 2048, 1))`` is the paper's best ResNet-50 variant
  "[512-512-2048]x1, two blocks"; ``((512, 1024, 2),)`` with ``top_stride=1`` is "[512-512-1024]x2";
* ``vgg``: each block is ``convs`` 3x3 convs of ``channels`` (BN + ReLU) and 2x2 max pooling;
  the default ``((256, 1), (128, 1))`` is the paper's VGG-16 "256x1, 128x1" variant.

Modes (``mode``), as compared in the paper:
* ``features``: trunk feature map -> top blocks -> GAP -> linear(2).
* ``heatmap``: the patch classifier's own linear layer is applied at every position of the feature
  map (a 1x1 convolution with the same weights) and softmax gives a patch-class heatmap
  [B, 5, h, w], which goes through the top blocks -> GAP -> linear(2).
* ``heatmap_fc``: heatmap -> max pooling -> two fully connected layers (``fc_hidden`` units + ReLU,
  then 2). The pooling is adaptive to a fixed ``heatmap_pool_size`` grid so any input size works
  (the paper used fixed-size images and a fixed pooling window).

Output: ``logits``, ``probs`` [B, 2], ``features`` [B, C] (pooled top-block features, for
``features``/``heatmap`` modes) and ``heatmap`` [B, 5, h, w] in the heatmap modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.models.layers import check_image_batch
from breastscreen.models.registry import create_model, register_model
from breastscreen.models.resnet import Bottleneck
from breastscreen.models.vgg import ConvUnit

MODES: tuple[str, ...] = ("features", "heatmap", "heatmap_fc")


@dataclass(frozen=True)
class AllConvConfig:
    """Configuration of the all-convolutional classifier."""

    trunk: str = "resnet50-patch"  # registry name of the patch classifier
    trunk_overrides: dict[str, Any] = field(default_factory=dict)
    top: str = "resnet"  # resnet | vgg
    # resnet: (planes, out, units) per block; vgg: (channels, convs) per block
    top_blocks: tuple[tuple[int, ...], ...] = ((512, 2048, 1), (512, 2048, 1))
    top_stride: int = 2
    mode: str = "features"
    num_classes: int = 2
    fc_hidden: int = 64
    heatmap_pool_size: tuple[int, int] = (8, 8)
    in_channels: int = 1
    input_size: tuple[int, int] = (1152, 896)


class AllConvClassifier(nn.Module):
    """Patch-classifier trunk + top blocks (or heatmap + FC) -> whole-image 2-class output."""

    def __init__(self, config: AllConvConfig) -> None:
        super().__init__()
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
        if config.top not in ("resnet", "vgg"):
            raise ValueError(f"top must be 'resnet' or 'vgg', got {config.top!r}")
        self.config = config
        self.patch = create_model(config.trunk, in_channels=config.in_channels, **config.trunk_overrides)
        if not hasattr(self.patch, "forward_features"):
            raise ValueError(f"trunk {config.trunk!r} is not a patch classifier with a convolutional trunk")
        n_patch = self.patch.head.fc.out_features
        if config.mode == "features":
            # The patch classifier's own output layer is unused on whole images; dropping it keeps
            # every parameter trained (use init_allconv_from_patch to copy a trained trunk).
            self.patch.head = nn.Identity()
        if config.mode == "heatmap_fc":
            gh, gw = config.heatmap_pool_size
            self.fc_hidden = nn.Linear(n_patch * gh * gw, config.fc_hidden)
            self.fc = nn.Linear(config.fc_hidden, config.num_classes)
            return
        cin = self.patch.out_channels if config.mode == "features" else n_patch
        if not config.top_blocks:
            raise ValueError("top_blocks must name at least one block")
        blocks: list[nn.Module] = []
        if config.top == "resnet":
            if config.top_stride not in (1, 2):
                raise ValueError(f"top_stride must be 1 or 2, got {config.top_stride}")
            for spec in config.top_blocks:
                if len(spec) != 3 or min(spec) < 1:
                    raise ValueError(f"resnet top blocks are (planes, out, units) of positive ints, got {spec}")
                planes, out, units = (int(v) for v in spec)
                for u in range(units):
                    blocks.append(Bottleneck(cin, planes, config.top_stride if u == 0 else 1, out))
                    cin = out
        else:
            for spec in config.top_blocks:
                if len(spec) != 2 or min(spec) < 1:
                    raise ValueError(f"vgg top blocks are (channels, convs) of positive ints, got {spec}")
                channels, convs = (int(v) for v in spec)
                for _ in range(convs):
                    blocks.append(ConvUnit(cin, channels, True))
                    cin = channels
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
        self.top = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, config.num_classes)

    def example_inputs(self, batch_size: int = 2, height: int = 96, width: int = 64) -> dict:
        """Random forward() arguments."""
        return {"x": torch.randn(batch_size, self.config.in_channels, height, width)}

    def patch_heatmap(self, features: torch.Tensor) -> torch.Tensor:
        """Patch-class probabilities at every feature-map position: [B, n_patch_classes, h, w]."""
        fc = self.patch.head.fc
        logits = F.conv2d(features, fc.weight[:, :, None, None], fc.bias)
        return F.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Whole-image logits/probs (+ pooled features, heatmap)."""
        check_image_batch(x, self.config.in_channels, "all-convolutional classifier input")
        fmap = self.patch.forward_features(x)
        out: dict[str, torch.Tensor] = {}
        if self.config.mode == "features":
            h = self.top(fmap)
        else:
            heat = self.patch_heatmap(fmap)
            out["heatmap"] = heat
            if self.config.mode == "heatmap_fc":
                pooled = F.adaptive_max_pool2d(heat, self.config.heatmap_pool_size).flatten(1)
                logits = self.fc(F.relu(self.fc_hidden(pooled)))
                out.update(logits=logits, probs=F.softmax(logits, dim=1))
                return out
            h = self.top(heat)
        pooled = h.mean(dim=(2, 3))
        logits = self.fc(pooled)
        out.update(logits=logits, probs=F.softmax(logits, dim=1), features=pooled)
        return out


@torch.no_grad()
def init_allconv_from_patch(model: AllConvClassifier, patch_model: nn.Module) -> list[str]:
    """Copy a trained patch classifier into ``model.patch`` (strict; the head only in heatmap modes).

    Returns the copied keys. Shapes and names must match exactly (same trunk config).
    """
    src = patch_model.state_dict()
    dst = model.patch.state_dict()
    if model.config.mode == "features":
        src = {k: v for k, v in src.items() if not k.startswith("head.")}
    missing, unexpected = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
    if missing or unexpected:
        raise ValueError(f"patch classifier does not match the trunk: missing {missing[:8]}, unexpected {unexpected[:8]}")
    bad = [f"{k}: {tuple(src[k].shape)} vs {tuple(dst[k].shape)}" for k in dst if src[k].shape != dst[k].shape]
    if bad:
        raise ValueError("shape mismatch: " + "; ".join(bad[:8]))
    model.patch.load_state_dict(src, strict=True)
    return [f"patch.{k}" for k in src]


def build_allconv(config: AllConvConfig) -> AllConvClassifier:
    """Builder used by the registry."""
    return AllConvClassifier(config)


_TINY_RES = {"trunk_overrides": {"layers": (1, 1), "width": 8}, "top_blocks": ((8, 16, 1), (8, 16, 1))}
_TINY_VGG = {"trunk_overrides": {"stage_widths": (4, 4, 8, 8, 8)}, "top_blocks": ((8, 1), (8, 1))}
register_model("allconv-resnet50", build_allconv, AllConvConfig(),
               "All-conv whole-image classifier: ResNet-50 trunk + two [512-512-2048]x1 top blocks (Shen 2019)",
               "1152x896", "image", _TINY_RES)
register_model("allconv-vgg16", build_allconv,
               AllConvConfig(trunk="vgg16-patch", top="vgg", top_blocks=((256, 1), (128, 1))),
               "All-conv whole-image classifier: VGG-16 trunk + VGG top blocks 256, 128 with BN (Shen 2019)",
               "1152x896", "image", _TINY_VGG)
register_model("allconv-resnet50-heatmap", build_allconv, AllConvConfig(mode="heatmap"),
               "All-conv variant: patch heatmap inserted before the ResNet top blocks (Shen 2019)",
               "1152x896", "image", _TINY_RES)
register_model("allconv-resnet50-heatmap-fc", build_allconv, AllConvConfig(mode="heatmap_fc"),
               "All-conv variant: patch heatmap -> max-pool -> two FC layers (Shen 2019)",
               "1152x896", "image", {"trunk_overrides": {"layers": (1, 1), "width": 8}})
