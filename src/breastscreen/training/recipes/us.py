"""KIND ``us`` of ``breastscreen train`` / ``breastscreen search``: the ultrasound recipe (Shen et al. 2021).

Recipe (defaults; every value can be overridden with ``KEY=VALUE``):

* model ``us-mil`` (ResNet-18 saliency + gated-attention MIL); its ``top_t`` and
  ``input_size`` come from ``recipe.top_t`` and ``recipe.input_size``;
* one example = one breast (all its images, padded per batch with a mask);
* inputs built by the model's spec (:class:`breastscreen.specs.USSpec`, stored in every
  checkpoint): 8-bit grey, burned-in annotations (calipers, text, marks) detected and
  inpainted (``recipe.remove_annotations``, default true), field-of-view crop that never cuts
  tissue (``recipe.crop``, default ``safe``; ``v1`` = the crop of models trained before),
  area resize to ``recipe.prepare_size``, then
  in training the paper's flip, rotation ±45°, translation 10 %, scale 0.7-1.5, shear ±25°
  (ranges scaled by ``recipe.augment_strength``), bilinear resize to ``input_size``,
  per-image standardisation; validation and ``predict``: resize only;
* loss = BCE(benign) + BCE(malignant) + ``recipe.beta`` * sum_k |A_k|
  (:func:`~breastscreen.training.losses.us_mil_loss`); with ``recipe.lesion_weight`` > 0 (not
  in the paper) plus that weight times a class-balanced BCE between each saliency map and its
  class's lesion masks (:func:`~breastscreen.training.losses.us_lesion_loss`) on the training
  images that carry masks (``images[].masks`` in the manifest), moved by the same augmentation;
* Adam with ``lr`` and L2 ``weight_decay`` (paper search mid-points);
* selection/early stopping on ``val_auroc_malignant`` (the paper keeps each trial's epoch with
  the best validation AUROC). Also reported: ``val_auroc_benign`` and ``val_loss``.

Images are prepared once into an in-memory cache; ``recipe.cache_path`` keeps it on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastscreen.data.bags import Breast, breasts_from_exams
from breastscreen.data.predictions import PredictionRow
from breastscreen.errors import BreastscreenError
from breastscreen.labels import BREAST_LABELS
from breastscreen.specs import USSpec
from breastscreen.training.bag_dataset import BagDataset, ImageCache, build_cache, collate_bags
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.training.datasets import describe_exams, load_exams
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.losses import US_BENIGN, US_MALIGNANT, us_lesion_loss, us_mil_loss
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model

DEFAULT_MODEL = "us-mil"

# The paper's random-search space (keys are configuration keys of ``breastscreen train us``).
PAPER_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 10**-5.5, "high": 10**-4.0, "scale": "log"},
    "recipe.beta": {"low": 10**-3.0, "high": 10**0.5, "scale": "log"},
    "weight_decay": {"low": 10**-6.0, "high": 10**-3.5, "scale": "log"},
    "recipe.top_t": {"low": 0.1, "high": 0.5, "scale": "linear"},
}
PAPER_TOP_K = 3


@dataclass
class USOptions:
    """``recipe.*`` options of KIND us."""

    beta: float = bounded(10**-1.5, ge=0)  # weight of the saliency L1 term
    top_t: float = bounded(0.3, gt=0, le=1)  # top-t% pooling fraction of the saliency maps
    input_size: int = bounded(256, ge=32, le=1024)  # model input (paper: 256)
    prepare_size: int = bounded(288, ge=32, le=2048)  # prepared (cached) image side before augmentation/resize
    cache_path: str = ""  # .npz to keep the prepared images between runs ("" = memory only)
    max_images: int = bounded(0, ge=0)  # cap of images per breast in training (0 = all)
    augment: bool = True
    augment_strength: float = bounded(1.0, ge=0, le=1)  # 1 = the paper's ranges; smaller = milder
    remove_annotations: bool = True  # inpaint burned-in calipers/text before the crop (new models)
    crop: str = "safe"  # field-of-view crop: "safe" (never cuts tissue) or "v1" (legacy models)
    lesion_weight: float = bounded(0.0, ge=0)  # weight of the lesion-mask saliency term (0 = the paper's weak labels)
    data_description: str = ""


def _load_breasts(path: str) -> list[Breast]:
    breasts = breasts_from_exams(load_exams(path), require_labels=True)
    if not breasts:
        raise BreastscreenError(f"{path}: no ultrasound breast with images")
    return breasts


def _cache_for(breasts: list[Breast], spec: USSpec, cache_path: str) -> ImageCache:
    existing = None
    if cache_path and Path(cache_path).is_file():
        try:
            existing = ImageCache.load(cache_path)
        except BreastscreenError:
            existing = None  # an older cache format: rebuilt below
    cache, _ = build_cache([im for b in breasts for im in b.images], spec, existing=existing)
    if cache_path:
        cache.save(cache_path)
    return cache


def auroc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC through the evaluation module, NaN when a class is absent."""
    from breastscreen.evaluation.metrics import roc_auc

    return roc_auc(y, s) if 0 < y.sum() < y.size else float("nan")


def bag_rows(breasts: list[Breast], probs: np.ndarray) -> list[PredictionRow]:
    """Per-exam rows of the predictions table from per-breast (benign, malignant) probabilities."""
    rows: dict[str, PredictionRow] = {}
    for b, p in zip(breasts, probs):
        row = rows.setdefault(b.exam_id, PredictionRow(b.exam_id, {c: None for c in BREAST_LABELS}, {"breasts": {}}))
        if b.side in ("L", "R"):
            name = "left" if b.side == "L" else "right"
            row.values[f"{name}_benign"], row.values[f"{name}_malignant"] = float(p[0]), float(p[1])
        row.details["breasts"][b.side or "U"] = {"benign": float(p[0]), "malignant": float(p[1])}
    return list(rows.values())


def build_us(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND us (see the module docstring)."""
    opts: USOptions = cfg.recipe
    if not cfg.val_manifest:
        raise BreastscreenError("KIND us needs --val-manifest (model selection uses validation AUROC)")
    train_breasts = _load_breasts(cfg.manifest)
    val_breasts = _load_breasts(cfg.val_manifest)
    model = build_model(cfg, DEFAULT_MODEL, member, top_t=opts.top_t, input_size=opts.input_size)
    try:
        spec = USSpec(input_size=opts.input_size, prepare_size=opts.prepare_size,
                      in_channels=int(getattr(model.config, "in_channels", 1)), augment_strength=opts.augment_strength,
                      remove_annotations=opts.remove_annotations, crop=opts.crop)
    except ValueError as exc:
        raise BreastscreenError(f"recipe options do not make a valid ultrasound spec: {exc}") from None
    cache = _cache_for(train_breasts + val_breasts, spec, opts.cache_path)
    train_set = BagDataset(train_breasts, cache, spec, train=opts.augment, seed=cfg.seed,
                           max_images=opts.max_images or None, lesion_masks=opts.lesion_weight > 0)
    if opts.lesion_weight > 0 and not any(x is not None for bag in train_set.lesions for x in bag):
        raise BreastscreenError(f"{cfg.manifest}: recipe.lesion_weight > 0 needs lesion masks in the training "
                                "manifest (images[].masks), and none was found")
    val_set = BagDataset(val_breasts, cache, spec, train=False)
    labels = np.array([b.targets for b in train_set.breasts])
    if labels[:, US_MALIGNANT].min() == labels[:, US_MALIGNANT].max():
        raise BreastscreenError(f"{cfg.manifest}: training breasts must include malignant and non-malignant ones")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        mask = batch["mask"].to(device)
        out = m(batch["images"].to(device), mask)
        loss = us_mil_loss(out, batch["labels"].to(device), mask, opts.beta)[0]
        if opts.lesion_weight > 0:
            loss = loss + opts.lesion_weight * us_lesion_loss(out["saliency"], batch["lesions"], batch["lesion_known"])
        return loss

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
        ctx.record_predictions(BREAST_LABELS, bag_rows(val_set.breasts[: len(rows)], p))
        pc = np.clip(p, 1e-7, 1 - 1e-7)
        bce = -(y * np.log(pc) + (1 - y) * np.log1p(-pc)).mean(axis=0).sum()
        return {
            "val_auroc_malignant": auroc_or_nan(y[:, US_MALIGNANT], p[:, US_MALIGNANT]),
            "val_auroc_benign": auroc_or_nan(y[:, US_BENIGN], p[:, US_BENIGN]),
            "val_loss": float(bce + opts.beta * np.mean([r[2] for r in rows])),
        }

    meta = {
        "task": "ultrasound-breast",
        "input_size": opts.input_size,
        "channels": ["image"],
        "views": ["L-US", "R-US", "U-US"],
        "normalisation": (("annotation removal, " if opts.remove_annotations else "")
                          + f"8-bit field-of-view crop ({opts.crop}), area resize to prepare_size, bilinear resize "
                          "to input_size, per-image standardisation"),
        "labels": ["benign", "malignant"],
        "recipe": {"beta": opts.beta, "top_t": opts.top_t, "augment_strength": opts.augment_strength,
                   "lesion_weight": opts.lesion_weight},
        "training_data": {**describe_exams(load_exams(cfg.manifest), cfg.manifest),
                          "n_breasts": len(train_set), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     collate_fn=collate_bags, metadata=meta, spec=spec)


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
