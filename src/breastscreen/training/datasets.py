"""Datasets over PREPROCESSED manifests (from ``breastscreen preprocess``).

Exam datasets (BI-RADS and breast-level models) give, per exam, the four standard views cut
to their fixed NYU window (``preprocessing["window"]``, placed by preprocessing at the
manifest's scale), optionally with the two heatmap channels (benign, malignant) cut with the
same window. The input of one view is built by :func:`view_input`:

1. the stored 16-bit pixels are mapped back to the original intensity units
   (``preprocessing["intensity"]``);
2. the window is cut out — in training with the NYU random window jitter
   (:class:`breastscreen.preprocess.augment.NYUWindowJitter`: each side and the size move by up
   to ``jitter_px`` full-resolution pixels, scaled, then resized back), the SAME draw moving
   the heatmap channels; in validation exactly the stored window;
3. the image channel is standardised over the window (mean 0, std 1); heatmap channels stay
   probabilities in [0, 1].

Randomness: the jitter of item ``i`` in epoch ``e`` comes from a generator seeded with
``(seed, e, i)`` (call :meth:`MammoExamDataset.set_epoch`), so results do not depend on the
number of DataLoader workers. Decoded images are kept in an in-memory cache up to
``cache_mb`` megabytes (per process: with ``num_workers > 0`` each worker has its own).
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

from breastscreen.data.types import MG_VIEWS, Exam, ImageRef, Modality, view_angle
from breastscreen.errors import BreastscreenError
from breastscreen.labels import BIRADS_CLASSES, BREAST_LABELS
from breastscreen.training.samplers import epoch_rng

# Full-resolution window jitter of the NYU classifier's training augmentation (pixels).
NYU_JITTER_PX = 100.0


class ImageCache:
    """A size-limited least-recently-used cache of decoded arrays keyed by file path."""

    def __init__(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.nbytes = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        """The cached array (marked most recently used) or None."""
        arr = self._items.get(key)
        if arr is not None:
            self._items.move_to_end(key)
        return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        """Store ``arr`` unless it alone exceeds the limit; evict the oldest entries to make room."""
        if arr.nbytes > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._items.pop(key).nbytes
        while self._items and self.nbytes + arr.nbytes > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1].nbytes
        self._items[key] = arr
        self.nbytes += arr.nbytes


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


def load_pixels(image: ImageRef, cache: ImageCache | None = None) -> np.ndarray:
    """Preprocessed pixels of ``image`` in original intensity units (float32)."""
    from breastscreen.data.readers import load_image

    key = f"{image.path}#{image.frame}"
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    pixels = load_image(image.path, frame=image.frame).pixels.astype(np.float32)
    intensity = (image.preprocessing or {}).get("intensity") or {"mode": "original"}
    if intensity.get("mode") == "linear":
        pixels = pixels * float(intensity["scale"]) + float(intensity["offset"])
    if cache is not None:
        cache.put(key, pixels)
    return pixels


class HeatmapLookup:
    """Finds the heatmap file of an image: ``preprocessing["heatmap_path"]`` or ``DIR/<exam>_<VIEW>_<k>.npz``."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise BreastscreenError(f"heatmap folder not found: {self.folder}")

    def path(self, exam_id: str, view: str, index: int, image: ImageRef) -> Path:
        """Path of the heatmap file; raises naming the image when there is none."""
        from breastscreen.inference.heatmaps import heatmap_filename

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
        from breastscreen.inference.heatmaps import read_heatmap_file

        path = self.path(exam_id, view, index, image)
        maps, _ = read_heatmap_file(path)
        if tuple(maps.shape[1:]) != tuple(shape):
            raise BreastscreenError(f"{path}: heatmap shape {maps.shape[1:]} differs from the preprocessed image {shape}")
        return maps


def view_input(
    pixels: np.ndarray,
    record: dict[str, Any],
    heatmaps: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    jitter_px: float = NYU_JITTER_PX,
) -> np.ndarray:
    """Model input [C, h, w] of one view: window (jittered when ``rng`` is given), standardised image
    channel, then the heatmap channels cut with the same window (see the module docstring)."""
    from breastscreen.preprocess.augment import NYUWindowJitter
    from breastscreen.preprocess.mammo import standardize

    window = tuple(int(v) for v in record["window"])
    scale = float(record.get("scale", 1.0))
    jitter = NYUWindowJitter(
        image_keys=("image",),
        map_keys=("maps",) if heatmaps is not None else (),
        window=window,
        max_jitter=int(round(jitter_px * scale)),
    )
    sample: dict[str, Any] = {"image": pixels}
    if heatmaps is not None:
        sample["maps"] = heatmaps
    if rng is None:
        out = jitter.apply_params(sample, jitter.identity(pixels.shape))
    else:
        out = jitter(sample, rng)
    planes = [standardize(out["image"])[None]]
    if heatmaps is not None:
        planes.append(np.asarray(out["maps"], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(planes, axis=0), dtype=np.float32)


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
    """Four-view exams of a preprocessed manifest as model inputs (see the module docstring).

    Items: ``{"views": {view: float32 [C, h, w]}, "present": {view: bool}, "target": ...}``
    where ``target`` is the [4] breast labels (``task="cancer"``) or the BI-RADS class index
    (``task="birads"``). A missing view is an all-zero input with ``present`` False. A view with
    several images uses a random one in training and the first one otherwise.
    """

    def __init__(
        self,
        exams: Sequence[Exam],
        task: str = "cancer",
        heatmaps: HeatmapLookup | None = None,
        augment: bool = False,
        seed: int = 0,
        jitter_px: float = NYU_JITTER_PX,
        cache_mb: float = 0.0,
        source: str = "manifest",
    ) -> None:
        if task not in ("cancer", "birads"):
            raise ValueError(f"task must be 'cancer' or 'birads', got {task!r}")
        self.exams = [e for e in exams if e.modality is Modality.MG]
        if not self.exams:
            raise BreastscreenError(f"{source}: no mammography exams")
        self.scale = check_preprocessed(self.exams, source)
        self.task = task
        self.heatmaps = heatmaps
        self.augment = augment
        self.seed = int(seed)
        self.jitter_px = float(jitter_px)
        self.epoch = 0
        self.cache = ImageCache(cache_mb) if cache_mb > 0 else None
        self.window_shapes = self._window_shapes()
        if task == "birads":
            self.targets = [birads_target(e) for e in self.exams]
        else:
            self.targets = [breast_targets(e) for e in self.exams]

    def _window_shapes(self) -> dict[str, tuple[int, int]]:
        shapes: dict[str, tuple[int, int]] = {}
        for exam in self.exams:
            for view, image in exam.iter_images():
                x0, y0, x1, y1 = image.preprocessing["window"]
                shape = (int(y1 - y0), int(x1 - x0))
                angle = view_angle(view)
                if shapes.setdefault(angle, shape) != shape:
                    raise BreastscreenError(
                        f"exam {exam.exam_id} view {view}: window {shape} differs from other {angle} windows {shapes[angle]}"
                    )
        return shapes

    @property
    def channels(self) -> int:
        """Input channels per view (1 image-only, 3 with heatmaps)."""
        return 1 if self.heatmaps is None else 3

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
        views: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        for view in MG_VIEWS:
            images = exam.views.get(view, [])
            angle = view_angle(view)
            if not images and angle not in self.window_shapes:
                raise BreastscreenError(f"no exam of this manifest has a {angle} view; the four-view models need both")
            if not images:
                h, w = self.window_shapes[angle]
                views[view] = torch.zeros(self.channels, h, w)
                present[view] = torch.tensor(False)
                continue
            k = int(rng.integers(len(images))) if (rng is not None and len(images) > 1) else 0
            image = images[k]
            pixels = load_pixels(image, self.cache)
            maps = None
            if self.heatmaps is not None:
                maps = self.heatmaps.load(exam.exam_id, view, k, image, pixels.shape)
            views[view] = torch.from_numpy(view_input(pixels, image.preprocessing, maps, rng, self.jitter_px))
            present[view] = torch.tensor(True)
        target = self.targets[i]
        target_t = torch.tensor(-1 if target is None else target) if self.task == "birads" else torch.from_numpy(target)
        return {"views": views, "present": present, "target": target_t}


def load_exams(path: str | os.PathLike[str]) -> list[Exam]:
    """Read a manifest, with a clear error when it is missing."""
    from breastscreen.data.manifest import read_manifest

    p = Path(path)
    if not p.is_file():
        raise BreastscreenError(f"manifest not found: {p}")
    return read_manifest(p)


def describe_exams(exams: Sequence[Exam], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Training-data description for checkpoint metadata and model cards."""
    n_mal = sum(1 for e in exams for s in ("L", "R") if e.label(s).malignant == 1)
    n_ben = sum(1 for e in exams for s in ("L", "R") if e.label(s).benign == 1)
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
