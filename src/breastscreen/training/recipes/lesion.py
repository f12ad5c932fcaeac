"""KIND ``lesion``: ``f_agg``, the lesion classifier mixing local and global context (Wu et al. 2020).

Inputs, stacked on the context network's saliency grid (:class:`~breastscreen.specs.LesionSpec`):
saliency maps S_b, S_m (2), location indicator I (1), embedding maps E (32); ``recipe.maps``
selects any subset (``maps=[saliency,embedding]`` ...) to run the paper's ablation. Network: two
BN-ReLU-conv(32, 3x3) layers, global average pooling, 4 classes (PATCH_CLASSES).

* ``recipe.patch_model`` (f_loc, a patch classifier with an embedding: ``train patch
  model=densenet161-patch-embed``) and ``recipe.context_model`` (``train context``; needed when the
  saliency maps are used) are fixed; their window features and saliency maps are computed once
  and cached under ``recipe.cache_dir`` (default ``OUT/features``), keyed by the checkpoints'
  sha256, so f_agg trials (random search, the ablation) are cheap.
* training windows: ``recipe.windows_per_lesion`` windows over each training lesion with a known
  outcome (drawn like the prediction windows, from the run seed), class = the outcome; plus
  ``recipe.background_windows`` axis-aligned windows split evenly between ``outside`` (an image
  with lesions, touching none) and ``negative`` (a breast without findings), drawn by the patch
  classifier's sampler. Weighted cross-entropy (inverse class frequency of the pool).
* Adam, batch 100, lr 1e-4 (the paper's range [1e-5, 1e-3]); early stopping after 10 epochs
  without a gain in the validation lesion AUC ``val_lesion_auc``: each validation lesion scored
  exactly as ``predict-lesions`` does (``windows`` windows, malignant/benign normalised and
  averaged), malignant vs benign AUC. ``val_local_lesion_auc`` (f_loc alone) is reported beside it.

Lesions that cannot be used (empty or outside region, unreadable mask, unknown outcome) are
listed in ``RUN_DIR/skipped_lesions.csv`` (lesion key, reason) and the checkpoint metadata, and
training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.data.types import MG_VIEWS, Exam
from breastscreen.errors import BreastscreenError
from breastscreen.labels import PATCH_CLASSES
from breastscreen.specs.lesion import MAP_NAMES, PAPER_SIZE_RANGE, PAPER_WINDOWS, LesionSpec
from breastscreen.training.config import TrainConfig, bounded
from breastscreen.training.datasets import check_preprocessed, describe_exams, load_exams
from breastscreen.training.loop import DistInfo, EvalContext, TrainTask
from breastscreen.training.losses import patch_class_weights, weighted_cross_entropy
from breastscreen.training.recipes import Recipe, register_recipe
from breastscreen.training.recipes.common import write_skipped_lesions


@dataclass
class LesionOptions:
    """``recipe.*`` options of KIND lesion."""

    patch_model: str = ""
    context_model: str = ""
    maps: list[str] = field(default_factory=lambda: list(MAP_NAMES))
    windows_per_lesion: int = bounded(100, ge=1)
    background_windows: int = bounded(0, ge=0)  # 0 = as many as lesion windows
    windows: int = bounded(PAPER_WINDOWS, ge=1)  # per validation / prediction lesion
    size_range: list[float] = field(default_factory=lambda: list(PAPER_SIZE_RANGE))
    window_seed: int = bounded(0, ge=0)
    cache_dir: str = ""
    data_description: str = ""


@dataclass
class _Image:
    exam: Exam
    view: str
    index: int
    key: str
    shape: tuple[int, int]
    saliency: np.ndarray | None
    identity: str = ""


class AggWindowDataset(Dataset):
    """Cached windows (image, box, embedding, class) -> f_agg inputs built by the spec.

    The location maps are computed once per window here (they never change), so a batch only
    stacks arrays; the values equal :meth:`LesionSpec.agg_inputs` of each window.
    """

    def __init__(self, spec: LesionSpec, images: Sequence[_Image], image_idx: np.ndarray, boxes: np.ndarray,
                 embeddings: np.ndarray, labels: np.ndarray) -> None:
        self.spec, self.images = spec, list(images)
        self.image_idx, self.boxes, self.embeddings, self.labels = image_idx, boxes, embeddings, labels
        gh, gw = spec.grid_size
        self.location = np.zeros((len(labels), gh, gw), np.float32)
        for image in np.unique(image_idx):
            rows = np.flatnonzero(image_idx == image)
            self.location[rows] = spec.location_maps(boxes[rows], self.images[int(image)].shape)
        self.saliency = (np.stack([im.saliency for im in self.images]).astype(np.float32)
                         if spec.needs_context and self.images else None)

    def __len__(self) -> int:
        return len(self.labels)

    def _inputs(self, idx: np.ndarray) -> np.ndarray:
        sal = self.saliency[self.image_idx[idx]] if self.saliency is not None else None
        return self.spec.stack_maps(self.location[idx], sal, self.embeddings[idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self._inputs(np.array([i]))[0]), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch stacked in one call (same values as :meth:`__getitem__`)."""
        idx = np.asarray(indices, dtype=np.int64)
        return [(torch.from_numpy(x), int(self.labels[i])) for x, i in zip(self._inputs(idx), idx)]


def _images(exams: Sequence[Exam]) -> list[tuple[Exam, str, int]]:
    return [(e, v, k) for e in exams for v in MG_VIEWS for k in range(len(e.views.get(v, [])))]


def _background_boxes(exams: Sequence[Exam], spec: LesionSpec, n: int, seed: int) -> dict[str, list[np.ndarray]]:
    """``n`` outside/negative windows per class name -> list of (source key, box [4])."""
    from breastscreen.preprocess.patches import PatchSampler, sources_from_exams

    sources = sources_from_exams(exams)
    sampler = PatchSampler(sources, scale=spec.scale, size_range=spec.size_range, max_rotation=0.0)
    comp = {"outside": n - n // 2, "negative": n // 2}
    specs = sampler.sample_specs({k: v for k, v in comp.items() if v > 0}, seed=seed)
    out: dict[str, list[Any]] = {}
    for s in specs:
        src = sources[s.source]
        half = s.size / 2.0
        # extract_patch centres on pixel centres; windows_patches adds the half pixel back
        box = np.array([s.cy + 0.5 - half, s.cx + 0.5 - half, s.cy + 0.5 + half, s.cx + 0.5 + half])
        out.setdefault(src.key, []).append((box, int(s.label)))
    return out


def build_lesion(cfg: TrainConfig, info: DistInfo, member: int | None) -> TrainTask:
    """TrainTask of KIND lesion (see the module docstring)."""
    from breastscreen.data.lesions import image_lesions, lesion_region
    from breastscreen.evaluation.metrics import roc_auc
    from breastscreen.inference.lesion_features import LesionFeatures, image_identity, standardised_image
    from breastscreen.inference.lesions import score_lesion, training_windows
    from breastscreen.models.registry import create_model
    from breastscreen.training.recipes.context import default_context_size

    opts: LesionOptions = cfg.recipe
    if not opts.patch_model:
        raise BreastscreenError("KIND lesion needs recipe.patch_model= (an f_loc checkpoint from `train patch "
                                "model=densenet161-patch-embed`)")
    if "saliency" in opts.maps and not opts.context_model:
        raise BreastscreenError("recipe.maps includes saliency: give recipe.context_model= (a `train context` checkpoint)")
    if not cfg.val_manifest:
        raise BreastscreenError("KIND lesion needs --val-manifest (model selection uses validation lesion AUC)")
    device = torch.device("cpu" if cfg.device in ("auto", "cpu") or not torch.cuda.is_available() else cfg.device)
    cache = opts.cache_dir or str(Path(cfg.out) / "features")
    features = LesionFeatures(opts.patch_model, opts.context_model if "saliency" in opts.maps else None,
                              device=device, cache_dir=cache)
    train_exams, val_exams = load_exams(cfg.manifest), load_exams(cfg.val_manifest)
    scale = check_preprocessed(train_exams, cfg.manifest)
    if check_preprocessed(val_exams, cfg.val_manifest) != scale or not np.isclose(scale, features.scale):
        raise BreastscreenError(f"training, validation and the local module must share one scale "
                                f"(manifest {scale}, f_loc {features.scale})")
    grid = features.grid_size() or tuple(v // 64 for v in default_context_size(scale))
    try:
        spec = LesionSpec(scale=scale, patch_size=features.patch_size, size_range=tuple(opts.size_range),
                          windows=opts.windows, window_seed=opts.window_seed, grid_size=grid, maps=tuple(opts.maps),
                          embedding_dim=features.embedding_dim, patch_model_sha256=features.local.sha256,
                          context_model_sha256=features.context.sha256 if features.context else None)
    except ValueError as exc:
        raise BreastscreenError(f"recipe: {exc}") from None
    skipped: list[tuple[str, str]] = []

    def load_images(exams: Sequence[Exam]) -> tuple[list[_Image], dict[str, np.ndarray]]:
        images, stds = [], {}
        for exam, view, k in _images(exams):
            image = exam.views[view][k]
            key = f"{exam.exam_id}/{view}/{k}"
            std = standardised_image(image)
            sal = features.saliency(image, view) if spec.needs_context else None
            images.append(_Image(exam, view, k, key, std.shape, sal, image_identity(image)))
            stds[key] = std
        return images, stds

    # ---- training pool: lesion windows + background windows, features computed once (cached)
    train_images, train_std = load_images(train_exams)
    idx, boxes, embs, labels = [], [], [], []
    n_lesion_windows = 0
    for i, im in enumerate(train_images):
        for rec in image_lesions(im.exam, im.view, im.index, im.exam.views[im.view][im.index]):
            if rec.outcome not in ("benign", "malignant"):
                skipped.append((rec.key, "no outcome (benign/malignant) to train on"))
                continue
            try:
                region = lesion_region(rec, im.shape)
            except BreastscreenError as exc:
                skipped.append((rec.key, str(exc)))
                continue
            b = training_windows(region, opts.windows_per_lesion, spec, cfg.seed, rec.key)
            _, e = features.lesion_features(train_std[im.key], b, f"train#{im.identity}#{rec.key}#{cfg.seed}#{len(b)}")
            idx.append(np.full(len(b), i)), boxes.append(b), embs.append(e)
            labels.append(np.full(len(b), PATCH_CLASSES.index(rec.outcome)))
            n_lesion_windows += len(b)
    if not n_lesion_windows:
        raise BreastscreenError(f"{cfg.manifest}: no usable lesion (with a region and an outcome) to train on")
    n_bg = opts.background_windows or n_lesion_windows
    by_key = {im.key: i for i, im in enumerate(train_images)}
    for src_key, items in _background_boxes(train_exams, spec, n_bg, cfg.seed + 17).items():
        i = by_key.get(src_key)
        if i is None:
            continue
        b = np.stack([box for box, _ in items])
        ident = train_images[i].identity
        _, e = features.lesion_features(train_std[src_key], b, f"background#{ident}#{src_key}#{cfg.seed}#{len(b)}")
        idx.append(np.full(len(b), i)), boxes.append(b), embs.append(e)
        labels.append(np.array([lab for _, lab in items]))
    del train_std
    y = np.concatenate(labels)
    train_set = AggWindowDataset(spec, train_images, np.concatenate(idx), np.concatenate(boxes).astype(np.float64),
                                 np.concatenate(embs).astype(np.float32), y)
    counts = np.bincount(y, minlength=len(PATCH_CLASSES)).tolist()
    weights = torch.tensor(patch_class_weights([max(c, 1) for c in counts]), dtype=torch.float32)

    # ---- validation lesions, scored exactly as predict-lesions scores them
    val_images, val_std = load_images(val_exams)
    val_items = []
    for im in val_images:
        for rec in image_lesions(im.exam, im.view, im.index, im.exam.views[im.view][im.index]):
            if rec.outcome not in ("benign", "malignant"):
                continue
            try:
                val_items.append((im, rec, lesion_region(rec, im.shape)))
            except BreastscreenError as exc:
                skipped.append((rec.key, str(exc)))
    write_skipped_lesions(Path(cfg.out), skipped)
    if len({rec.outcome for _, rec, _ in val_items}) < 2:
        raise BreastscreenError(f"{cfg.val_manifest}: validation needs benign and malignant lesions")

    def lesion_auc(m: torch.nn.Module | None, dev: torch.device) -> float:
        ys, ss = [], []
        for im, rec, region in val_items:
            mal, _, _, _ = score_lesion(features, spec, m, val_std[im.key], region, rec.key, im.saliency, dev,
                                        im.identity)
            ys.append(int(rec.outcome == "malignant"))
            ss.append(mal)
        return roc_auc(np.array(ys), np.array(ss))

    local_auc = lesion_auc(None, device)
    model = create_model(cfg.model or "lesion-agg", **{**cfg.model_args, "use_saliency": "saliency" in spec.maps,
                                                        "use_location": "location" in spec.maps,
                                                        "use_embedding": "embedding" in spec.maps,
                                                        "embedding_dim": spec.embedding_dim,
                                                        "grid_size": spec.grid_size})
    if member is not None:
        from breastscreen.training.ensemble import member_seed
        from breastscreen.training.recipes import reinit_fc_layers

        reinit_fc_layers(model, member_seed(cfg.seed, member))

    def compute_loss(m: torch.nn.Module, batch: Any, dev: torch.device) -> torch.Tensor:
        x, target = batch
        return weighted_cross_entropy(m(x.to(dev))["logits"], target.to(dev), weights.to(dev))

    def evaluate(m: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        was = m.training
        m.eval()
        try:
            value = lesion_auc(m, ctx.device)
        finally:
            m.train(was)
        return {"val_lesion_auc": value, "val_local_lesion_auc": local_auc}

    meta = {
        "task": "lesion", "classes": list(PATCH_CLASSES), "maps": list(spec.maps),
        "patch_model": opts.patch_model, "context_model": opts.context_model or None,
        "train_window_counts": dict(zip(PATCH_CLASSES, counts)), "n_val_lesions": len(val_items),
        "val_local_lesion_auc": local_auc, "skipped_lesions": [f"{k}: {r}" for k, r in skipped[:200]], "n_skipped_lesions": len(skipped),
        "training_data": {**describe_exams(train_exams, cfg.manifest), "description": opts.data_description},
    }
    return TrainTask(model=model, train_set=train_set, compute_loss=compute_loss, evaluate=evaluate,
                     metadata=meta, spec=spec)


register_recipe(Recipe(
    kind="lesion",
    description="lesion classifier f_agg (Wu 2020): saliency + location + embedding maps -> malignant/benign",
    options_cls=LesionOptions,
    defaults={"model": "lesion-agg", "lr": 1e-4, "batch_size": 100, "epochs": 100, "patience": 10,
              "monitor": "val_lesion_auc", "monitor_mode": "max"},
    build=build_lesion,
    metric_help="val_lesion_auc = malignant-vs-benign AUC of validation lesions scored as predict-lesions does",
))
