"""Breasts as bags of ultrasound images: records, a preprocessed-image cache, a dataset, collation.

The ultrasound classifier (Shen et al. 2021) sees all images of one breast at once. This
module turns exams into :class:`Breast` records (one per exam and ``L-US``/``R-US``/``U-US``
view), preprocesses every image once (periphery crop, exclusion of mostly-empty and duplicate
images, resize to a square) into a uint8 :class:`ImageCache` kept as one ``.npz`` file, and
serves bags as tensors: :class:`BagDataset` yields ``[K, C, S, S]`` per breast (with the paper's
augmentation in training) and :func:`collate_bags` pads a batch to ``[B, K_max, C, S, S]``
with a ``[B, K_max]`` boolean mask.

Augmentation randomness comes from a generator seeded by ``(seed, epoch, breast index)``, so an
epoch is reproducible whatever the order or the number of data-loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.data.bags import breast_bags
from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality, view_side
from breastscreen.errors import BreastscreenError, ImageReadError, PreprocessError
from breastscreen.preprocess.ultrasound import MAX_ZERO_FRACTION, normalize, pixel_hash, zero_fraction
from breastscreen.utils import atomic_path

CACHE_VERSION = 1

# BI-RADS categories as an ordered suspicion scale; sub-categories of 4 sort between 4 and 5.
_BIRADS_ORDER = {"0": 0.0, "1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "4A": 4.1, "4B": 4.2, "4C": 4.3, "5": 5.0, "6": 6.0}


@dataclass
class Breast:
    """One breast of one exam: the bag of its ultrasound images and its labels."""

    breast_id: str
    exam_id: str
    view: str
    images: list[ImageRef]
    label: BreastLabel
    patient_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def side(self) -> str | None:
        """``"L"``, ``"R"`` or ``None`` (unknown laterality)."""
        return view_side(self.view)

    @property
    def targets(self) -> tuple[int, int]:
        """(benign, malignant) as 0/1; unknown labels raise."""
        if not self.label.known:
            raise BreastscreenError(f"breast {self.breast_id} has unknown labels {self.label}")
        return int(self.label.benign), int(self.label.malignant)


def birads_score(value: Any) -> float | None:
    """A BI-RADS category (``2``, ``"4A"`` ...) as a number on an ordered scale, or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    key = str(value).strip().upper()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in _BIRADS_ORDER:
        raise BreastscreenError(f"BI-RADS must be one of {sorted(_BIRADS_ORDER)}, got {value!r}")
    return _BIRADS_ORDER[key]


def breasts_from_exams(exams: Iterable[Exam], require_labels: bool = False) -> list[Breast]:
    """One :class:`Breast` per ultrasound exam and view with images, in manifest order.

    Labels come from :func:`breastscreen.data.bags.breast_bags` (``exam.labels`` for L/R and ``U``, the unknown-side bag).

    Each breast's ``meta`` gets ``birads`` (the most suspicious per-image BI-RADS in the
    bag, a float on the scale of :func:`birads_score`, or the exam's BI-RADS), plus any per-image
    ``fold`` and ``device`` values when all images agree.
    """
    out: list[Breast] = []
    for exam in exams:
        if exam.modality is not Modality.US:
            raise BreastscreenError(f"exam {exam.exam_id} is {exam.modality.value}, expected ultrasound (US)")
        for view, images, label in breast_bags(exam):
            if require_labels and not label.known:
                raise BreastscreenError(f"exam {exam.exam_id} view {view}: breast labels are unknown")
            meta: dict[str, Any] = {}
            scores = [birads_score(im.meta.get("birads")) for im in images]
            scores = [s for s in scores if s is not None]
            if scores:
                meta["birads"] = max(scores)
            elif exam.birads is not None:
                meta["birads"] = birads_score(exam.birads)
            for key in ("fold", "device"):
                values = {str(im.meta[key]) for im in images if key in im.meta}
                if len(values) == 1:
                    meta[key] = next(im.meta[key] for im in images if key in im.meta)
            out.append(
                Breast(
                    breast_id=f"{exam.exam_id}/{view}",
                    exam_id=exam.exam_id,
                    view=view,
                    images=list(images),
                    label=label,
                    patient_id=exam.patient_id,
                    meta=meta,
                )
            )
    return out


# --------------------------------------------------------------------------- image cache


@dataclass
class CachedImage:
    """One preprocessed image in the cache and how it maps back to the original."""

    pixels: np.ndarray  # uint8 [S, S]
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels
    original_shape: tuple[int, int]


@dataclass
class CacheReport:
    """Images left out of the cache and why (the issue asks for them to be reported)."""

    excluded: dict[str, str] = field(default_factory=dict)  # path -> reason

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        reasons: dict[str, int] = {}
        for r in self.excluded.values():
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        return {"n_excluded": len(self.excluded), "by_reason": reasons, "excluded": dict(self.excluded)}


def image_key(image: ImageRef) -> str:
    """Cache key of an image: its path plus the frame number of multi-frame files."""
    return image.path if image.frame is None else f"{image.path}#{image.frame}"


class ImageCache:
    """Preprocessed square uint8 images keyed by :func:`image_key`, stored in one ``.npz``."""

    def __init__(self, size: int, entries: dict[str, CachedImage] | None = None) -> None:
        if size < 8:
            raise ValueError(f"cache image size must be >= 8 pixels, got {size}")
        self.size = int(size)
        self.entries: dict[str, CachedImage] = dict(entries or {})

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, image: ImageRef) -> CachedImage:
        """The cached entry of ``image``; raises naming the file when it is missing."""
        key = image_key(image)
        if key not in self.entries:
            raise BreastscreenError(f"image {key} is not in the cache (excluded or never preprocessed)")
        return self.entries[key]

    def save(self, path: str | Path) -> None:
        """Write the cache atomically as an ``.npz`` (no pickles: loadable with allow_pickle=False)."""
        keys = sorted(self.entries)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    version=np.array(CACHE_VERSION),
                    size=np.array(self.size),
                    keys=np.array(keys, dtype=np.str_),
                    pixels=np.stack([self.entries[k].pixels for k in keys])
                    if keys
                    else np.zeros((0, self.size, self.size), np.uint8),
                    boxes=np.array([self.entries[k].crop_box for k in keys], dtype=np.int64).reshape(-1, 4),
                    shapes=np.array([self.entries[k].original_shape for k in keys], dtype=np.int64).reshape(-1, 2),
                )

    @classmethod
    def load(cls, path: str | Path) -> "ImageCache":
        """Read a cache written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise BreastscreenError(f"{path}: cache version {int(z['version'])}, expected {CACHE_VERSION}")
            size = int(z["size"])
            entries = {
                str(k): CachedImage(px, tuple(int(v) for v in box), (int(shp[0]), int(shp[1])))
                for k, px, box, shp in zip(z["keys"], z["pixels"], z["boxes"], z["shapes"])
            }
        return cls(size, entries)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey pixels as uint8: 8-bit data unchanged, wider data linearly rescaled from its range."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        # Colour ultrasound screenshots: Doppler overlays are not used by the model.
        pixels = cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2:
        raise ValueError(f"ultrasound image must be 2-D grey or RGB, got shape {pixels.shape}")
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(pixels).astype(np.uint8)
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    return np.rint((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def default_loader(image: ImageRef) -> np.ndarray:
    """Read an image's pixels with the shared reader (DICOM or PNG)."""
    from breastscreen.data.readers import load_image

    return load_image(image.path, frame=image.frame).pixels


def default_cropper(pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Periphery crop of the preprocess stage: (cropped pixels, box x0, y0, x1, y1)."""
    from breastscreen.preprocess.ultrasound import crop_ultrasound

    crop, record = crop_ultrasound(pixels)
    x0, y0, x1, y1 = (int(v) for v in record["crop_box"])
    return crop, (x0, y0, x1, y1)


def build_cache(
    images: Sequence[ImageRef],
    size: int,
    loader: Callable[[ImageRef], np.ndarray] = default_loader,
    cropper: Callable[[np.ndarray], tuple[np.ndarray, tuple[int, int, int, int]]] | None = default_cropper,
    max_zero_fraction: float = MAX_ZERO_FRACTION,
    existing: ImageCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ImageCache, CacheReport]:
    """Preprocess ``images`` into a cache of ``size``×``size`` uint8 arrays.

    Each image is read, converted to 8-bit grey, cropped to its field of view by ``cropper``
    (None = no crop), and resized (area interpolation, aspect ratio not kept, as the paper
    resizes to a square). Images with more than ``max_zero_fraction`` zero pixels and exact
    duplicates of an earlier image (same decoded pixels) are left out and reported, and so are
    images in which the cropper finds no field of view. Unreadable images raise: silently
    skipping them would change the cohort.
    """
    cache = existing if existing is not None else ImageCache(size)
    if cache.size != size:
        raise ValueError(f"existing cache holds {cache.size}px images, asked for {size}px")
    report = CacheReport()
    seen: dict[str, str] = {}
    for i, image in enumerate(images):
        key = image_key(image)
        if progress is not None:
            progress(i, len(images))
        if key in cache or key in report.excluded:
            continue
        try:
            raw = to_uint8(loader(image))
        except (OSError, ValueError) as exc:
            raise ImageReadError(f"cannot read ultrasound image {key}: {exc}") from exc
        digest = pixel_hash(raw)
        if digest in seen:
            report.excluded[key] = f"duplicate: same pixels as {seen[digest]}"
            continue
        seen[digest] = key
        zf = zero_fraction(raw)
        if zf > max_zero_fraction:
            report.excluded[key] = f"mostly-empty: {zf:.0%} zero pixels (limit {max_zero_fraction:.0%})"
            continue
        if cropper is not None:
            try:
                cropped, box = cropper(raw)
            except PreprocessError as exc:
                report.excluded[key] = f"no-field-of-view: {exc}"
                continue
            cropped = to_uint8(cropped)
        else:
            cropped, box = raw, (0, 0, raw.shape[1], raw.shape[0])
        if cropped.size == 0:
            report.excluded[key] = "empty-crop: no field of view found"
            continue
        resized = cv2.resize(cropped, (size, size), interpolation=cv2.INTER_AREA)
        cache.entries[key] = CachedImage(resized.astype(np.uint8), box, (int(raw.shape[0]), int(raw.shape[1])))
    return cache, report


def map_to_cache_geometry(array: np.ndarray, entry: CachedImage, interpolation: int = cv2.INTER_NEAREST) -> np.ndarray:
    """Crop and resize an array in original image geometry (a lesion mask) like its cached image."""
    h, w = entry.original_shape
    if array.shape[:2] != (h, w):
        raise ValueError(f"array of shape {array.shape[:2]} does not match the original image {(h, w)}")
    x0, y0, x1, y1 = entry.crop_box
    crop = np.ascontiguousarray(array[y0:y1, x0:x1])
    s = entry.pixels.shape[0]
    return cv2.resize(crop, (s, s), interpolation=interpolation)


# --------------------------------------------------------------------------- dataset


def resize_only(pixels: np.ndarray, size: int) -> np.ndarray:
    """Validation/test transform: bilinear resize to ``size``×``size`` (normalisation follows)."""
    if pixels.shape == (size, size):
        return pixels.astype(np.float32)
    return cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def default_augment(pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's training augmentation (preprocess stage): flip, rotation, translation,
    scale, shear, then bilinear resize to ``size``×``size`` (normalisation follows)."""
    from breastscreen.preprocess.ultrasound import USAugmentConfig, apply_us_augment, draw_us_params

    config = USAugmentConfig(size=(size, size))
    return apply_us_augment(pixels, draw_us_params(rng, config), config.size)[0]


class ScaledAugment:
    """The paper's augmentation with its geometric ranges scaled by ``strength`` (1 = paper).

    Rotation (±45°), shear (±25°) and the scale range's distance from 1 (0.7-1.5) are
    multiplied by ``strength``; flips (p = 0.5) and translation (10 %) are kept. Weaker
    settings suit short, small-data CPU schedules, where the paper's ranges underfit.
    """

    def __init__(self, strength: float = 1.0) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        self.strength = float(strength)

    def __call__(self, pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        from breastscreen.preprocess.ultrasound import USAugmentConfig, apply_us_augment, draw_us_params

        base = USAugmentConfig()
        s = self.strength
        lo, hi = base.scale_range
        config = USAugmentConfig(
            flip_p=base.flip_p, max_rotation=base.max_rotation * s, max_translate=base.max_translate,
            scale_range=(1.0 - (1.0 - lo) * s, 1.0 + (hi - 1.0) * s), max_shear=base.max_shear * s, size=(size, size),
        )
        return apply_us_augment(pixels, draw_us_params(rng, config), config.size)[0]


class BagDataset(Dataset):
    """Breasts as bags of cached images: item ``i`` is a dict with ``images`` [K, C, S, S] etc.

    ``train=True`` applies ``augment`` (default: the paper's augmentation) with a generator
    seeded by ``(seed, epoch, i)``; call :meth:`set_epoch` each epoch. ``max_images`` caps
    the bag size in training by drawing a random subset (all images are kept otherwise).
    Breasts whose images were all excluded from the cache are dropped; see ``dropped``.
    """

    def __init__(
        self,
        breasts: Sequence[Breast],
        cache: ImageCache,
        input_size: int,
        channels: int = 1,
        train: bool = False,
        seed: int = 0,
        max_images: int | None = None,
        augment: Callable[[np.ndarray, int, np.random.Generator], np.ndarray] | None = default_augment,
        with_labels: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.cache = cache
        self.input_size = int(input_size)
        self.channels = channels
        self.train = train
        self.seed = int(seed)
        self.max_images = max_images
        self.augment = augment
        self.with_labels = with_labels
        self.epoch = 0
        self.breasts: list[Breast] = []
        self.image_lists: list[list[ImageRef]] = []
        self.dropped: list[str] = []
        for b in breasts:
            kept = [im for im in b.images if image_key(im) in cache]
            if not kept:
                self.dropped.append(b.breast_id)
                continue
            if with_labels:
                b.targets  # noqa: B018 - raises on unknown labels before training starts
            self.breasts.append(b)
            self.image_lists.append(kept)

    def __len__(self) -> int:
        return len(self.breasts)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        breast = self.breasts[index]
        images = self.image_lists[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        order = list(range(len(images)))
        if self.train and self.max_images is not None and len(order) > self.max_images:
            order = sorted(rng.choice(len(order), size=self.max_images, replace=False).tolist())
        arrays = []
        for j in order:
            px = self.cache.get(images[j]).pixels
            if self.train and self.augment is not None:
                x = self.augment(px, self.input_size, rng)
            else:
                x = resize_only(px, self.input_size)
            arrays.append(normalize(x))
        stack = torch.from_numpy(np.stack(arrays)).unsqueeze(1)  # [K, 1, S, S]
        if self.channels == 3:
            stack = stack.expand(-1, 3, -1, -1).contiguous()
        item: dict[str, Any] = {"images": stack, "index": index, "image_ids": [image_key(images[j]) for j in order]}
        if self.with_labels:
            item["labels"] = torch.tensor(breast.targets, dtype=torch.float32)
        return item


def collate_bags(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad bags to the largest K of the batch: ``images`` [B, K, C, S, S], ``mask`` [B, K] bool.

    Padded slots hold zeros and ``mask`` False; ``labels`` [B, 2] when items carry labels.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    k_max = max(it["images"].shape[0] for it in items)
    c, h, w = items[0]["images"].shape[1:]
    images = torch.zeros(len(items), k_max, c, h, w, dtype=items[0]["images"].dtype)
    mask = torch.zeros(len(items), k_max, dtype=torch.bool)
    for i, it in enumerate(items):
        k = it["images"].shape[0]
        if it["images"].shape[1:] != (c, h, w):
            raise ValueError(f"bag {i} has images of shape {tuple(it['images'].shape[1:])}, expected {(c, h, w)}")
        images[i, :k] = it["images"]
        mask[i, :k] = True
    out: dict[str, Any] = {
        "images": images,
        "mask": mask,
        "index": torch.tensor([it["index"] for it in items]),
        "image_ids": [it["image_ids"] for it in items],
    }
    if "labels" in items[0]:
        out["labels"] = torch.stack([it["labels"] for it in items])
    return out
