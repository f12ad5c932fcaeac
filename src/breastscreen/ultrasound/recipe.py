"""The ultrasound classifier's training recipe (Shen et al. 2021).

One training example is one breast: all of its images form a bag. The loss is

    L = BCE(y_benign, p_benign) + BCE(y_malignant, p_malignant) + beta * sum_k |A_k|

where ``p`` are the attention-weighted breast-level probabilities and ``A_k`` the benign and
malignant saliency maps of image ``k`` of the breast. The L1 term keeps the saliency maps
sparse so that they point at lesions. ``|A_k|`` is taken as the mean absolute value over the
cells of each map, summed over the two classes (so ``beta`` does not depend on the map
resolution), summed over the real (unpadded) images of the breast, and the whole loss is
averaged over the breasts of the batch. Optimiser: Adam with L2 weight decay; the top-t %
pooling fraction ``t`` is a model hyper-parameter searched alongside lr, beta and weight decay.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F

# Output index of each class in the model's [.., 2] tensors (breastscreen.labels.HEATMAP_CHANNELS).
BENIGN, MALIGNANT = 0, 1

# The model registered by the models helper for Shen et al. 2021.
DEFAULT_MODEL = "us-mil"


@dataclass
class USRecipe:
    """Hyper-parameters of one ultrasound training run (defaults: mid-points of the paper's search space)."""

    model: str = DEFAULT_MODEL
    model_overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 10**-4.5
    beta: float = 10**-1.5
    weight_decay: float = 10**-4.5
    top_t: float = 0.3
    epochs: int = 20
    batch_size: int = 8
    input_size: int = 256
    augment: bool = True
    augment_strength: float = 1.0  # 1 = the paper's ranges; smaller = milder (see bags.ScaledAugment)
    max_images: int | None = None  # cap on images per bag in training (random subset); None = all
    patience: int | None = None  # early stopping on validation AUROC; None = train all epochs
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "beta": self.beta >= 0,
            "weight_decay": self.weight_decay >= 0,
            "top_t": 0 < self.top_t <= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "input_size": self.input_size >= 32,
        }
        rules = {
            "lr": "> 0",
            "beta": ">= 0",
            "weight_decay": ">= 0",
            "top_t": "in (0, 1]",
            "epochs": ">= 1",
            "batch_size": ">= 1",
            "input_size": ">= 32 pixels",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} must be {rules[name]}, got {getattr(self, name)!r}")
        if not 0.0 <= self.augment_strength <= 1.0:
            raise ValueError(f"augment_strength must be in [0, 1], got {self.augment_strength}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {self.max_images}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for config files, checkpoints and logs)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "USRecipe":
        """Build from a dict, refusing unknown keys (typos must not be ignored)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(data))


def saliency_l1(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-breast ``sum_k |A_k|``: mean |value| per map, summed over classes and real images.

    ``saliency``: [B, K, C, h, w]; ``mask``: [B, K] (True/1 = real image). Returns [B].
    """
    if saliency.dim() != 5:
        raise ValueError(f"saliency must be [B, K, C, h, w], got shape {tuple(saliency.shape)}")
    per_image = saliency.abs().mean(dim=(3, 4)).sum(dim=2)  # [B, K]
    return (per_image * mask.to(per_image.dtype)).sum(dim=1)


def us_mil_loss(
    outputs: Mapping[str, torch.Tensor], labels: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's loss for a batch of bags; returns (loss, its parts as floats for logging).

    ``outputs["probs"]``: [B, 2] breast-level (benign, malignant) probabilities;
    ``outputs["saliency"]``: [B, K, 2, h, w]; ``labels``: [B, 2] in {0, 1}; ``mask``: [B, K].
    """
    probs = outputs["probs"]
    if probs.shape != labels.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and labels {tuple(labels.shape)} must have the same shape")
    target = labels.to(probs.dtype)
    # binary_cross_entropy clamps log(0) at -100, so saturated sigmoids cannot give inf.
    bce_b = F.binary_cross_entropy(probs[:, BENIGN], target[:, BENIGN])
    bce_m = F.binary_cross_entropy(probs[:, MALIGNANT], target[:, MALIGNANT])
    l1 = saliency_l1(outputs["saliency"], mask).mean()
    total = bce_b + bce_m + beta * l1
    parts = {"bce_benign": bce_b.item(), "bce_malignant": bce_m.item(), "saliency_l1": l1.item()}
    if not math.isfinite(total.item()):
        raise FloatingPointError(f"loss is not finite: {parts}")
    return total, parts


def make_optimizer(model: torch.nn.Module, recipe: USRecipe) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with the recipe's lr and L2 weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
