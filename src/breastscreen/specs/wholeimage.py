"""Specs of the per-image mammography families (Shen et al. 2019; the global saliency network).

``image`` (:class:`ImageSpec`): a whole-image classifier sees one mammogram at a time. Input
``resize`` (the all-convolutional classifier): the preprocessed breast image (cropped, chest wall
left) resized to ``image_size`` (1152 x 896 in the paper) with area interpolation, standardised
over the whole image; ``window``: the NYU window of the view's angle (the global saliency
network). Training augments with the paper's flips, rotation, shear, zoom and intensity shift;
prediction averages up to the four exact flips (none, horizontal, vertical, both: the paper's
"augmented" AUC). A breast's probability is the ``aggregation`` (mean or max) of its images'.

``roi-patch`` (:class:`RoiPatchSpec`): the ROI patch classifier that the whole-image classifier
is built from; its patches are cut from images prepared exactly like the whole-image input
(same size), so the patch network's filters see the whole-image scale.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from breastscreen.errors import BreastscreenError
from breastscreen.labels import BREAST_LABELS, PATCH_CLASSES_5
from breastscreen.specs.base import PreparedImage, register_spec
from breastscreen.specs.mammo import MultiViewSpec, _MammoSpec

PAPER_IMAGE_SIZE = (1152, 896)
PAPER_PATCH_SIZE = 224
#: the four exact flips averaged at prediction time: (horizontal, vertical)
FLIPS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))
PATCH_CLASSES_3: tuple[str, ...] = ("background", "benign", "malignant")


def _check_size(value: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in value)
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise ValueError("must be (height, width) with both in [16, 8192]")
    return h, w


def resize_image(pixels: np.ndarray, size: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """``pixels`` (2-D, or [C, H, W]) resized to ``size`` = (h, w)."""
    import cv2

    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}[interpolation]
    h, w = size
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3:
        return np.stack([cv2.resize(a, (w, h), interpolation=flag) for a in arr])
    return cv2.resize(arr, (w, h), interpolation=flag)


@register_spec
class ImageSpec(_MammoSpec):
    """Per-view whole-image models: the all-convolutional classifier and the global saliency network."""

    family: Literal["image"] = "image"
    kind: Literal["allconv", "saliency"] = "allconv"
    input: Literal["resize", "window"] = "resize"
    image_size: tuple[int, int] = PAPER_IMAGE_SIZE
    aggregation: Literal["mean", "max"] = "mean"

    value_columns: ClassVar[tuple[str, ...]] = tuple(BREAST_LABELS)

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _check_size(value)

    def base_window(self, prepared: PreparedImage, view: str) -> tuple[int, int, int, int]:
        """The stored NYU window of the view's angle, else one placed on the breast mask."""
        return MultiViewSpec(scale=self.scale).base_window(prepared, view)

    def _planes(self, prepared: PreparedImage, view: str, maps: np.ndarray | None) -> dict[str, np.ndarray]:
        from breastscreen.preprocess.mammo import extract_window

        if self.input == "resize":
            sample = {"image": resize_image(prepared.pixels, self.image_size, "area")}
            if maps is not None:
                sample["maps"] = resize_image(maps, self.image_size, "linear")
            return sample
        box = self.base_window(prepared, view)
        sample = {"image": extract_window(prepared.pixels, box, fill=float(prepared.pixels.min()))}
        if maps is not None:
            sample["maps"] = extract_window(np.asarray(maps, np.float32), box, fill=0.0)
        return sample

    def _finish(self, sample: dict[str, np.ndarray]) -> np.ndarray:
        from breastscreen.preprocess.mammo import standardize

        planes = [standardize(sample["image"])[None]]
        if "maps" in sample:
            planes.append(np.clip(sample["maps"], 0.0, 1.0))
        return np.concatenate(planes, axis=0)

    def image_inputs(self, prepared: PreparedImage, view: str, maps: np.ndarray | None, *, n: int = 1,
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """Inputs [n, C, h, w] of one image: the first ``n`` exact flips, or (``rng``) ``n`` augmented copies."""
        from breastscreen.preprocess import augment

        if (maps is not None) != self.needs_heatmaps:
            raise BreastscreenError(f"{prepared.source}: the model takes {list(self.channels)}, "
                                    f"{'got' if maps is not None else 'no'} heatmaps")
        sample = self._planes(prepared, view, maps)
        keys = ("maps",) if maps is not None else ()
        if rng is not None:
            t = augment.AllConvAugment(image_keys=("image",), map_keys=keys)
            copies = [t(sample, rng) for _ in range(n)]
        else:
            if not 1 <= n <= len(FLIPS):
                raise BreastscreenError(f"whole-image models average the {len(FLIPS)} exact flips: tta must be "
                                        f"1..{len(FLIPS)}, got {n}")
            copies = [{k: augment.flip(v, h, vv) for k, v in sample.items()} for h, vv in FLIPS[:n]]
        return np.ascontiguousarray(np.stack([self._finish(c) for c in copies]), dtype=np.float32)

    def image_probs(self, probs: np.ndarray) -> np.ndarray:
        """(benign, malignant) of one image from the model's averaged probabilities."""
        if self.kind == "allconv":  # [not cancer, cancer]: no benign output
            return np.array([np.nan, float(probs[1])])
        return np.asarray(probs[:2], dtype=np.float64)

    def breast_probs(self, image_probs: list[np.ndarray]) -> np.ndarray:
        """(benign, malignant) of a breast from its images' (the spec's aggregation)."""
        stack = np.stack(image_probs).astype(np.float64)
        if self.aggregation == "mean":
            return stack.mean(axis=0)
        # max over the images' known values; a column with none (all-conv benign) stays NaN
        known = ~np.isnan(stack)
        return np.where(known.any(axis=0), np.where(known, stack, -np.inf).max(axis=0), np.nan)


@register_spec
class RoiPatchSpec(_MammoSpec):
    """ROI patch classifier of the all-convolutional system: patches of images prepared like the whole-image input."""

    family: Literal["roi-patch"] = "roi-patch"
    image_size: tuple[int, int] = PAPER_IMAGE_SIZE
    patch_size: int = Field(PAPER_PATCH_SIZE, ge=8, le=2048)
    classes: tuple[str, ...] = tuple(PATCH_CLASSES_5)

    value_columns: ClassVar[tuple[str, ...]] = ()

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _check_size(value)

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(value) not in (tuple(PATCH_CLASSES_5), PATCH_CLASSES_3):
            raise ValueError(f"must be {list(PATCH_CLASSES_5)} or {list(PATCH_CLASSES_3)}")
        return tuple(value)

    def whole_image(self, **overrides: Any) -> ImageSpec:
        """The whole-image spec built from this patch classifier (same image preparation)."""
        return ImageSpec(kind="allconv", input="resize", scale=self.scale, image_size=self.image_size,
                         suppress_background=self.suppress_background, **overrides)


def default_patch_size(image_size: tuple[int, int]) -> int:
    """The paper's 224-px patch scaled to an ``image_size`` other than 1152 x 896."""
    return max(8, int(round(PAPER_PATCH_SIZE * image_size[0] / PAPER_IMAGE_SIZE[0])))
