"""KIND ``context``: the global context network of the lesion classifier (Wu et al. 2020).

The globally-aware classifier's global module (``gmic-global``: a ResNet-22-style backbone at
stride 64, a 1x1 convolution and sigmoid to two saliency maps, benign and malignant, and top-t%
pooling to image-level probabilities), trained on whole images with image-level labels and
binary cross-entropy. Its saliency maps are the global context ``f_agg`` sees.

* input: the whole preprocessed image resized to ``recipe.image_size`` (default the paper's
  2944 x 1920 times the manifest's scale, rounded to a multiple of 64 so that the saliency grid
  covers the image exactly: 46 x 30 at full resolution), standardised; the all-convolutional
  classifier's flips/rotation/shear augmentation in training (``recipe.augment``);
* image-level labels: an image with lesion records is positive for each outcome among its
  lesions; for the other outcome it is negative when its breast is negative for it and unknown
  otherwise (the finding may be outside this view's annotation); an image without lesion
  records takes its breast's labels. Unknown targets are left out of the loss and the metrics;
* Adam at ``lr`` (default 1e-5 as the paper's range [1e-5, 1e-4]), batch 4 by default (CPU);
* selection by ``val_auc``: mean of the validation per-image benign and malignant AUCs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from breastscreen.data.types import Exam, view_side
from breastscreen.errors import BreastscreenError
from breastscreen.labels import HEATMAP_CHANNELS
from breastscreen.specs import ImageSpec
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.training.datasets import check_preprocessed, describe_exams, finite_mean, load_exams
from breastscreen.training.image_datasets import WholeImageDataset, subsample_exams
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model, check_input_fits, move_batch

PAPER_INPUT = (2944, 1920)


@dataclass
class ContextOptions:
    """``recipe.*`` options of KIND context."""

    image_size: list[int] = field(default_factory=list)  # [] = 2944 x 1920 times the scale, multiple of 64
    augment: bool = True
    train_fraction: float = bounded(1.0, gt=0, le=1)
    data_description: str = ""


def default_context_size(scale: float) -> tuple[int, int]:
    """The paper's 2944 x 1920 input at ``scale``, rounded to a multiple of 64 (at least 64)."""
    return tuple(max(64, int(round(v * scale / 64.0)) * 64) for v in PAPER_INPUT)  # type: ignore[return-value]


def image_targets(exam: Exam, view: str, index: int) -> tuple[int, int]:
    """(benign, malignant) image-level targets, -1 when unknown (rules in the module docstring)."""
    from breastscreen.data.lesions import image_lesions

    breast = exam.label(view_side(view) or "U")
    lesions = [r for r in image_lesions(exam, view, index, exam.views[view][index]) if r.outcome]
    out = []
    for name in HEATMAP_CHANNELS:
        label = getattr(breast, name)
        if not lesions:
            out.append(-1 if label is None else int(label))
        elif any(r.outcome == name for r in lesions):
            out.append(1)
        else:
            out.append(0 if label == 0 else -1)
    return out[0], out[1]


class ContextImageDataset(WholeImageDataset):
    """Whole images with (benign, malignant) image-level targets."""

    def __init__(self, exams: Sequence[Exam], spec: ImageSpec, augment: bool = False, seed: int = 0,
                 cache_mb: float = 0.0, source: str = "manifest") -> None:
        super().__init__(exams, spec, augment=augment, seed=seed, cache_mb=cache_mb, source=source)
        self.targets2 = np.array([image_targets(e, v, k) for e, v, k in self.items], dtype=np.int64).reshape(-1, 2)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["target"] = torch.from_numpy(self.targets2[i])
        return item


def build_context(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND context (see the module docstring)."""
    from breastscreen.evaluation.metrics import roc_auc

    opts: ContextOptions = cfg.recipe
    if not cfg.val_manifest:
        raise BreastscreenError("KIND context needs --val-manifest (model selection uses validation AUC)")
    train_exams = subsample_exams(load_exams(cfg.manifest), opts.train_fraction, cfg.seed)
    val_exams = load_exams(cfg.val_manifest)
    scale = check_preprocessed(train_exams, cfg.manifest)
    if check_preprocessed(val_exams, cfg.val_manifest) != scale:
        raise BreastscreenError(f"{cfg.val_manifest}: validation images must be preprocessed at scale {scale}")
    if opts.image_size and len(opts.image_size) != 2:
        raise BreastscreenError(f"recipe.image_size must be [height, width], got {opts.image_size}")
    size = tuple(int(v) for v in opts.image_size) if opts.image_size else default_context_size(scale)
    spec = ImageSpec(kind="saliency", input="resize", scale=scale, image_size=size, aggregation="max")
    model = build_model(cfg, "gmic-global", member, in_channels=1)
    check_input_fits(model, (2, 1, *size), f"an image of size {list(size)}")
    train_set = ContextImageDataset(train_exams, spec, augment=opts.augment, seed=cfg.seed, cache_mb=cfg.cache_mb,
                                    source=cfg.manifest)
    val_set = ContextImageDataset(val_exams, spec, cache_mb=cfg.cache_mb, source=cfg.val_manifest)
    if not (train_set.targets2 == 1).any():
        raise BreastscreenError(f"{cfg.manifest}: no image has a positive benign or malignant label")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        b = move_batch(batch, device)
        probs = m(b["x"])["probs"].float().clamp(1e-6, 1 - 1e-6)
        known = b["target"] >= 0
        if not bool(known.any()):
            return probs.sum() * 0.0  # keeps the graph; nothing to learn from this batch
        target = b["target"].clamp_min(0).float()
        return torch.nn.functional.binary_cross_entropy(probs[known], target[known])

    def val_forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
        probs = m(batch["x"].to(device))["probs"].float().cpu().numpy()
        return [(p, t) for p, t in zip(probs, batch["target"].numpy())]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, val_forward)
        p = np.stack([r[0] for r in rows])
        y = np.stack([r[1] for r in rows])
        out = {}
        for j, name in enumerate(HEATMAP_CHANNELS):
            known = y[:, j] >= 0
            yj = y[known, j]
            out[f"val_image_auc_{name}"] = roc_auc(yj, p[known, j]) if 0 < yj.sum() < len(yj) else float("nan")
        out["val_auc"] = finite_mean([out[f"val_image_auc_{n}"] for n in HEATMAP_CHANNELS])
        return out

    meta = {
        "task": "context", "outputs": list(HEATMAP_CHANNELS), "image_size": list(size),
        "image_labels": "lesion outcomes of the image, else its breast's labels (see breastscreen.training.recipes.context)",
        "training_data": {**describe_exams(train_exams, cfg.manifest), "train_fraction": opts.train_fraction,
                          "n_images": len(train_set), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     metadata=meta, spec=spec)


register_recipe(Recipe(
    kind="context",
    description="global context network of the lesion classifier (Wu 2020): saliency maps from image-level labels",
    options_cls=ContextOptions,
    defaults={"model": "gmic-global", "lr": 1e-5, "batch_size": 4, "epochs": 50, "patience": 10,
              "monitor": "val_auc", "monitor_mode": "max"},
    build=build_context,
    metric_help="val_auc = mean of validation per-image benign and malignant AUCs",
))
