"""KIND ``patch``: the patch classifier whose sliding-window outputs are the heatmaps (Wu et al. 2019 SI).

Recipe (defaults; all overridable):

* model ``densenet121-patch`` (4 classes in PATCH_CLASSES order: malignant, benign, outside,
  negative); patches from :class:`breastscreen.preprocess.patches.PatchSampler`: side uniform in
  [128, 384] full-resolution px, rotation uniform in [-30, 30] degrees, resized to 256 px (all
  times the manifest's scale), cut from the whole preprocessed image standardised to mean 0 and
  std 1 — exactly what the heatmap inferer feeds the model;
* every epoch draws a new set of ``composition`` patches per class (20 malignant, 35 benign,
  5,000 outside, 4,945 negative); ``epoch_size`` > 0 scales these counts to that total keeping
  their ratios (at least one patch per class);
* weighted cross-entropy with ``w_c = prod_{k!=c} N_k / sum_j prod_{k!=j} N_k`` from the epoch's
  class counts ``N``; Adam, lr 1e-5, batch 100;
* every ``checkpoint_every`` (K) epochs the model is saved (``epoch_NNNN.safetensors``) and
  validated by computing heatmaps of the validation images, taking the maximum of each heatmap
  over each breast's images and computing the breast-level benign and malignant AUCs; the
  monitored ``val_auc`` is their mean, and ``best.safetensors`` is the checkpoint with the best
  value. ``heatmap_validation=false`` validates on a fixed set of validation patches instead
  (``val_patch_auc``: mean one-vs-rest patch AUC), for data without breast labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.errors import BreastscreenError
from breastscreen.labels import HEATMAP_CHANNELS, PATCH_CLASSES, PATCH_SIZE, PATCH_STRIDE
from breastscreen.specs import PatchSpec
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.training.datasets import describe_exams, finite_mean, load_exams
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask, derive_seed
from breastscreen.training.losses import patch_class_weights, weighted_cross_entropy
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import build_model, check_input_fits
from breastscreen.training.samplers import ShuffleSampler, scale_composition

PAPER_COMPOSITION = {"malignant": 20, "benign": 35, "outside": 5000, "negative": 4945}


@dataclass
class PatchOptions:
    """``recipe.*`` options of KIND patch."""

    composition: dict[str, int] = field(default_factory=lambda: dict(PAPER_COMPOSITION))
    epoch_size: int = bounded(0, ge=0)  # 0 = the composition as given; > 0 = scale it to this many patches
    val_composition: dict[str, int] = field(default_factory=lambda: {"malignant": 100, "benign": 100,
                                                                      "outside": 200, "negative": 200})
    checkpoint_every: int = bounded(1, ge=1)  # K: save and validate every K epochs
    heatmap_validation: bool = True
    heatmap_batch_size: int = bounded(256, ge=1)
    lesion_validation: bool = False
    lesion_windows: int = bounded(100, ge=1)
    size_range: list[float] = field(default_factory=lambda: [128.0, 384.0])
    max_rotation: float = bounded(30.0, ge=0, le=180)
    min_breast_fraction: float = bounded(0.1, ge=0, le=1)
    data_description: str = ""


def _standardised_sources(exams: Sequence[Any], source: str) -> tuple[list[Any], float]:
    """Patch sources of preprocessed exams with each image standardised over the whole image."""
    from breastscreen.preprocess.mammo import standardize
    from breastscreen.preprocess.patches import sources_from_exams
    from breastscreen.training.datasets import check_preprocessed

    scale = check_preprocessed(exams, source)
    sources = sources_from_exams(exams)
    for src in sources:
        src.image = standardize(src.image)
    if not sources:
        raise BreastscreenError(f"{source}: no image with lesion masks or from a breast without findings; no patches")
    return sources, scale


class PatchEpochDataset(Dataset):
    """The patches of one epoch: ``set_epoch(e)`` draws the epoch's specs from ``(seed, e)``."""

    def __init__(self, sampler: Any, composition: dict[str, int], seed: int, fixed: bool = False) -> None:
        self.sampler = sampler
        self.composition = dict(composition)
        self.seed = int(seed)
        self.fixed = fixed
        self.epoch = -1
        self.specs: list[Any] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's patches (a fixed set when ``fixed``, e.g. for validation)."""
        epoch = 0 if self.fixed else int(epoch)
        if epoch != self.epoch:
            self.specs = self.sampler.sample_specs(self.composition, seed=derive_seed(self.seed, epoch, 7))
            self.epoch = epoch

    def class_counts(self) -> list[int]:
        """Patches per class (PATCH_CLASSES order) in the current epoch."""
        return np.bincount([s.label for s in self.specs], minlength=len(PATCH_CLASSES)).tolist()

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        spec = self.specs[i]
        return torch.from_numpy(self.sampler.extract(spec))[None], int(spec.label)


def breast_max_scores(exams: Sequence[Any], maps: dict[tuple[str, str, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per breast: max of the benign and malignant heatmaps over its images, and its labels.

    Returns ``scores`` [B, 2] and ``labels`` [B, 2] (benign, malignant; -1 unknown) for the
    breasts that have at least one heatmap.
    """
    from breastscreen.data.types import view_side

    scores, labels = [], []
    for exam in exams:
        for side in ("L", "R"):
            per = [m.reshape(2, -1).max(axis=1) for (eid, view, _), m in maps.items()
                   if eid == exam.exam_id and view_side(view) == side]
            if not per:
                continue
            scores.append(np.max(np.stack(per), axis=0))
            lab = exam.label(side)
            labels.append([-1 if lab.benign is None else lab.benign, -1 if lab.malignant is None else lab.malignant])
    return np.asarray(scores, dtype=np.float64).reshape(-1, 2), np.asarray(labels, dtype=np.int64).reshape(-1, 2)


def heatmap_breast_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Breast-level AUCs of the heatmap maxima: benign, malignant and their mean (``val_auc``)."""
    from breastscreen.evaluation.metrics import roc_auc

    out = {}
    for j, name in enumerate(HEATMAP_CHANNELS):
        known = labels[:, j] >= 0
        out[f"val_auc_{name}"] = roc_auc(labels[known, j], scores[known, j]) if known.any() else float("nan")
    out["val_auc"] = finite_mean([out[f"val_auc_{n}"] for n in HEATMAP_CHANNELS])
    return out


def build_patch(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND patch (see the module docstring)."""
    from breastscreen.preprocess.patches import PatchSampler

    opts: PatchOptions = cfg.recipe
    unknown = sorted(set(opts.composition) - set(PATCH_CLASSES))
    if unknown:
        raise BreastscreenError(f"recipe.composition has unknown classes {unknown}; use {list(PATCH_CLASSES)}")
    if opts.checkpoint_every < 1:
        raise BreastscreenError(f"recipe.checkpoint_every must be >= 1, got {opts.checkpoint_every}")
    if len(opts.size_range) != 2:
        raise BreastscreenError(f"recipe.size_range must be [low, high], got {opts.size_range}")
    composition = scale_composition(opts.composition, opts.epoch_size)
    train_exams = load_exams(cfg.manifest)
    sources, scale = _standardised_sources(train_exams, cfg.manifest)

    def make_sampler(srcs: list[Any]) -> Any:
        return PatchSampler(srcs, scale=scale, size_range=tuple(opts.size_range), max_rotation=opts.max_rotation,
                            min_breast_fraction=opts.min_breast_fraction)

    patch_sampler = make_sampler(sources)
    train_set = PatchEpochDataset(patch_sampler, composition, seed=cfg.seed)
    counts = [composition.get(c, 0) for c in PATCH_CLASSES]
    weights = torch.tensor(patch_class_weights(counts), dtype=torch.float32)
    model = build_model(cfg, "densenet121-patch", member, num_classes=len(PATCH_CLASSES), in_channels=1)
    out_size = patch_sampler.out_size
    check_input_fits(model, (2, 1, out_size, out_size), f"a patch at scale {scale}")
    stride = max(1, int(round(out_size * PATCH_STRIDE / PATCH_SIZE)))

    def compute_loss(m: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        x, y = batch
        return weighted_cross_entropy(m(x.to(device))["logits"], y.to(device), weights.to(device))

    val_exams = load_exams(cfg.val_manifest) if cfg.val_manifest else []
    evaluate = None
    if val_exams:
        from breastscreen.training.datasets import check_preprocessed

        if check_preprocessed(val_exams, cfg.val_manifest) != scale:
            raise BreastscreenError(f"{cfg.val_manifest}: validation images must be preprocessed at scale {scale}")
        if opts.lesion_validation:
            if cfg.monitor != "val_lesion_auc":
                raise BreastscreenError("recipe.lesion_validation=true selects by lesion AUC: set monitor=val_lesion_auc")
            evaluate = _lesion_evaluator(val_exams, out_size, scale, opts)
        elif opts.heatmap_validation:
            evaluate = _heatmap_evaluator(val_exams, out_size, stride, opts.heatmap_batch_size)
        else:
            val_sources, _ = _standardised_sources(val_exams, cfg.val_manifest)
            val_set = PatchEpochDataset(make_sampler(val_sources), opts.val_composition, seed=cfg.seed + 1, fixed=True)
            evaluate = _patch_evaluator(val_set)
    elif cfg.monitor != "train_loss":
        raise BreastscreenError("KIND patch without --val-manifest can only monitor train_loss (set monitor=train_loss monitor_mode=min)")

    meta = {
        "task": "patch",
        "classes": list(PATCH_CLASSES),
        "scale": scale,
        "spacing_mm": 0.1 / scale,
        "patch_size": out_size,
        "patch_stride": stride,
        "input_size": [out_size, out_size],
        "channels": ["image"],
        "normalisation": "whole preprocessed image standardised (mean 0, std 1) before patches are cut",
        "patch_sampling": {"size_range_px_full_res": list(opts.size_range), "max_rotation_deg": opts.max_rotation,
                           "composition_per_epoch": composition},
        "class_weights": [float(w) for w in weights],
        "training_data": {**describe_exams(train_exams, cfg.manifest), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     sampler=ShuffleSampler(len(train_set), seed=cfg.seed, shuffle=False), metadata=meta,
                     eval_every=opts.checkpoint_every, snapshot_every=opts.checkpoint_every,
                     spec=PatchSpec(scale=scale, patch_size=out_size, stride=stride, classes=tuple(PATCH_CLASSES)))


def _patch_evaluator(val_set: PatchEpochDataset) -> Any:
    from breastscreen.evaluation.metrics import one_vs_rest_aucs

    def forward(m: torch.nn.Module, batch: Any, device: torch.device) -> list[Any]:
        x, y = batch
        probs = torch.softmax(m(x.to(device))["logits"].float(), dim=1).cpu().numpy()
        return [(probs[i], int(y[i])) for i in range(len(probs))]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        rows = ctx.predict(m, val_set, forward)
        probs = np.stack([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        aucs = one_vs_rest_aucs(y, probs)
        out = {f"val_patch_auc_{c}": float(a) for c, a in zip(PATCH_CLASSES, aucs)}
        out["val_patch_auc"] = finite_mean(list(aucs))
        out["val_patch_accuracy"] = float(np.mean(probs.argmax(1) == y))
        return out

    return evaluate


def _lesion_evaluator(val_exams: Sequence[Any], out_size: int, scale: float, opts: PatchOptions) -> Any:
    from breastscreen.data.lesions import manifest_lesions, lesion_region
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.inference.lesion_features import standardised_image
    from breastscreen.specs.lesion import LesionSpec, lesion_score, window_patches

    spec = LesionSpec(scale=scale, patch_size=out_size, size_range=tuple(opts.size_range), windows=opts.lesion_windows,
                      maps=("embedding",))
    exams = {e.exam_id: e for e in val_exams}
    images: dict[str, np.ndarray] = {}
    items = []
    for rec in manifest_lesions(val_exams):
        if rec.outcome not in ("benign", "malignant"):
            continue
        ikey = f"{rec.exam_id}/{rec.view}/{rec.image_index}"
        if ikey not in images:
            images[ikey] = standardised_image(exams[rec.exam_id].views[rec.view][rec.image_index])
        try:
            boxes = spec.windows_for(lesion_region(rec, images[ikey].shape), rec.key)
        except BreastscreenError:
            continue  # reported by `manifest check`; validation uses the lesions that can be scored
        items.append((int(rec.outcome == "malignant"), ikey, boxes))
    if len({it[0] for it in items}) < 2:
        raise BreastscreenError("recipe.lesion_validation needs benign and malignant validation lesions")

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        was = m.training
        m.eval()
        ys, ss = [], []
        with torch.inference_mode():
            for y, ikey, boxes in items:
                probs = torch.cat([m(torch.from_numpy(window_patches(images[ikey], boxes[i:i + 64], out_size))
                                     .to(ctx.device))["probs"].float().cpu()
                                   for i in range(0, len(boxes), 64)]).numpy()
                ys.append(y)
                ss.append(lesion_score(probs)[0])
        m.train(was)
        return {"val_lesion_auc": roc_auc(np.array(ys), np.array(ss))}

    return evaluate


def _heatmap_evaluator(val_exams: Sequence[Any], patch: int, stride: int, batch_size: int) -> Any:
    from breastscreen.data.types import MG_VIEWS
    from breastscreen.inference.heatmaps import SlidingWindowHeatmapper
    from breastscreen.specs.sources import preprocessed_pixels

    items = [(e.exam_id, v, k, im) for e in val_exams for v in MG_VIEWS for k, im in enumerate(e.views.get(v, []))]

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        inferer = SlidingWindowHeatmapper(m, patch, stride, batch_size=batch_size, device=ctx.device, amp=ctx.amp)
        mine = list(range(ctx.dist.rank, len(items), ctx.dist.world_size))
        maps: dict[tuple[str, str, int], np.ndarray] = {}
        was_training = m.training
        m.eval()
        # A few images at a time keeps memory flat; the inferer batches windows across them.
        for start in range(0, len(mine), 8):
            chunk = mine[start:start + 8]
            images = [preprocessed_pixels(items[j][3]) for j in chunk]
            for j, res in zip(chunk, inferer.heatmaps(images)):
                maps[items[j][:3]] = res.maps
        m.train(was_training)
        if ctx.dist.enabled:
            import torch.distributed as dist

            parts: list[Any] = [None] * ctx.dist.world_size
            dist.all_gather_object(parts, maps)
            for part in parts:
                maps.update(part)
        scores, labels = breast_max_scores(val_exams, maps)
        return heatmap_breast_metrics(scores, labels)

    return evaluate


register_recipe(Recipe(
    kind="patch",
    description="patch classifier for heatmaps (malignant/benign/outside/negative), checkpoint selection by heatmap AUC",
    options_cls=PatchOptions,
    defaults={"model": "densenet121-patch", "lr": 1e-5, "batch_size": 100, "epochs": 100, "patience": 0,
              "monitor": "val_auc", "monitor_mode": "max"},
    build=build_patch,
    metric_help="val_auc = mean of breast-level benign and malignant AUCs of the heatmap maxima",
))
