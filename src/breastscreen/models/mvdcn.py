"""MV-DCN: multi-view deep convolutional network for BI-RADS 0/1/2 (Geras et al. 2017).

One column per view, weights tied between the L and R views of each angle:
conv3x3/2 (32), max-pool 3x3/3, conv3x3/2 (64), 2x conv3x3 (64), max-pool 2x2,
3x conv3x3 (128), max-pool 2x2, 3x conv3x3 (128), max-pool 2x2, 3x conv3x3 (256),
global average pooling -> 256-d. Convolutions are unpadded ("valid") as in the paper, each
followed by batch norm + ReLU. The four 256-d vectors are concatenated (L-CC, R-CC, L-MLO, R-MLO)
and one fully connected layer gives the BI-RADS 0/1/2 logits (softmax -> ``probs``).
Training-only regularisation: Gaussian input noise (std 0.01) and dropout 0.2 after each pooling.
Weights start Glorot-uniform with zero biases (``init="glorot"``), as in the paper.

Reduced scale: a layer whose input would be smaller than its kernel is skipped, as the paper does
for lower-resolution inputs. Pooling layers and convolutions that keep the channel count become the
identity; a convolution that changes the channel count cannot be dropped, so it is applied with
just enough zero padding to give a 1x1 output. :meth:`MVDCN.layer_plan` lists what runs for a size.

Missing views (``present`` mask or a view absent from the dict): that view's 256-d vector is zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from breastscreen.data.types import MG_VIEWS
from breastscreen.labels import BIRADS_CLASSES, MVDCN_WINDOW
from breastscreen.models.layers import GaussianNoise, check_image_batch
from breastscreen.models.registry import register_model

# (kind, out_channels or None, kernel, stride)
MVDCN_LAYERS: tuple[tuple[str, int | None, int, int], ...] = (
    ("conv", 32, 3, 2), ("pool", None, 3, 3),
    ("conv", 64, 3, 2), ("conv", 64, 3, 1), ("conv", 64, 3, 1), ("pool", None, 2, 2),
    ("conv", 128, 3, 1), ("conv", 128, 3, 1), ("conv", 128, 3, 1), ("pool", None, 2, 2),
    ("conv", 128, 3, 1), ("conv", 128, 3, 1), ("conv", 128, 3, 1), ("pool", None, 2, 2),
    ("conv", 256, 3, 1), ("conv", 256, 3, 1), ("conv", 256, 3, 1),
)


@dataclass(frozen=True)
class MVDCNConfig:
    """Configuration of the MV-DCN."""

    in_channels: int = 1
    width_multiplier: float = 1.0  # scales every conv's channels (reduced variants only)
    padding: int = 0  # 0 = the paper's valid convolutions
    batch_norm: bool = True
    noise_std: float = 0.01
    dropout: float = 0.2
    num_classes: int = len(BIRADS_CLASSES)
    input_size: tuple[int, int] = MVDCN_WINDOW
    init: str = "glorot"  # glorot (the paper: Glorot-uniform weights, zero biases) | default (PyTorch's)


class _ConvUnit(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.kernel, self.stride, self.padding = k, s, p

    def forward(self, x: torch.Tensor, extra_pad: int = 0) -> torch.Tensor:
        if extra_pad:
            x = F.pad(x, (extra_pad,) * 4)
        return F.relu(self.bn(self.conv(x)))


class MVDCNColumn(nn.Module):
    """One MV-DCN column: image [N, C, H, W] -> 256-d vector (channels scale with the multiplier)."""

    def __init__(self, config: MVDCNConfig) -> None:
        super().__init__()
        self.config = config
        units: list[nn.Module] = []
        cin = config.in_channels
        for kind, cout, k, s in MVDCN_LAYERS:
            if kind == "conv":
                c = max(1, int(round(cout * config.width_multiplier)))
                units.append(_ConvUnit(cin, c, k, s, config.padding, config.batch_norm))
                cin = c
            else:
                units.append(nn.MaxPool2d(k, s))
        self.units = nn.ModuleList(units)
        self.dropout = nn.Dropout(config.dropout)
        self.out_channels = cin

    def _step(self, h: int, w: int, i: int) -> tuple[str, int, int, int]:
        """(action, extra_pad, new_h, new_w) for layer i at input size h x w."""
        kind, _, k, s = MVDCN_LAYERS[i]
        pad = self.config.padding if kind == "conv" else 0
        if min(h, w) + 2 * pad >= k:
            return "apply", 0, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        unit = self.units[i]
        if kind == "conv" and unit.conv.in_channels != unit.conv.out_channels:
            extra = (k - min(h, w) - 2 * pad + 1) // 2
            p = pad + extra
            return "pad", extra, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return "skip", 0, h, w

    def layer_plan(self, height: int, width: int) -> list[tuple[str, str, tuple[int, int]]]:
        """For an input size: (layer description, apply|pad|skip, output size) for every layer."""
        plan, h, w = [], height, width
        for i, (kind, cout, k, s) in enumerate(MVDCN_LAYERS):
            action, _, h, w = self._step(h, w, i)
            plan.append((f"{i}:{kind}{k}x{k}/{s}" + (f"({cout})" if cout else ""), action, (h, w)))
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Column features [N, 256]."""
        h = x
        for i, (kind, _, _, _) in enumerate(MVDCN_LAYERS):
            action, extra, _, _ = self._step(h.shape[-2], h.shape[-1], i)
            if action == "skip":
                continue
            if kind == "conv":
                h = self.units[i](h, extra)
            else:
                h = self.dropout(self.units[i](h))
        return h.mean(dim=(2, 3))


class MVDCN(nn.Module):
    """Four-view BI-RADS classifier: forward(views) -> logits/probs [B, 3], features {view: [B, 256]}."""

    def __init__(self, config: MVDCNConfig) -> None:
        super().__init__()
        self.config = config
        self.noise = GaussianNoise(config.noise_std)
        self.columns = nn.ModuleDict({a: MVDCNColumn(config) for a in ("CC", "MLO")})
        d = self.columns["CC"].out_channels
        self.feature_dim = d
        self.classifier = nn.Linear(4 * d, config.num_classes)
        if config.init not in ("glorot", "default"):
            raise ValueError(f"init must be 'glorot' or 'default', got {config.init!r}")
        if config.init == "glorot":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def example_inputs(self, batch_size: int = 2, height: int = 128, width: int = 96) -> dict:
        """Random forward() arguments of the given size."""
        return {"views": {v: torch.randn(batch_size, self.config.in_channels, height, width) for v in MG_VIEWS}}

    def forward(self, views: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None) -> dict:
        """BI-RADS logits and probabilities plus per-view features."""
        unknown = sorted(set(views) - set(MG_VIEWS))
        if unknown or not views:
            raise ValueError(f"views must be a non-empty dict with keys among {MG_VIEWS}, got {sorted(views)}")
        first = next(iter(views.values()))
        batch = first.shape[0]
        feats = {}
        for v in MG_VIEWS:
            if v not in views:
                feats[v] = first.new_zeros(batch, self.feature_dim)
                continue
            check_image_batch(views[v], self.config.in_channels, f"view {v}")
            f = self.columns[v.split("-")[1]](self.noise(views[v]))
            if present is not None and v in present:
                f = f * torch.as_tensor(present[v], device=f.device).to(f.dtype)[:, None]
            feats[v] = f
        logits = self.classifier(torch.cat([feats[v] for v in MG_VIEWS], dim=1))
        return {"logits": logits, "probs": F.softmax(logits, dim=1), "features": feats}


def build_mvdcn(config: MVDCNConfig) -> MVDCN:
    """Builder used by the registry."""
    return MVDCN(config)


register_model("mvdcn", build_mvdcn, MVDCNConfig(),
               "MV-DCN 4-view BI-RADS 0/1/2 classifier (Geras 2017)", "2600x2000 per view", "birads",
               {"padding": 1, "width_multiplier": 0.125})
