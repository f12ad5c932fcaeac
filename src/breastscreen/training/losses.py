"""Losses of the training recipes (Wu et al. 2019 SI; Geras et al. 2017).

* Patch classifier: weighted cross-entropy whose class weights come from the per-epoch class
  counts, ``w_c = prod_{k != c} N_k / sum_j prod_{k != j} N_k`` (:func:`patch_class_weights`).
* Breast-level cancer model: cross-entropy of each of the four binary labels (left/right x
  benign/malignant), averaged over the labels. Models with CC and MLO branches (the view-wise
  head) are trained on each branch's own predictions and the branch losses are averaged, as
  the paper trains the view-wise model's two halves separately (:func:`breast_label_loss`).
* BI-RADS pretraining: plain 3-class cross-entropy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def patch_class_weights(counts: Sequence[float]) -> np.ndarray:
    """Class weights ``w_c = prod_{k!=c} N_k / sum_j prod_{k!=j} N_k`` from per-class counts ``N``.

    The weights sum to 1 and are proportional to ``1 / N_c``, so each class contributes the
    same total weight to an epoch's loss. Classes with ``N_c = 0`` are left out of the products
    (they cannot occur in the epoch) and get weight 0; at least one count must be positive.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {n.shape}")
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"class counts must be finite and >= 0, got {list(counts)}")
    present = n > 0
    if not present.any():
        raise ValueError(f"at least one class count must be positive, got {list(counts)}")
    # Products in log space: with counts in the thousands the plain products overflow nothing,
    # but a 5-class set of large counts would lose precision.
    logs = np.where(present, np.log(np.where(present, n, 1.0)), 0.0)
    log_prod_except = logs[present].sum() - logs
    num = np.where(present, np.exp(log_prod_except - log_prod_except[present].max()), 0.0)
    return num / num.sum()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``logits`` [N, C] against class indices ``target`` [N] with class ``weights``.

    With weights, the sum of weighted per-sample losses is divided by the sum of the weights of
    the samples (PyTorch's ``reduction='mean'`` convention).
    """
    if weights is not None:
        weights = weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weights)


def _binary_ce_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-label 2-class cross-entropy: logits [B, L, 2], target [B, L] in {0, 1, -1 (unknown)}."""
    mask = target >= 0
    if not mask.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum() / mask.sum()


def _binary_ce_from_probs(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = target >= 0
    if not mask.any():
        return probs.sum() * 0.0
    p = probs.float().clamp(1e-7, 1 - 1e-7)
    t = target.clamp(min=0).float()
    loss = -(t * torch.log(p) + (1 - t) * torch.log1p(-p))
    return (loss * mask).sum() / mask.sum()


def breast_label_loss(outputs: Mapping[str, object], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the four breast labels, averaged over labels (and over branches).

    ``target`` is [B, 4] in :data:`~breastscreen.labels.BREAST_LABELS` order with 0/1 (and -1
    for an unknown label, which is ignored). When the model returns per-branch outputs
    (``branch_logits`` [B, 4, 2] per branch, or else ``branch_probs`` [B, 4]), each branch is
    scored on its own and the branch losses are averaged; otherwise ``logits`` [B, 4, 2] is used.
    """
    branch_logits = outputs.get("branch_logits") if isinstance(outputs, Mapping) else None
    if isinstance(branch_logits, Mapping) and branch_logits:
        return torch.stack([_binary_ce_from_logits(v, target) for v in branch_logits.values()]).mean()
    branch_probs = outputs.get("branch_probs")
    if isinstance(branch_probs, Mapping) and branch_probs:
        return torch.stack([_binary_ce_from_probs(v, target) for v in branch_probs.values()]).mean()
    logits = outputs.get("logits")
    if logits is None:
        raise KeyError("breast model output has neither 'branch_logits', 'branch_probs' nor 'logits'")
    return _binary_ce_from_logits(logits, target)


# --------------------------------------------------------------------------- ultrasound MIL (Shen et al. 2021)
# L = BCE(benign) + BCE(malignant) + beta * sum_k |A_k| over the images k of a breast, where A_k
# are the benign and malignant saliency maps; the L1 term keeps the maps sparse so that they
# point at lesions. |A_k| is the mean absolute value over the cells of each map, summed over
# the two classes (so beta does not depend on the map resolution).

US_BENIGN, US_MALIGNANT = 0, 1


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
    bce_b = F.binary_cross_entropy(probs[:, US_BENIGN], target[:, US_BENIGN])
    bce_m = F.binary_cross_entropy(probs[:, US_MALIGNANT], target[:, US_MALIGNANT])
    l1 = saliency_l1(outputs["saliency"], mask).mean()
    total = bce_b + bce_m + beta * l1
    parts = {"bce_benign": bce_b.item(), "bce_malignant": bce_m.item(), "saliency_l1": l1.item()}
    if not math.isfinite(total.item()):
        raise FloatingPointError(f"loss is not finite: {parts}")
    return total, parts


def us_lesion_loss(saliency: torch.Tensor, lesions: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Lesion-mask supervision of the saliency maps (not in the paper, which is weakly supervised).

    Each map cell's target is the fraction of it that the lesion masks of its class cover
    (``lesions`` [B, K, 2, S, S] average-pooled to the map's h x w); the loss is a class-balanced
    binary cross-entropy per map, ``(BCE over lesion cells + BCE over the other cells) / 2``
    with each part weighted by its coverage (a map with no lesion of its class has only the
    second part), averaged over both maps of every image with ``known`` [B, K] True. Balanced,
    so that small lesions count as much as large ones. Returns 0 (with a gradient) when no
    image is known.
    """
    if saliency.dim() != 5 or lesions.dim() != 5 or saliency.shape[:3] != lesions.shape[:3]:
        raise ValueError(f"saliency {tuple(saliency.shape)} and lesions {tuple(lesions.shape)} must be "
                         "[B, K, 2, h, w] and [B, K, 2, S, S]")
    sel = known.to(device=saliency.device, dtype=torch.bool)
    if not bool(sel.any()):
        return saliency.sum() * 0.0
    s = saliency[sel].float().clamp(1e-6, 1 - 1e-6)  # [N, 2, h, w]
    t = F.adaptive_avg_pool2d(lesions.to(saliency.device)[sel].float(), s.shape[-2:])
    tiny = 1e-6
    pos_w, neg_w = t.sum(dim=(2, 3)), (1 - t).sum(dim=(2, 3))
    pos = -(t * torch.log(s)).sum(dim=(2, 3)) / pos_w.clamp_min(tiny)
    neg = -((1 - t) * torch.log1p(-s)).sum(dim=(2, 3)) / neg_w.clamp_min(tiny)
    per_map = torch.where(pos_w > tiny, 0.5 * (pos + neg), neg)
    return per_map.mean()
