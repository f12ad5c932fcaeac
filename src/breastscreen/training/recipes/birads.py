"""KIND ``birads``: BI-RADS 0/1/2 pretraining of the four-view model (Geras et al. 2017; Wu et al. 2019 SI).

Recipe (defaults): model ``nyu-birads`` (the view-wise architecture with a 3-class head), batch
24, Adam lr 1e-5, every exam whose BI-RADS is 0, 1 or 2 once per epoch in a seeded random order
(exams with other BI-RADS values are left out and counted in the metadata), loss = 3-class
cross-entropy of each branch (CC, MLO) averaged over branches, random window jitter in training,
early stopping on the validation macAUC (mean of the one-vs-rest AUCs, ``val_macauc``) with
patience 20. The best checkpoint then initialises a cancer model: ``breastscreen train breast
... init_from=RUN_DIR/best.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from breastscreen.errors import BreastscreenError
from breastscreen.labels import BIRADS_CLASSES
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.data.predictions import PredictionRow
from breastscreen.training.datasets import NYU_JITTER_PX, MammoExamDataset, collate_exams, load_exams
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.breast import exam_metadata, exam_probs, exam_spec
from breastscreen.training.recipes.common import build_model, move_batch
from breastscreen.training.samplers import ShuffleSampler


@dataclass
class BiradsOptions:
    """``recipe.*`` options of KIND birads."""

    augment: bool = True
    jitter_px: float = bounded(NYU_JITTER_PX, ge=0, le=1000)
    train_fraction: float = bounded(1.0, gt=0, le=1)  # seeded subset of the training exams (training-size study)
    data_description: str = ""


def birads_loss(outputs: Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
    """3-class cross-entropy, per branch when the model has branches (averaged), else on ``logits``."""
    branches = outputs.get("branch_logits")
    if isinstance(branches, Mapping) and branches:
        return torch.stack([F.cross_entropy(z.float(), target) for z in branches.values()]).mean()
    return F.cross_entropy(outputs["logits"].float(), target)


def _usable(exams: list, source: str) -> tuple[list, int]:
    from breastscreen.training.datasets import birads_target

    keep = [e for e in exams if birads_target(e) is not None]
    if not keep:
        raise BreastscreenError(f"{source}: no exam has BI-RADS 0, 1 or 2 (needed by KIND birads)")
    return keep, len(exams) - len(keep)


def build_birads(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND birads (see the module docstring)."""
    from breastscreen.evaluation.metrics import macro_auc, one_vs_rest_aucs

    opts: BiradsOptions = cfg.recipe
    if not cfg.val_manifest:
        raise BreastscreenError("KIND birads needs --val-manifest (early stopping uses the validation macAUC)")
    from breastscreen.training.image_datasets import subsample_exams

    train_exams, dropped = _usable(load_exams(cfg.manifest), cfg.manifest)
    train_exams = subsample_exams(train_exams, opts.train_fraction, cfg.seed)
    val_exams, val_dropped = _usable(load_exams(cfg.val_manifest), cfg.val_manifest)
    model = build_model(cfg, "nyu-birads", member, in_channels=1)
    spec = exam_spec(cfg, model, "birads", ["image"], opts.jitter_px, train_exams, cfg.manifest)
    train_set = MammoExamDataset(train_exams, spec, None, augment=opts.augment, seed=cfg.seed,
                                 cache_mb=cfg.cache_mb, source=cfg.manifest)
    val_set = MammoExamDataset(val_exams, spec, None, augment=False, seed=cfg.seed, cache_mb=cfg.cache_mb,
                               source=cfg.val_manifest)

    def forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        b = move_batch(batch, device)
        return m(b["views"], b["present"])

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        return birads_loss(forward(m, batch, device), batch["target"].to(device))

    def val_forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
        probs = exam_probs(m, batch, device)
        return [(probs[i], int(batch["target"][i])) for i in range(len(probs))]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, val_forward, collate_fn=collate_exams)
        probs = np.stack([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        ctx.record_predictions(spec.value_columns, [PredictionRow(val_set.exams[i].exam_id, spec.postprocess(p))
                                                    for i, p in enumerate(probs)])
        out = {"val_macauc": macro_auc(y, probs), "val_accuracy": float(np.mean(probs.argmax(1) == y)),
               "val_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))}
        for k, auc in zip(BIRADS_CLASSES, one_vs_rest_aucs(y, probs)):
            out[f"val_auc_birads{k}"] = float(auc)
        return out

    meta = exam_metadata(cfg, train_set, ["image"], "birads")
    meta["classes"] = [f"BI-RADS {c}" for c in BIRADS_CLASSES]
    meta["training_data"]["excluded_exams_other_birads"] = dropped
    meta["training_data"]["train_fraction"] = opts.train_fraction
    meta["validation_excluded_exams_other_birads"] = val_dropped
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     sampler=ShuffleSampler(len(train_set), seed=cfg.seed), collate_fn=collate_exams, metadata=meta,
                     spec=spec)


register_recipe(Recipe(
    kind="birads",
    description="BI-RADS 0/1/2 pretraining of the four-view model (initialises the cancer model's columns)",
    options_cls=BiradsOptions,
    defaults={"model": "nyu-birads", "lr": 1e-5, "batch_size": 24, "epochs": 100, "patience": 20,
              "monitor": "val_macauc", "monitor_mode": "max"},
    build=build_birads,
    metric_help="val_macauc = mean one-vs-rest AUC over BI-RADS 0/1/2",
))
