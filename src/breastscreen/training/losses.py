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
