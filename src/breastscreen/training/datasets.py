"""Datasets over PREPROCESSED mammography manifests (from ``breastscreen preprocess``).

Exam datasets (BI-RADS and breast-level models) build every model input with the model
family's spec (:meth:`breastscreen.specs.MultiViewSpec.exam_rows`), the same function the
Predictor calls, so a validation tensor and a prediction tensor of the same exam are equal:

* images are read back in original intensity units (:func:`breastscreen.specs.prepare_mammogram`);
* training: one random image per view, the family's random window augmentation (NYU window
  jitter / MV-DCN crop noise), heatmap channels moved by the same draw;
* validation: every image of a view (rows averaged after the model, as ``predict`` does), the
  stored window only.

Randomness: the augmentation of item ``i`` in epoch ``e`` comes from a generator seeded with
``(seed, e, i)`` (call :meth:`MammoExamDataset.set_epoch`), so results do not depend on the
number of DataLoader workers. Prepared images are kept in an in-memory cache up to ``cache_mb``
megabytes (per process: with ``num_workers > 0`` each worker has its own).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.data.types import MG_VIEWS, Exam, ImageRef, Modality
from breastscreen.specs import MultiViewSpec, PreparedImage
from breastscreen.errors import BreastscreenError
from breastscreen.labels import BIRADS_CLASSES, BREAST_LABELS
from breastscreen.training.samplers import epoch_rng

# Full-resolution window jitter of the NYU classifier's training augmentation (pixels).
NYU_JITTER_PX = 100.0


class ImageCache:
    """A size-limited least-recently-used cache of prepared images keyed by file path."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.nbytes = 0
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        """The cached item (marked most recently used) or None."""
        entry = self._items.get(key)
        if entry is None:
            return None
        self._items.move_to_end(key)
        return entry[0]

    def put(self, key: str, item: Any, nbytes: int) -> None:
        """Store ``item`` of ``nbytes`` unless it alone exceeds the limit; evict the oldest to make room."""
        if nbytes > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        while self._items and self.nbytes + nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1][1]
        self._items[key] = (item, nbytes)
        self.nbytes += nbytes


def check_preprocessed(exams: Sequence[Exam], source: str = "manifest") -> float:
    """Check that every mammography image carries a preprocessing record; return the common scale."""
    scales = set()
    for exam in exams:
        for view, image in exam.iter_images():
            rec = image.preprocessing
            if not rec or "window" not in rec or "scale" not in rec:
                raise BreastscreenError(
                    f"{source}: exam {exam.exam_id} view {view} is not preprocessed (no preprocessing window); "
                    "run `breastscreen preprocess MANIFEST --out DIR --scale F` and train on DIR/manifest.jsonl"
                )
            scales.add(float(rec["scale"]))
    if not scales:
        raise BreastscreenError(f"{source}: no images")
    if len(scales) > 1:
        raise BreastscreenError(f"{source}: images are preprocessed at different scales {sorted(scales)}; use one scale")
    return scales.pop()


def prepare_view(spec: Any, image: ImageRef, view: str, cache: ImageCache | None = None) -> PreparedImage:
    """``spec.prepare(image, view)`` through the cache."""
    key = f"{image.path}#{image.frame}"
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    prepared = spec.prepare(image, view)
    if cache is not None:
        cache.put(key, prepared, prepared.pixels.nbytes + (prepared.mask.nbytes if prepared.mask is not None else 0))
    return prepared


class HeatmapLookup:
    """Finds the heatmap file of an image: ``preprocessing["heatmap_path"]`` or ``DIR/<exam>_<VIEW>_<k>.npz``."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise BreastscreenError(f"heatmap folder not found: {self.folder}")

    def path(self, exam_id: str, view: str, index: int, image: ImageRef) -> Path:
        """Path of the heatmap file; raises naming the image when there is none."""
        from breastscreen.data.heatmaps import heatmap_filename

        if self.folder is not None:
            p = self.folder / heatmap_filename(exam_id, view, index)
            if p.is_file():
                return p
        rec = image.preprocessing or {}
        if rec.get("heatmap_path") and Path(rec["heatmap_path"]).is_file():
            return Path(rec["heatmap_path"])
        where = self.folder if self.folder is not None else "the manifest (preprocessing.heatmap_path)"
        raise BreastscreenError(
            f"no heatmap for exam {exam_id} view {view} image {index} in {where}; "
            "run `breastscreen heatmaps` on this manifest with the patch model first"
        )

    def load(self, exam_id: str, view: str, index: int, image: ImageRef, shape: tuple[int, int]) -> np.ndarray:
        """Heatmaps [2, H, W] (benign, malignant) of the image, checked against its shape."""
        from breastscreen.data.heatmaps import read_heatmap_file

        path = self.path(exam_id, view, index, image)
        maps, _ = read_heatmap_file(path)
        if tuple(maps.shape[1:]) != tuple(shape):
            raise BreastscreenError(f"{path}: heatmap shape {maps.shape[1:]} differs from the preprocessed image {shape}")
        return maps


def breast_targets(exam: Exam) -> np.ndarray:
    """[4] labels in BREAST_LABELS order: 1/0, and -1 where a label is unknown."""
    out = []
    for name in BREAST_LABELS:
        side = "L" if name.startswith("left") else "R"
        value = getattr(exam.label(side), name.split("_", 1)[1])
        out.append(-1 if value is None else int(value))
    return np.asarray(out, dtype=np.int64)


def birads_target(exam: Exam) -> int | None:
    """Class index of the exam's BI-RADS among 0/1/2, or None for other values."""
    value = None if exam.birads is None else str(exam.birads).upper()
    return BIRADS_CLASSES.index(value) if value in BIRADS_CLASSES else None


class MammoExamDataset(Dataset):
    """Four-view exams of a preprocessed manifest as model inputs built by ``spec`` (see the module docstring).

    Items: ``{"views": {view: float32 [R, C, h, w]}, "present": {view: bool [R]}, "target": ...,
    "index": i}`` with ``R = 1`` in training; :func:`collate_exams` stacks the rows of a batch and
    records which item each row belongs to (``group``). ``target`` is the [4] breast labels
    (``spec.task == "cancer"``) or the BI-RADS class index (``"birads"``).
    """

    def __init__(
        self,
        exams: Sequence[Exam],
        spec: MultiViewSpec,
        heatmaps: HeatmapLookup | None = None,
        augment: bool = False,
        seed: int = 0,
        cache_mb: float = 0.0,
        source: str = "manifest",
    ) -> None:
        self.exams = [e for e in exams if e.modality is Modality.MG]
        if not self.exams:
            raise BreastscreenError(f"{source}: no mammography exams")
        self.scale = check_preprocessed(self.exams, source)
        if not math.isclose(self.scale, spec.scale):
            raise BreastscreenError(f"{source}: images are preprocessed at scale {self.scale}, the model spec "
                                    f"says {spec.scale}")
        if (heatmaps is not None) != spec.needs_heatmaps:
            raise BreastscreenError(f"{source}: the model takes {list(spec.channels)} but heatmaps were "
                                    f"{'given' if heatmaps is not None else 'not given'}")
        self.spec = spec
        self.task = spec.task
        self.heatmaps = heatmaps
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.cache = ImageCache(cache_mb) if cache_mb > 0 else None
        if self.task == "birads":
            self.targets = [birads_target(e) for e in self.exams]
        else:
            self.targets = [breast_targets(e) for e in self.exams]

    @property
    def channels(self) -> int:
        """Input channels per view (1 image-only, 3 with heatmaps)."""
        return self.spec.in_channels

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws :meth:`__getitem__` uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.exams)

    def positive(self) -> np.ndarray:
        """Per exam: True when any breast has a positive label (a biopsied exam)."""
        return np.array([bool(e.any_biopsy) for e in self.exams])

    def __getitem__(self, i: int) -> dict[str, Any]:
        exam = self.exams[i]
        rng = epoch_rng(self.seed, self.epoch, 1 + i) if self.augment else None
        prepared: dict[str, list[PreparedImage]] = {}
        maps: dict[str, list[np.ndarray | None]] = {}
        for view in MG_VIEWS:
            images = exam.views.get(view, [])
            prepared[view] = [prepare_view(self.spec, im, view, self.cache) for im in images]
            maps[view] = [self.heatmaps.load(exam.exam_id, view, k, im, p.pixels.shape) if self.heatmaps else None
                          for k, (im, p) in enumerate(zip(images, prepared[view]))]
        inputs, present = self.spec.exam_rows(exam.exam_id, prepared, maps, rng=rng)
        target = self.targets[i]
        target_t = torch.tensor(-1 if target is None else target) if self.task == "birads" else torch.from_numpy(target)
        return {"views": {v: torch.from_numpy(x) for v, x in inputs.items()},
                "present": {v: torch.from_numpy(p) for v, p in present.items()},
                "target": target_t, "index": i}


def collate_exams(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the rows of a batch of exam items; ``group[r]`` is the batch position of row ``r``."""
    views = {v: torch.cat([it["views"][v] for it in items]) for v in items[0]["views"]}
    present = {v: torch.cat([it["present"][v] for it in items]) for v in items[0]["present"]}
    rows = [next(iter(it["views"].values())).shape[0] for it in items]
    group = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(rows))
    return {"views": views, "present": present, "group": group,
            "target": torch.stack([it["target"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


def group_mean(values: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` rows per group 0..n-1 (the rows of one exam averaged)."""
    out = torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device)
    out.index_add_(0, group.to(values.device), values)
    counts = torch.bincount(group.to(values.device), minlength=n).to(values.dtype)
    return out / counts.view(-1, *([1] * (values.dim() - 1)))


def load_exams(path: str | os.PathLike[str]) -> list[Exam]:
    """Read a manifest, with a clear error when it is missing."""
    from breastscreen.data.manifest import read_manifest

    p = Path(path)
    if not p.is_file():
        raise BreastscreenError(f"manifest not found: {p}")
    return read_manifest(p)


def describe_exams(exams: Sequence[Exam], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Training-data description for checkpoint metadata and model cards."""
    n_mal = sum(1 for e in exams for s in ("L", "R", "U") if e.label(s).malignant == 1)
    n_ben = sum(1 for e in exams for s in ("L", "R", "U") if e.label(s).benign == 1)
    return {
        "manifest": str(Path(path).resolve()),
        "n_exams": len(exams),
        "n_biopsied_exams": sum(1 for e in exams if e.any_biopsy),
        "n_malignant_breasts": n_mal,
        "n_benign_breasts": n_ben,
        "synthetic": all(str(e.meta.get("synthetic", "")).lower() in ("true", "1") or e.meta.get("source") == "synthetic"
                         for e in exams) if exams else False,
    }


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")
