"""KIND ``us`` of ``breastscreen train`` / ``breastscreen search``: the ultrasound recipe (Shen et al. 2021).

Registered with the training stage's recipe registry (``breastscreen.training.recipes``), so
the generic fit loop provides the run directory, per-epoch metrics CSV, best/last
checkpoints, resume, early stopping and DDP. Recipe (defaults; every value can be overridden
with ``KEY=VALUE``):

* model ``us-mil`` (ResNet-18 saliency + gated-attention MIL); its ``top_t`` and
  ``input_size`` come from ``recipe.top_t`` and ``recipe.input_size``;
* one example = one breast (all its images, padded per batch with a mask);
* loss = BCE(benign) + BCE(malignant) + ``recipe.beta`` * sum_k |A_k|
  (:func:`~breastscreen.ultrasound.recipe.us_mil_loss`);
* Adam (the loop's optimiser) with ``lr`` and L2 ``weight_decay`` (paper search mid-points);
* training augmentation: flip, rotation ±45°, translation 10 %, scale 0.7-1.5, shear ±25°,
  bilinear resize; validation: resize only; per-image standardisation;
* selection/early stopping on ``val_auroc_malignant`` (the paper keeps each trial's epoch with
  the best validation AUROC). Also reported: ``val_auroc_benign`` and ``val_loss``.

Images are read and cropped once into an in-memory cache (``recipe.cache_size`` pixels);
``recipe.cache_path`` keeps it on disk between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.training.config import TrainConfig
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model
from breastscreen.ultrasound.bags import (
    BagDataset,
    Breast,
    ImageCache,
    ScaledAugment,
    breasts_from_exams,
    build_cache,
    collate_bags,
)
from breastscreen.ultrasound.recipe import BENIGN, MALIGNANT, DEFAULT_MODEL, us_mil_loss
from breastscreen.ultrasound.search import PAPER_SPACE, PAPER_TOP_K


@dataclass
class USOptions:
    """``recipe.*`` options of KIND us."""

    beta: float = 10**-1.5  # weight of the saliency L1 term
    top_t: float = 0.3  # top-t% pooling fraction of the saliency maps
    input_size: int = 256  # model input (paper: 256)
    cache_size: int = 288  # cached image side before augmentation/resize
    cache_path: str = ""  # .npz to keep the preprocessed images between runs ("" = memory only)
    max_images: int = 0  # cap of images per breast in training (0 = all)
    augment: bool = True
    augment_strength: float = 1.0  # 1 = the paper's rotation/shear/scale ranges; smaller = milder
    data_description: str = ""


def _load_breasts(path: str) -> list[Breast]:
    from breastscreen.training.datasets import load_exams

    breasts = breasts_from_exams(load_exams(path), require_labels=True)
    if not breasts:
        raise BreastscreenError(f"{path}: no ultrasound breast with images")
    return breasts


def _cache_for(breasts: list[Breast], opts: USOptions) -> ImageCache:
    existing = None
    if opts.cache_path and Path(opts.cache_path).is_file():
        existing = ImageCache.load(opts.cache_path)
        if existing.size != opts.cache_size:
            existing = None
    cache, _ = build_cache([im for b in breasts for im in b.images], opts.cache_size, existing=existing)
    if opts.cache_path:
        cache.save(opts.cache_path)
    return cache


def auroc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC through the evaluation module, NaN when a class is absent."""
    from breastscreen.evaluation.metrics import roc_auc

    return roc_auc(y, s) if 0 < y.sum() < y.size else float("nan")


def build_us(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND us (see the module docstring)."""
    opts: USOptions = cfg.recipe
    if not cfg.val_manifest:
        raise BreastscreenError("KIND us needs --val-manifest (model selection uses validation AUROC)")
    train_breasts = _load_breasts(cfg.manifest)
    val_breasts = _load_breasts(cfg.val_manifest)
    cache = _cache_for(train_breasts + val_breasts, opts)
    model = build_model(cfg, DEFAULT_MODEL, member, top_t=opts.top_t, input_size=opts.input_size)
    channels = int(getattr(model.config, "in_channels", 1))
    train_set = BagDataset(train_breasts, cache, opts.input_size, channels, train=opts.augment, seed=cfg.seed,
                           max_images=opts.max_images or None, augment=ScaledAugment(opts.augment_strength))
    val_set = BagDataset(val_breasts, cache, opts.input_size, channels, train=False)
    labels = np.array([b.targets for b in train_set.breasts])
    if labels[:, MALIGNANT].min() == labels[:, MALIGNANT].max():
        raise BreastscreenError(f"{cfg.manifest}: training breasts must include malignant and non-malignant ones")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        mask = batch["mask"].to(device)
        out = m(batch["images"].to(device), mask)
        return us_mil_loss(out, batch["labels"].to(device), mask, opts.beta)[0]

    def val_forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
        mask = batch["mask"].to(device)
        out = m(batch["images"].to(device), mask)
        l1 = (out["saliency"].abs().mean(dim=(3, 4)).sum(dim=2) * mask).sum(dim=1)
        probs = out["probs"].float().cpu().numpy()
        return [(probs[i], batch["labels"][i].numpy(), float(l1[i])) for i in range(probs.shape[0])]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, val_forward, collate_fn=collate_bags)
        p = np.stack([r[0] for r in rows])
        y = np.stack([r[1] for r in rows])
        pc = np.clip(p, 1e-7, 1 - 1e-7)
        bce = -(y * np.log(pc) + (1 - y) * np.log1p(-pc)).mean(axis=0).sum()
        return {
            "val_auroc_malignant": auroc_or_nan(y[:, MALIGNANT], p[:, MALIGNANT]),
            "val_auroc_benign": auroc_or_nan(y[:, BENIGN], p[:, BENIGN]),
            "val_loss": float(bce + opts.beta * np.mean([r[2] for r in rows])),
        }

    from breastscreen.training.datasets import describe_exams, load_exams

    meta = {
        "task": "ultrasound-breast",
        "family": "us",
        "input_size": opts.input_size,
        "cache_size": opts.cache_size,
        "channels": ["image"],
        "views": ["L-US", "R-US", "U-US"],
        "normalisation": "field-of-view crop, resize to input_size (bilinear), per-image standardisation",
        "labels": ["benign", "malignant"],
        "recipe": {"beta": opts.beta, "top_t": opts.top_t, "augment_strength": opts.augment_strength},
        "training_data": {**describe_exams(load_exams(cfg.manifest), cfg.manifest),
                          "n_breasts": len(train_set), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     collate_fn=collate_bags, metadata=meta)


register_recipe(Recipe(
    kind="us",
    description="ultrasound gated-attention MIL (Shen 2021): one breast = one bag of images",
    options_cls=USOptions,
    defaults={"model": DEFAULT_MODEL, "lr": 10**-4.5, "batch_size": 8, "weight_decay": 10**-4.75, "epochs": 50,
              "patience": 10, "monitor": "val_auroc_malignant", "monitor_mode": "max"},
    build=build_us,
    metric_help="val_auroc_malignant = breast-level malignant AUROC on the validation manifest",
    extra={"search_space": PAPER_SPACE, "search_top_k": PAPER_TOP_K},
))
