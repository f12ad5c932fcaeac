"""Breasts as bags of ultrasound images for training: a prepared-image cache, a dataset, collation.

The ultrasound classifier (Shen et al. 2021) sees all images of one breast at once. Every image
is prepared once by the model's spec (:meth:`breastscreen.specs.USSpec.prepare`: 8-bit grey,
field-of-view crop, area resize) into an :class:`ImageCache` (optionally kept as one ``.npz``),
and :class:`BagDataset` serves each breast's bag through the spec's input builder
(:meth:`~breastscreen.specs.USSpec.bag_input`), the same function the Predictor calls, so a
validation bag and a predicted bag are the same tensor. :func:`collate_bags` pads a batch to
``[B, K_max, C, S, S]`` with a ``[B, K_max]`` boolean mask.

Augmentation randomness comes from a generator seeded by ``(seed, epoch, breast index)``, so an
epoch is reproducible whatever the order or the number of data-loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from breastscreen.data.bags import Breast
from breastscreen.data.types import ImageRef
from breastscreen.errors import BreastscreenError, ImageReadError, PreprocessError
from breastscreen.specs import PreparedImage, USSpec
from breastscreen.specs.us import dedupe
from breastscreen.utils import atomic_path

CACHE_VERSION = 2


def image_key(image: ImageRef) -> str:
    """Cache key of an image: its path plus the frame number of multi-frame files."""
    return image.path if image.frame is None else f"{image.path}#{image.frame}"


@dataclass
class CacheReport:
    """Images left out of the cache and why."""

    excluded: dict[str, str] = field(default_factory=dict)  # path -> reason

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        reasons: dict[str, int] = {}
        for r in self.excluded.values():
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        return {"n_excluded": len(self.excluded), "by_reason": reasons, "excluded": dict(self.excluded)}


class ImageCache:
    """Prepared uint8 images (``spec.prepare_size`` square) keyed by :func:`image_key`, with their crop boxes.

    ``preparation`` is the spec's :meth:`~breastscreen.specs.USSpec.preparation_key` (crop and
    annotation removal): a cache is only reused by a spec that prepares the same way.
    """

    def __init__(self, size: int, entries: dict[str, PreparedImage] | None = None, preparation: str = "") -> None:
        if size < 8:
            raise ValueError(f"cache image size must be >= 8 pixels, got {size}")
        self.size = int(size)
        self.entries: dict[str, PreparedImage] = dict(entries or {})
        self.preparation = str(preparation)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, image: ImageRef) -> PreparedImage:
        """The prepared image; raises naming the file when it is missing."""
        key = image_key(image)
        if key not in self.entries:
            raise BreastscreenError(f"image {key} is not in the cache (excluded or never prepared)")
        return self.entries[key]

    def save(self, path: str | Path) -> None:
        """Write the cache atomically as an ``.npz`` (no pickles: loadable with allow_pickle=False)."""
        keys = sorted(self.entries)
        e = self.entries
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh, version=np.array(CACHE_VERSION), size=np.array(self.size), keys=np.array(keys, dtype=np.str_),
                    preparation=np.array(self.preparation, dtype=np.str_),
                    pixels=np.stack([e[k].pixels.astype(np.uint8) for k in keys]) if keys
                    else np.zeros((0, self.size, self.size), np.uint8),
                    boxes=np.array([e[k].record["crop_box"] for k in keys], dtype=np.int64).reshape(-1, 4),
                    shapes=np.array([e[k].record["original_shape"] for k in keys], dtype=np.int64).reshape(-1, 2),
                )

    @classmethod
    def load(cls, path: str | Path) -> "ImageCache":
        """Read a cache written by :meth:`save` (another version is refused, so it gets rebuilt)."""
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise BreastscreenError(f"{path}: cache version {int(z['version'])}, expected {CACHE_VERSION}")
            entries = {
                str(k): PreparedImage(px.astype(np.float32), {"crop_box": [int(v) for v in box],
                                                              "original_shape": [int(v) for v in shp]}, None, str(k))
                for k, px, box, shp in zip(z["keys"], z["pixels"], z["boxes"], z["shapes"])
            }
            # Caches written before the key existed were all prepared the legacy way ("").
            preparation = str(z["preparation"]) if "preparation" in z.files else ""
            return cls(int(z["size"]), entries, preparation)


def build_cache(
    images: Sequence[ImageRef],
    spec: USSpec,
    existing: ImageCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ImageCache, CacheReport]:
    """Prepare ``images`` with ``spec`` into a cache; images the rules exclude are reported.

    ``existing`` is extended when it was prepared the same way (size and
    :meth:`~breastscreen.specs.USSpec.preparation_key`), else ignored.

    Unreadable images raise: silently skipping them would change the cohort.
    """
    key = spec.preparation_key()
    reuse = existing is not None and existing.size == spec.prepare_size and existing.preparation == key
    cache = existing if reuse and existing is not None else ImageCache(spec.prepare_size, preparation=key)
    report = CacheReport()
    for i, image in enumerate(images):
        key = image_key(image)
        if progress is not None:
            progress(i, len(images))
        if key in cache or key in report.excluded:
            continue
        try:
            prepared = spec.prepare(image)
            prepared.source = key
            cache.entries[key] = prepared
        except ImageReadError:
            raise
        except PreprocessError as exc:
            report.excluded[key] = str(exc)
        except (OSError, ValueError) as exc:
            raise ImageReadError(f"cannot read ultrasound image {key}: {exc}") from exc
    return cache, report


class BagDataset(Dataset):
    """Breasts as bags of cached images: item ``i`` is a dict with ``images`` [K, C, S, S] etc.

    ``train=True`` draws the spec's augmentation from a generator seeded by ``(seed, epoch, i)``;
    call :meth:`set_epoch` each epoch. ``max_images`` caps the bag size in training by drawing a
    random subset. Images excluded from the cache and duplicates inside a bag are left out
    (as the Predictor does); breasts with no image left are dropped and listed in ``dropped``.
    ``lesion_masks=True`` (training with lesion supervision) adds ``lesions`` [K, 2, S, S]
    (benign, malignant masks moved by each image's augmentation) and ``lesion_known`` [K]
    (see :func:`lesion_class_map`); the images are the same as without it.
    """

    def __init__(self, breasts: Sequence[Breast], cache: ImageCache, spec: USSpec, train: bool = False, seed: int = 0,
                 max_images: int | None = None, with_labels: bool = True, lesion_masks: bool = False) -> None:
        if cache.size != spec.prepare_size:
            raise BreastscreenError(f"the cache holds {cache.size}px images, the spec prepares {spec.prepare_size}px")
        self.cache, self.spec = cache, spec
        self.train, self.seed, self.max_images = train, int(seed), max_images
        self.with_labels = with_labels
        self.epoch = 0
        self.breasts: list[Breast] = []
        self.bags: list[list[PreparedImage]] = []
        self.image_ids: list[list[str]] = []
        self.dropped: list[str] = []
        # per kept image: None (no lesion supervision) or a [P, P] uint8 of class bits (1 benign, 2 malignant)
        self.lesions: list[list[np.ndarray | None]] = []
        for b in breasts:
            kept, _ = dedupe([cache.entries[image_key(im)] for im in b.images if image_key(im) in cache])
            if not kept:
                self.dropped.append(b.breast_id)
                continue
            if with_labels:
                b.targets  # noqa: B018 - raises on unknown labels before training starts
            self.breasts.append(b)
            self.bags.append(kept)
            self.image_ids.append([p.source for p in kept])
            if lesion_masks:
                refs = {image_key(im): im for im in b.images}
                self.lesions.append([lesion_class_map(refs[p.source], p.record, cache.size, b.targets) for p in kept])
        self.lesion_masks = bool(lesion_masks)

    def __len__(self) -> int:
        return len(self.breasts)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        bag = self.bags[index]
        order = list(range(len(bag)))
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        if rng is not None and self.max_images is not None and len(order) > self.max_images:
            order = sorted(rng.choice(len(order), size=self.max_images, replace=False).tolist())
        if self.lesion_masks:
            stack_np, lesions, known = self._with_lesions(index, order, rng)
            stack = torch.from_numpy(stack_np)
        else:
            stack = torch.from_numpy(self.spec.bag_input([bag[j] for j in order], rng))
        item: dict[str, Any] = {"images": stack, "index": index, "image_ids": [self.image_ids[index][j] for j in order]}
        if self.lesion_masks:
            item["lesions"], item["lesion_known"] = torch.from_numpy(lesions), torch.from_numpy(known)
        if self.with_labels:
            item["labels"] = torch.tensor(self.breasts[index].targets, dtype=torch.float32)
        return item


    def _with_lesions(self, index: int, order: list[int],
                      rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bag input [K, C, S, S] (as :meth:`USSpec.bag_input` draws it), lesions [K, 2, S, S] uint8, known [K]."""
        size = self.spec.input_size
        images, lesions, known = [], np.zeros((len(order), 2, size, size), np.uint8), np.zeros(len(order), bool)
        for slot, j in enumerate(order):
            bits = self.lesions[index][j]
            classes = None if bits is None else np.stack([(bits & 1) > 0, (bits & 2) > 0]).astype(np.uint8)
            image, moved = self.spec.image_input_and_lesions(self.bags[index][j], classes, rng)
            images.append(image)
            if moved is not None:
                lesions[slot], known[slot] = moved, True
        return self.spec.stack_images(images), lesions, known


def lesion_class_map(image: ImageRef, record: dict[str, Any], size: int,
                     targets: Sequence[float] | None) -> np.ndarray | None:
    """Lesion masks of ``image`` in its prepared geometry as class bits (1 benign, 2 malignant), or None.

    An image with masks is taken to have every lesion masked, so pixels outside the masks are
    lesion-free for both classes. A mask without a label takes the breast's label when exactly
    one of (benign, malignant) is positive; otherwise the image is left unsupervised (None), as
    is an image without masks. Raises naming the file when a mask cannot be read or does not
    match its image.
    """
    if not image.masks:
        return None
    from breastscreen.evaluation.localisation import mask_in_prepared_geometry
    from breastscreen.preprocess.pipeline import load_mask_in_original

    positive = [c for c, t in zip(("benign", "malignant"), targets or ()) if t == 1]
    shape = tuple(int(v) for v in record["original_shape"])
    bits = np.zeros((size, size), np.uint8)
    for m in image.masks:
        label = m.label or (positive[0] if len(positive) == 1 else None)
        if label is None:
            return None
        try:
            region = mask_in_prepared_geometry(load_mask_in_original(m.path, image, shape), record, size)
        except PreprocessError as exc:
            raise BreastscreenError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise BreastscreenError(f"{m.path}: cannot read the lesion mask ({exc})") from None
        bits |= region.astype(np.uint8) * (1 if label == "benign" else 2)
    return bits


def collate_bags(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad bags to the largest K of the batch: ``images`` [B, K, C, S, S], ``mask`` [B, K] bool.

    Padded slots hold zeros and ``mask`` False; ``labels`` [B, 2] when items carry labels;
    ``lesions`` [B, K, 2, S, S] and ``lesion_known`` [B, K] when items carry lesion masks.
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
    if "lesions" in items[0]:
        lesions = torch.zeros(len(items), k_max, *items[0]["lesions"].shape[1:], dtype=items[0]["lesions"].dtype)
        known = torch.zeros(len(items), k_max, dtype=torch.bool)
        for i, it in enumerate(items):
            k = it["lesions"].shape[0]
            lesions[i, :k], known[i, :k] = it["lesions"], it["lesion_known"]
        out["lesions"], out["lesion_known"] = lesions, known
    return out
