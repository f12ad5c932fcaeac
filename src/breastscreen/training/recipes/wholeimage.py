"""KINDs ``roi-patch`` and ``whole-image``: the all-convolutional classifier (Shen et al. 2019).

Lesion annotations are needed only for the first stage; afterwards a whole-image classifier
trains — and transfers to another dataset — from image-level labels alone.

``roi-patch`` (defaults; every value can be overridden):

* patches from images prepared like the whole-image input (the preprocessed breast image resized
  to ``recipe.image_size``, 1152 x 896 in the paper), side ``recipe.patch_size`` (224 at
  1152 x 896, scaled otherwise); ``recipe.patch_set=S10`` (10 patches per ROI with overlap
  >= 0.9 plus as many background patches from the same image) or ``S1`` (one patch centred on
  each ROI); 5 classes (background, benign/malignant mass, benign/malignant calcification), or 3
  (background, benign, malignant) with ``recipe.classes=3`` or automatically when a training
  lesion has no mass/calcification type;
* model ``resnet50-patch`` (or ``vgg16-patch``) with global average pooling; Adam, batch 32,
  cross-entropy with class weights balanced within each batch; the paper's augmentation;
* schedule: from pretrained weights (``init_from=``) three stages — the last layer 3 epochs at
  1e-3, the top layers (ResNet: the last stage, VGG: the last block; the paper's top 46 / 11
  Keras layers) 10 epochs at 1e-4, all layers 37 epochs at 1e-5; from scratch a constant 1e-3;
* selection by validation patch accuracy (``val_accuracy``).

``whole-image``:

* model ``allconv-resnet50``: the roi-patch checkpoint given as ``init_from`` becomes the trunk
  (its layers copied), then the top blocks (``model_args.top_blocks``; default two
  ``[512-512-2048]x1`` blocks with a stride-2 first convolution), global average pooling and 2
  outputs; ``init_from`` a whole-image checkpoint fine-tunes it (transfer to another dataset with
  image labels only); no ``init_from`` trains from scratch;
* input: the whole preprocessed image resized to ``recipe.image_size`` (taken from the roi-patch
  checkpoint), the paper's augmentation in training, no augmentation in validation; target = the
  breast's malignancy label;
* schedule from a roi-patch checkpoint: top layers 30 epochs at 1e-4 with weight decay 1e-3,
  then all layers 20 epochs at 1e-5 with weight decay 1e-2; otherwise a constant ``lr``; batch 2;
* selection by validation per-image AUC (``val_image_auc``); also the breast-level AUC of the
  spec's aggregation (``val_auc``, ``recipe.aggregation`` mean or max).

Both take ``recipe.train_fraction`` (a seeded subset of the training exams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from breastscreen.data.predictions import PredictionRow
from breastscreen.errors import BreastscreenError
from breastscreen.labels import PATCH_CLASSES_5
from breastscreen.specs import ImageSpec, RoiPatchSpec
from breastscreen.specs.wholeimage import PATCH_CLASSES_3, default_patch_size
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.training.datasets import check_preprocessed, describe_exams, load_exams
from breastscreen.training.image_datasets import (
    RoiPatchDataset,
    WholeImageDataset,
    batch_balanced_cross_entropy,
    roi_sources,
    subsample_exams,
    three_class,
)
from breastscreen.training.loop import DistInfo, EvalContext, Stage, TrainTask
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model, check_input_fits, move_batch, write_skipped_lesions


@dataclass
class RoiPatchOptions:
    """``recipe.*`` options of KIND roi-patch."""

    image_size: list[int] = field(default_factory=lambda: [1152, 896])
    patch_size: int = bounded(0, ge=0)  # 0 = 224 scaled to image_size
    patch_set: str = "S10"  # S1 | S10
    classes: str = "auto"  # auto | 5 | 3
    min_overlap: float = bounded(0.9, gt=0, le=1)
    augment: bool = True
    train_fraction: float = bounded(1.0, gt=0, le=1)
    stage_epochs: list[int] = field(default_factory=lambda: [3, 10, 37])
    stage_lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-5])
    data_description: str = ""


@dataclass
class WholeImageOptions:
    """``recipe.*`` options of KIND whole-image."""

    image_size: list[int] = field(default_factory=lambda: [1152, 896])  # used without a roi-patch init_from
    aggregation: str = "mean"  # mean | max over a breast's images
    augment: bool = True
    train_fraction: float = bounded(1.0, gt=0, le=1)
    stage_epochs: list[int] = field(default_factory=lambda: [30, 20])
    stage_lrs: list[float] = field(default_factory=lambda: [1e-4, 1e-5])
    stage_weight_decays: list[float] = field(default_factory=lambda: [1e-3, 1e-2])
    data_description: str = ""


def _top_layers(model: torch.nn.Module) -> Callable[[str], bool]:
    """Parameter names of a patch classifier's top layers (its last stage and head)."""
    for attr in ("layers", "stages"):  # ResNet stages / VGG blocks
        if hasattr(model, attr):
            last = f"{attr}.{len(getattr(model, attr)) - 1}."
            return lambda name: name.startswith(last) or name.startswith("head.")
    raise BreastscreenError(f"{type(model).__name__} has no stages to unfreeze in order; use a ResNet or VGG patch model")


def _lesion_kinds_known(exams: list) -> bool:
    kinds = [m.kind for e in exams for _, im in e.iter_images() for m in im.masks]
    return bool(kinds) and all((k or "").lower() in ("mass", "calcification", "calc") or
                               (k or "").lower().startswith("calc") for k in kinds)


def build_roi_patch(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND roi-patch (see the module docstring)."""
    from breastscreen.preprocess.patches import roi_patch_set

    opts: RoiPatchOptions = cfg.recipe
    if opts.patch_set not in ("S1", "S10"):
        raise BreastscreenError(f"recipe.patch_set must be S1 or S10, got {opts.patch_set!r}")
    if opts.classes not in ("auto", "5", "3"):
        raise BreastscreenError(f"recipe.classes must be auto, 5 or 3, got {opts.classes!r}")
    if not cfg.val_manifest:
        raise BreastscreenError("KIND roi-patch needs --val-manifest (model selection uses validation accuracy)")
    train_exams = subsample_exams(load_exams(cfg.manifest), opts.train_fraction, cfg.seed)
    val_exams = load_exams(cfg.val_manifest)
    scale = check_preprocessed(train_exams, cfg.manifest)
    size = (int(opts.image_size[0]), int(opts.image_size[1]))
    five = opts.classes == "5" or (opts.classes == "auto" and _lesion_kinds_known(train_exams))
    classes = tuple(PATCH_CLASSES_5) if five else PATCH_CLASSES_3
    spec = RoiPatchSpec(scale=scale, image_size=size, patch_size=opts.patch_size or default_patch_size(size),
                        classes=classes)
    label_of = None if five else three_class
    n_per_roi = 1 if opts.patch_set == "S1" else 10
    train_src, val_src = roi_sources(train_exams, spec), roi_sources(val_exams, spec)
    train_pset = roi_patch_set(train_src, n_per_roi, cfg.seed, patch_size=spec.patch_size,
                               min_overlap=opts.min_overlap, label_of=label_of)
    val_pset = roi_patch_set(val_src, n_per_roi, cfg.seed + 1, patch_size=spec.patch_size,
                             min_overlap=opts.min_overlap, label_of=label_of)
    write_skipped_lesions(Path(cfg.out), [tuple(s.split(": ", 1)) if ": " in s else (s, "") for s in train_pset.skipped])
    for name, pset, src in (("training", train_pset, cfg.manifest), ("validation", val_pset, cfg.val_manifest)):
        if not any(p.label != 0 for p in pset.specs):
            raise BreastscreenError(f"{src}: no {name} image has a usable lesion ROI for roi-patch sampling "
                                    f"({len(pset.skipped)} lesion(s) skipped; see skipped_lesions.csv)")
    train_set = RoiPatchDataset(train_src, train_pset, augment=opts.augment, seed=cfg.seed)
    val_set = RoiPatchDataset(val_src, val_pset)
    model = build_model(cfg, "resnet50-patch", member, num_classes=len(classes))
    check_input_fits(model, (2, 1, spec.patch_size, spec.patch_size), f"a {spec.patch_size}-px ROI patch")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        b = move_batch(batch, device)
        return batch_balanced_cross_entropy(m(b["x"])["logits"], b["target"])

    def val_forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
        probs = torch.softmax(m(batch["x"].to(device))["logits"].float(), dim=1).cpu().numpy()
        return list(zip(probs, batch["target"].numpy()))

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        from breastscreen.evaluation.metrics import roc_auc

        rows = ctx.predict(m, val_set, val_forward)
        p = np.stack([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        malignant = [i for i, c in enumerate(classes) if "malignant" in c]
        ym = np.isin(y, malignant).astype(int)
        out = {"val_accuracy": float(np.mean(p.argmax(1) == y))}
        out["val_malignant_auc"] = roc_auc(ym, p[:, malignant].sum(1)) if 0 < ym.sum() < len(ym) else float("nan")
        return out

    stages: tuple[Stage, ...] = ()
    if cfg.init_from:
        if len(opts.stage_epochs) != 3 or len(opts.stage_lrs) != 3:
            raise BreastscreenError("recipe.stage_epochs and recipe.stage_lrs need 3 values (last layer, top, all)")
        top = _top_layers(model)
        stages = (Stage(opts.stage_epochs[0], opts.stage_lrs[0], lambda n: n.startswith("head."), "last layer"),
                  Stage(opts.stage_epochs[1], opts.stage_lrs[1], top, "top layers"),
                  Stage(opts.stage_epochs[2], opts.stage_lrs[2], None, "all layers"))
    meta = {
        "task": "roi-patch", "classes": list(classes), "patch_set": opts.patch_set,
        "n_train_patches": len(train_set), "n_val_patches": len(val_set),
        "skipped_lesions": len(train_pset.skipped),
        "training_data": {**describe_exams(train_exams, cfg.manifest), "train_fraction": opts.train_fraction,
                          "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     metadata=meta, spec=spec, stages=stages)


def _whole_image_model(cfg: TrainConfig, member: int | None) -> tuple[torch.nn.Module, ImageSpec | None, str]:
    """The whole-image model and, when it comes from a checkpoint, that checkpoint's spec and family."""
    from dataclasses import asdict

    from breastscreen.models.allconv import init_allconv_from_patch
    from breastscreen.models.checkpoint import load_checkpoint
    from breastscreen.models.registry import create_model
    from breastscreen.training.ensemble import member_seed
    from breastscreen.training.recipes import reinit_fc_layers

    if not cfg.init_from:
        return build_model(cfg, "allconv-resnet50", member), None, ""
    ck = load_checkpoint(cfg.init_from)
    family = ck.spec.family
    if family == "image":
        # Fine-tuning (transfer with image labels only): the checkpoint's own architecture and weights.
        model = create_model(ck.name, **{**asdict(ck.config), **cfg.model_args})
        model.load_state_dict(ck.model.state_dict(), strict=True)
        if member is not None:
            reinit_fc_layers(model, member_seed(cfg.seed, member))
        return model, ck.spec, family
    if family != "roi-patch":
        raise BreastscreenError(f"init_from {cfg.init_from}: a {family} model cannot start a whole-image model "
                                "(give a roi-patch or whole-image checkpoint)")
    trunk_args = {k: v for k, v in asdict(ck.config).items() if k != "in_channels"}
    args = {**cfg.model_args, "trunk": ck.name, "trunk_overrides": trunk_args}
    try:
        model = create_model(cfg.model or "allconv-resnet50", **args)
    except (KeyError, TypeError, ValueError) as exc:
        raise BreastscreenError(f"cannot build a whole-image model on {cfg.init_from}: {exc}") from None
    if model.config.mode != "features":
        raise BreastscreenError("whole-image training from a roi-patch checkpoint uses mode=features")
    init_allconv_from_patch(model, ck.model)
    if member is not None:
        reinit_fc_layers(model, member_seed(cfg.seed, member))
    return model, ck.spec.whole_image(), family


def build_whole_image(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND whole-image (see the module docstring)."""
    from breastscreen.evaluation.metrics import roc_auc

    opts: WholeImageOptions = cfg.recipe
    if opts.aggregation not in ("mean", "max"):
        raise BreastscreenError(f"recipe.aggregation must be mean or max, got {opts.aggregation!r}")
    if not cfg.val_manifest:
        raise BreastscreenError("KIND whole-image needs --val-manifest (model selection uses validation AUC)")
    model, start_spec, family = _whole_image_model(cfg, member)
    train_exams = subsample_exams(load_exams(cfg.manifest), opts.train_fraction, cfg.seed)
    val_exams = load_exams(cfg.val_manifest)
    scale = check_preprocessed(train_exams, cfg.manifest)
    if start_spec is not None:
        # The input is the breast resized to image_size, so another dataset's pixel spacing
        # (scale) is fine: the paper transfers across datasets this way.
        spec = start_spec.model_copy(update={"aggregation": opts.aggregation, "scale": scale})
    else:
        spec = ImageSpec(kind="allconv", input="resize", scale=scale, aggregation=opts.aggregation,
                         image_size=(int(opts.image_size[0]), int(opts.image_size[1])))
    check_input_fits(model, (2, spec.in_channels, *spec.image_size),
                     f"a whole image of size {list(spec.image_size)} ({cfg.init_from or cfg.manifest})")
    train_set = WholeImageDataset(train_exams, spec, augment=opts.augment, seed=cfg.seed, cache_mb=cfg.cache_mb,
                                  source=cfg.manifest)
    val_set = WholeImageDataset(val_exams, spec, cache_mb=cfg.cache_mb, source=cfg.val_manifest)
    if len(np.unique(train_set.targets[train_set.labelled()])) < 2:
        raise BreastscreenError(f"{cfg.manifest}: training images need both malignant and non-malignant breasts")

    def compute_loss(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        b = move_batch(batch, device)
        known = b["target"] >= 0
        if not bool(known.any()):
            return m(b["x"])["logits"].sum() * 0.0  # keeps the graph; nothing to learn from this batch
        return torch.nn.functional.cross_entropy(m(b["x"][known])["logits"].float(), b["target"][known])

    def val_forward(m: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> list[Any]:
        probs = m(batch["x"].to(device))["probs"].float().cpu().numpy()
        return [(spec.image_probs(p), int(t)) for p, t in zip(probs, batch["target"].numpy())]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, val_forward)
        p = np.array([r[0][1] for r in rows])
        y = np.array([r[1] for r in rows])
        known = y >= 0
        out = {"val_image_auc": roc_auc(y[known], p[known]) if 0 < y[known].sum() < known.sum() else float("nan")}
        preds: dict[str, PredictionRow] = {}
        per_breast: dict[tuple[str, str], list[np.ndarray]] = {}
        exams = {e.exam_id: e for e, _, _ in val_set.items}
        for (exam, view, k), (probs, _) in zip(val_set.items, rows):
            row = preds.setdefault(exam.exam_id, PredictionRow(exam.exam_id, {c: None for c in spec.value_columns},
                                                              {"per_view": {}}))
            row.details["per_view"].setdefault(view, []).append({"benign": None, "malignant": float(probs[1])})
            per_breast.setdefault((exam.exam_id, view[0]), []).append(probs)
        ys, ss = [], []
        for (eid, side), probs in per_breast.items():
            b = spec.breast_probs(probs)
            name = "left" if side == "L" else "right"
            preds[eid].values[f"{name}_malignant"] = float(b[1])
            label = exams[eid].label(side).malignant
            if label is not None:
                ys.append(int(label))
                ss.append(float(b[1]))
        ys_a = np.array(ys)
        out["val_auc"] = roc_auc(ys_a, np.array(ss)) if 0 < ys_a.sum() < len(ys_a) else float("nan")
        ctx.record_predictions(spec.value_columns, list(preds.values()))
        return out

    stages: tuple[Stage, ...] = ()
    if family == "roi-patch":
        if not (len(opts.stage_epochs) == len(opts.stage_lrs) == len(opts.stage_weight_decays) == 2):
            raise BreastscreenError("recipe.stage_epochs, stage_lrs and stage_weight_decays need 2 values (top, all)")
        stages = (Stage(opts.stage_epochs[0], opts.stage_lrs[0], lambda n: not n.startswith("patch."), "top layers",
                        opts.stage_weight_decays[0]),
                  Stage(opts.stage_epochs[1], opts.stage_lrs[1], None, "all layers", opts.stage_weight_decays[1]))
    meta = {
        "task": "whole-image", "labels": ["not cancer", "cancer"], "init": family or "scratch",
        "training_data": {**describe_exams(train_exams, cfg.manifest), "train_fraction": opts.train_fraction,
                          "n_images": len(train_set), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     metadata=meta, spec=spec, stages=stages)


register_recipe(Recipe(
    kind="roi-patch",
    description="ROI patch classifier of the all-convolutional system (Shen 2019): S1/S10 patches, 5 or 3 classes",
    options_cls=RoiPatchOptions,
    defaults={"model": "resnet50-patch", "lr": 1e-3, "batch_size": 32, "epochs": 50, "patience": 0,
              "monitor": "val_accuracy", "monitor_mode": "max"},
    build=build_roi_patch,
    metric_help="val_accuracy = validation patch accuracy",
))

register_recipe(Recipe(
    kind="whole-image",
    description="all-convolutional whole-image classifier (Shen 2019) built from a roi-patch checkpoint",
    options_cls=WholeImageOptions,
    defaults={"model": "allconv-resnet50", "lr": 1e-4, "batch_size": 2, "epochs": 50, "patience": 0,
              "monitor": "val_image_auc", "monitor_mode": "max"},
    build=build_whole_image,
    metric_help="val_image_auc = validation per-image malignant AUC",
))
