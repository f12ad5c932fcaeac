"""KIND ``breast``: the breast-level cancer model (Wu et al. 2019 SI), image-only or image + heatmaps.

Recipe (defaults; every value can be overridden):

* model ``nyu-viewwise`` (four ResNet-22 columns, view-wise head), 1 input channel, or 3 with
  ``--heatmaps DIR`` (image + benign + malignant heatmaps of the patch classifier);
* each epoch shows every exam with a biopsy (any positive label) plus an equal number of exams
  without, drawn afresh each epoch (:class:`~breastscreen.training.samplers.BiopsyBalancedSampler`);
* Adam, learning rate 1e-5, batch 4, L2 weight decay 10^-4.5;
* loss: cross-entropy of each of the four binary labels averaged over the labels; for heads
  with CC and MLO branches (view-wise, image-wise) each branch's own prediction is scored and
  the branch losses are averaged (:func:`~breastscreen.training.losses.breast_label_loss`);
* training augmentation: random window jitter (up to 100 full-resolution pixels, scaled);
  validation: the stored window only;
* early stopping on the mean of the four validation AUCs (``val_auc``) with patience 20; the
  best checkpoint is kept. Also reported: ``val_auc_benign`` / ``val_auc_malignant`` (AUC over
  all breasts pooled) and ``val_loss`` (binary cross-entropy of the final probabilities).

``init_from=BIRADS_CHECKPOINT`` initialises the columns from a BI-RADS model (KIND ``birads``),
duplicating first-layer kernels into the heatmap channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from breastscreen.data.predictions import PredictionRow
from breastscreen.data.types import MG_VIEWS
from breastscreen.errors import BreastscreenError
from breastscreen.labels import BREAST_LABELS, HEATMAP_CHANNELS, NYU_WINDOWS
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.specs import MultiViewSpec
from breastscreen.training.datasets import (
    NYU_JITTER_PX,
    HeatmapLookup,
    MammoExamDataset,
    check_preprocessed,
    collate_exams,
    describe_exams,
    finite_mean,
    group_mean,
    load_exams,
)
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.losses import breast_label_loss
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model, move_batch
from breastscreen.training.samplers import BiopsyBalancedSampler


@dataclass
class BreastOptions:
    """``recipe.*`` options of KIND breast."""

    heatmaps: str = ""  # heatmap folder of the training exams (empty = image-only model)
    val_heatmaps: str = ""  # heatmap folder of the validation exams (default: ``heatmaps``)
    patch_model: str = ""  # patch model that made the heatmaps (recorded so predict can remake them)
    augment: bool = True
    jitter_px: float = bounded(NYU_JITTER_PX, ge=0, le=1000)
    negatives_per_positive: float = bounded(1.0, gt=0)
    data_description: str = ""


def _forward(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    b = move_batch(batch, device)
    return model(b["views"], b["present"])


def exam_probs(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> np.ndarray:
    """Per-exam probabilities of a batch: the model's rows of each exam averaged (as predict does)."""
    probs = _forward(model, batch, device)["probs"].float()
    return group_mean(probs, batch["group"], len(batch["index"])).cpu().numpy()


def exam_spec(cfg: TrainConfig, model: torch.nn.Module, task: str, channels: list[str], jitter_px: float,
              manifest_exams: list, source: str) -> MultiViewSpec:
    """The spec of a four-view model trained on ``manifest_exams`` (scale from their preprocessing)."""
    nyu = hasattr(model.config, "head")
    return MultiViewSpec(kind="nyu" if nyu else "mvdcn", task=task, window="window" if nyu else "mvdcn_window",
                         scale=check_preprocessed(manifest_exams, source), channels=tuple(channels),
                         jitter_px=jitter_px)


def breast_metrics(probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Validation metrics from probabilities and labels [N, 4] (BREAST_LABELS order; -1 = unknown)."""
    from breastscreen.evaluation.metrics import roc_auc

    out: dict[str, float] = {}
    aucs = []
    for j, name in enumerate(BREAST_LABELS):
        known = target[:, j] >= 0
        auc = roc_auc(target[known, j], probs[known, j]) if known.any() else float("nan")
        out[f"val_auc_{name}"] = auc
        aucs.append(auc)
    out["val_auc"] = finite_mean(aucs)
    for kind, cols in (("benign", [0, 2]), ("malignant", [1, 3])):
        y = target[:, cols].reshape(-1)
        s = probs[:, cols].reshape(-1)
        known = y >= 0
        out[f"val_auc_{kind}"] = roc_auc(y[known], s[known]) if known.any() else float("nan")
    return out


def _val_forward(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
    probs = exam_probs(model, batch, device)
    target = batch["target"].numpy()
    return [(probs[i], target[i]) for i in range(len(target))]


def probs_bce(probs: np.ndarray, target: np.ndarray) -> float:
    """Binary cross-entropy of final probabilities over the known labels (the reported ``val_loss``)."""
    known = target >= 0
    p = np.clip(probs[known], 1e-7, 1 - 1e-7)
    y = target[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if known.any() else float("nan")


def exam_metadata(cfg: TrainConfig, train_set: MammoExamDataset, channels: list[str], task: str) -> dict[str, Any]:
    """Checkpoint metadata shared by the breast and BI-RADS recipes."""
    from breastscreen.preprocess.mammo import window_size

    scale = train_set.scale
    return {
        "task": task,
        "scale": scale,
        "spacing_mm": 0.1 / scale,
        "input_size": {angle: list(window_size(angle, scale)) for angle in NYU_WINDOWS},
        "channels": channels,
        "views": list(MG_VIEWS),
        "window": "preprocessing['window'] (NYU window at this scale, anchored at the chest wall)",
        "normalisation": "image channel standardised over the window (mean 0, std 1); heatmap channels are "
                         "probabilities in [0, 1] cut with the same window",
        "labels": list(BREAST_LABELS) if task == "breast" else None,
        "training_data": {**describe_exams(train_set.exams, cfg.manifest),
                          "description": getattr(cfg.recipe, "data_description", "")},
    }


def build_breast(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND breast (see the module docstring)."""
    opts: BreastOptions = cfg.recipe
    if not cfg.val_manifest:
        raise BreastscreenError("KIND breast needs --val-manifest (early stopping and model selection use it)")
    with_maps = bool(opts.heatmaps)
    train_lookup = HeatmapLookup(opts.heatmaps) if with_maps else None
    val_lookup = HeatmapLookup(opts.val_heatmaps or opts.heatmaps) if with_maps else None
    train_exams = load_exams(cfg.manifest)
    val_exams = load_exams(cfg.val_manifest)
    channels = ["image"] + (list(HEATMAP_CHANNELS) if with_maps else [])
    model = build_model(cfg, "nyu-viewwise", member, in_channels=len(channels))
    if not hasattr(model.config, "head"):
        raise BreastscreenError(f"KIND breast trains the NYU four-view cancer models, not {cfg.model!r}")
    spec = exam_spec(cfg, model, "cancer", channels, opts.jitter_px, train_exams, cfg.manifest)
    train_set = MammoExamDataset(train_exams, spec, train_lookup, augment=opts.augment, seed=cfg.seed,
                                 cache_mb=cfg.cache_mb, source=cfg.manifest)
    val_set = MammoExamDataset(val_exams, spec, val_lookup, augment=False, seed=cfg.seed,
                               cache_mb=cfg.cache_mb, source=cfg.val_manifest)
    positive = train_set.positive()
    if not positive.any():
        raise BreastscreenError(f"{cfg.manifest}: no exam has a positive label; the breast model needs biopsied exams")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        return breast_label_loss(_forward(m, batch, device), batch["target"].to(device))

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, _val_forward, collate_fn=collate_exams)
        probs = np.stack([r[0] for r in rows])
        target = np.stack([r[1] for r in rows])
        ctx.record_predictions(spec.value_columns, [PredictionRow(val_set.exams[i].exam_id, spec.postprocess(p))
                                                    for i, p in enumerate(probs)])
        return {"val_loss": probs_bce(probs, target), **breast_metrics(probs, target)}

    meta = exam_metadata(cfg, train_set, channels, "breast")
    if with_maps:
        # ``patch_model`` (top level) lets `breastscreen predict` make the heatmaps itself.
        meta["patch_model"] = opts.patch_model or None
        meta["heatmaps"] = {"channels": list(HEATMAP_CHANNELS), "patch_model": opts.patch_model or None,
                            "source": "breastscreen heatmaps (sliding-window patch classifier)"}
    sampler = BiopsyBalancedSampler(positive, seed=cfg.seed, ratio=opts.negatives_per_positive)
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     sampler=sampler, collate_fn=collate_exams, metadata=meta, spec=spec)


register_recipe(Recipe(
    kind="breast",
    description="breast-level cancer model (NYU view-wise), image-only or image+heatmaps (--heatmaps DIR)",
    options_cls=BreastOptions,
    defaults={"model": "nyu-viewwise", "lr": 1e-5, "batch_size": 4, "weight_decay": 10 ** -4.5, "epochs": 100,
              "patience": 20, "monitor": "val_auc", "monitor_mode": "max"},
    build=build_breast,
    metric_help="val_auc = mean of the four validation AUCs",
))
