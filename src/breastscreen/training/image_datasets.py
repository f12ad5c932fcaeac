"""Datasets of the all-convolutional system (Shen et al. 2019): ROI patch sets and whole images.

Both build their inputs through the model's spec, as the Predictor does:

* :class:`WholeImageDataset` — one item per mammogram: ``ImageSpec.image_inputs`` (the
  preprocessed image resized to the spec's ``image_size``, standardised; the paper's
  augmentation in training), target = the breast's malignancy label (-1 when unknown: kept for
  ``val_predictions.csv``, left out of losses and metrics).
* :func:`roi_sources` + :class:`RoiPatchDataset` — the S1 / S10 ROI patch sets cut from images
  prepared exactly like the whole-image input (``RoiPatchSpec``): 5 classes (background,
  benign/malignant mass, benign/malignant calcification) or 3 (background, benign, malignant).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.data.types import MG_VIEWS, Exam, view_side
from breastscreen.errors import BreastscreenError
from breastscreen.specs import ImageSpec, RoiPatchSpec
from breastscreen.specs.wholeimage import PATCH_CLASSES_3, resize_image
from breastscreen.training.datasets import ImageCache, prepare_view
from breastscreen.training.samplers import epoch_rng


def subsample_exams(exams: Sequence[Exam], fraction: float, seed: int) -> list[Exam]:
    """A seeded ``fraction`` of the exams (the papers' training-set-size studies); 1 keeps all."""
    if not 0.0 < fraction <= 1.0:
        raise BreastscreenError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(exams)
    n = max(1, int(round(fraction * len(exams))))
    keep = sorted(np.random.default_rng(seed).choice(len(exams), size=n, replace=False).tolist())
    return [exams[i] for i in keep]


class WholeImageDataset(Dataset):
    """Mammograms one by one as whole-image model inputs (see the module docstring)."""

    def __init__(self, exams: Sequence[Exam], spec: ImageSpec, augment: bool = False, seed: int = 0,
                 cache_mb: float = 0.0, source: str = "manifest") -> None:
        self.items: list[tuple[Exam, str, int]] = [(e, v, k) for e in exams for v in MG_VIEWS
                                                   for k in range(len(e.views.get(v, [])))]
        if not self.items:
            raise BreastscreenError(f"{source}: no mammography images")
        self.spec, self.augment, self.seed, self.epoch = spec, augment, int(seed), 0
        self.cache = ImageCache(cache_mb) if cache_mb > 0 else None
        self.targets = np.array([self._target(e, v) for e, v, _ in self.items], dtype=np.int64)

    @staticmethod
    def _target(exam: Exam, view: str) -> int:
        value = exam.label(view_side(view)).malignant
        return -1 if value is None else int(value)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws :meth:`__getitem__` uses."""
        self.epoch = int(epoch)

    def labelled(self) -> np.ndarray:
        """Indices of the images whose breast label is known."""
        return np.flatnonzero(self.targets >= 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        exam, view, k = self.items[i]
        prepared = prepare_view(self.spec, exam.views[view][k], view, self.cache)
        rng = epoch_rng(self.seed, self.epoch, 1 + i) if self.augment else None
        x = self.spec.image_inputs(prepared, view, None, n=1, rng=rng)[0]
        return {"x": torch.from_numpy(x), "target": torch.tensor(self.targets[i]), "index": i}


def roi_sources(exams: Sequence[Exam], spec: RoiPatchSpec) -> list[Any]:
    """Patch sources of images with lesion masks, prepared like the whole-image input.

    Each image: the spec's preparation, resized to ``image_size`` (area) and standardised over
    the whole image; its breast and lesion masks resized the same way (nearest).
    """
    from breastscreen.data.readers import load_image
    from breastscreen.preprocess.mammo import standardize
    from breastscreen.preprocess.patches import PatchSource
    from breastscreen.specs.sources import preprocessed_mask

    out = []
    for exam in exams:
        for view, image in exam.iter_images():
            if not image.masks:
                continue
            prepared = spec.prepare(image, view)
            shape = prepared.pixels.shape
            breast = prepared.mask if prepared.mask is not None else preprocessed_mask(image, shape)
            if breast is None:
                raise BreastscreenError(f"{image.path}: no breast mask (preprocess the manifest first)")
            lesions = []
            for m in image.masks:
                mask = load_image(m.path).pixels > 0
                if mask.shape != shape:
                    raise BreastscreenError(f"{m.path}: lesion mask {mask.shape} differs from its image {shape}")
                lesions.append((resize_image(mask, spec.image_size, "nearest") > 0.5, m.label, m.kind))
            pixels = standardize(resize_image(prepared.pixels, spec.image_size, "area"))
            out.append(PatchSource(pixels, resize_image(breast, spec.image_size, "nearest") > 0.5, lesions,
                                   key=f"{exam.exam_id}/{view}"))
    return out


def three_class(label: str | None, kind: str | None) -> int | None:
    """Class index among :data:`PATCH_CLASSES_3` (background, benign, malignant) of a lesion; None
    (skip it) when its outcome is unknown."""
    return PATCH_CLASSES_3.index(label) if label is not None else None


class RoiPatchDataset(Dataset):
    """Patches of an S1 / S10 set (``preprocess.patches.roi_patch_set``) with their class labels.

    Training draws the paper's augmentation (flips, rotation, shear, zoom, intensity shift) per
    patch from ``(seed, epoch, item)``.
    """

    def __init__(self, sources: Sequence[Any], patch_set: Any, augment: bool = False, seed: int = 0) -> None:
        if not patch_set.specs:
            raise BreastscreenError("no ROI patch could be cut: no image has a usable lesion mask")
        self.sources, self.set = list(sources), patch_set
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        self.targets = np.array([s.label for s in patch_set.specs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.set.specs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws :meth:`__getitem__` uses."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from breastscreen.preprocess import augment

        patch = self.set.extract(self.sources, self.set.specs[i]).astype(np.float32)
        if self.augment:
            t = augment.AllConvAugment(image_keys=("image",))
            patch = t({"image": patch}, epoch_rng(self.seed, self.epoch, 1 + i))["image"]
        return {"x": torch.from_numpy(np.ascontiguousarray(patch[None], dtype=np.float32)),
                "target": torch.tensor(self.targets[i]), "index": i}


def batch_balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with class weights balanced within the batch (each present class weighs the same)."""
    import torch.nn.functional as F

    counts = torch.bincount(target, minlength=logits.shape[1]).to(logits.dtype)
    present = counts > 0
    weights = torch.where(present, counts.sum() / (present.sum() * counts.clamp_min(1)), torch.zeros_like(counts))
    return F.cross_entropy(logits.float(), target, weight=weights.float())
