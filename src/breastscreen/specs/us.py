"""Spec of the ultrasound gated-attention MIL classifier (Shen et al. 2021): one breast = one bag.

Preparation of one image (training cache and Predictor alike): 8-bit grey -> (with
``remove_annotations``) burned-in calipers, text and marks detected and inpainted on the whole
image (:mod:`breastscreen.preprocess.us_annotations`, parameters ``annotation_params``) ->
field-of-view crop ``crop`` (``"v1"``: the legacy crop every existing checkpoint was trained
with; ``"safe"``: never cuts tissue) (images with > 80 % zero pixels or no field of view are
excluded) -> area resize to ``prepare_size`` x ``prepare_size`` uint8. An image that
``breastscreen preprocess`` already cropped (its record has ``crop_box``) is only resized when
its record matches the spec's crop and annotation removal (with the same parameters);
otherwise it is prepared again
from the record's ``source_path`` (refused when that file is gone). Exact duplicates inside
one bag are dropped (the later copy). The defaults (``remove_annotations=False``,
``crop="v1"``) keep every existing checkpoint's inputs unchanged; ``breastscreen train us``
writes ``True`` / ``"safe"`` into new models.

Input builder: each prepared image -> (training or TTA copies 1..: the paper's flip, rotation,
translation, scale and shear with ranges scaled by ``augment_strength``) bilinear resize to
``input_size`` -> per-image standardisation -> [K, C, S, S] for the bag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from breastscreen.errors import BreastscreenError, PreprocessError
from breastscreen.labels import BREAST_LABELS
from breastscreen.preprocess.us_annotations import AnnotationParams
from breastscreen.specs.base import ModelSpec, PreparedImage, register_spec
from breastscreen.specs.mammo import derive_seed
from breastscreen.specs.sources import ImageLike, is_preprocessed, read_source, source_name


@register_spec
class USSpec(ModelSpec):
    """Ultrasound bag model: preparation size, input size, channels and augmentation strength."""

    family: Literal["us"] = "us"
    input_size: int = Field(256, ge=32, le=1024)
    prepare_size: int = Field(288, ge=32, le=2048)
    in_channels: Literal[1, 3] = 1
    max_zero_fraction: float = Field(0.8, gt=0, le=1)
    augment_strength: float = Field(1.0, ge=0, le=1)
    remove_annotations: bool = False  # detect and inpaint burned-in marks before the crop
    annotation_params: AnnotationParams = Field(default_factory=AnnotationParams)
    crop: Literal["v1", "safe"] = "v1"  # field-of-view crop; "v1" = legacy checkpoints

    value_columns: ClassVar[tuple[str, ...]] = tuple(BREAST_LABELS)

    def preparation_key(self) -> str:
        """How images are prepared, beyond ``prepare_size``: ``""`` for the legacy preparation
        (crop v1, annotations kept), else a JSON description (a prepared-image cache is only
        reused under the same key)."""
        if self.crop == "v1" and not self.remove_annotations:
            return ""
        return json.dumps({"crop": self.crop, "annotations": self.annotation_params.model_dump(mode="json")
                           if self.remove_annotations else None}, sort_keys=True)

    def _matches(self, record: dict[str, Any]) -> bool:
        """True when a ``breastscreen preprocess`` record was made the way this spec prepares."""
        if record.get("crop_mode", "v1") != self.crop:
            return False
        if not self.remove_annotations:
            return not record.get("annotations_removed", False)
        # removed with these very parameters (records without them are prepared again)
        return bool(record.get("annotations_removed")) and \
            record.get("annotation_params") == self.annotation_params.model_dump(mode="json")

    def prepare(self, image: ImageLike) -> PreparedImage:
        """One image ready for :meth:`bag_input`; raises PreprocessError when the rules exclude it."""
        from breastscreen.data.readers import load_image
        from breastscreen.preprocess.ultrasound import fov_crop_uint8, resize_area, to_uint8

        name = source_name(image)
        record_in = dict(image.preprocessing or {}) if is_preprocessed(image) else {}
        if "crop_box" in record_in and self._matches(record_in):
            crop = to_uint8(read_source(image).pixels)
            record = record_in
        else:
            if "crop_box" in record_in:
                # Preprocessed another way (e.g. the legacy crop, marks not removed): start again
                # from the original image, never from a crop that may have lost tissue.
                source = record_in.get("source_path")
                if not source or not Path(source).is_file():
                    raise PreprocessError(
                        f"{name}: preprocessed with crop {record_in.get('crop_mode', 'v1')!r}, annotations "
                        f"{'removed' if record_in.get('annotations_removed') else 'kept'}; this model needs crop "
                        f"{self.crop!r} with annotations {'removed' if self.remove_annotations else 'kept'} and the "
                        "original image (source_path) is not available"
                    )
                data = load_image(source, frame=record_in.get("source_frame"))
            else:
                data = read_source(image)
            crop, record = fov_crop_uint8(
                data.pixels, name=name, max_zero_fraction=self.max_zero_fraction, crop=self.crop,
                annotations=self.annotation_params if self.remove_annotations else None, rgb=data.colour)
        pixels = resize_area(crop, self.prepare_size)
        return PreparedImage(pixels.astype(np.float32), record, None, name)

    def _augment_config(self) -> Any:
        from breastscreen.preprocess.ultrasound import USAugmentConfig

        base, s = USAugmentConfig(), self.augment_strength
        lo, hi = base.scale_range
        return USAugmentConfig(flip_p=base.flip_p, max_rotation=base.max_rotation * s, max_translate=base.max_translate,
                               scale_range=(1.0 - (1.0 - lo) * s, 1.0 + (hi - 1.0) * s), max_shear=base.max_shear * s,
                               size=(self.input_size, self.input_size))

    def image_input(self, prepared: PreparedImage, rng: np.random.Generator | None = None) -> np.ndarray:
        """[S, S] float32 input of one image: augmented when ``rng`` is given, else resized only."""
        return self.image_input_and_lesions(prepared, None, rng)[0]

    def image_input_and_lesions(
        self, prepared: PreparedImage, lesions: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`image_input` plus lesion masks moved by the same geometric draw.

        ``lesions`` [L, P, P] (``P`` = ``prepare_size``, non-zero = lesion) in the prepared
        image's geometry, or None; returns ([S, S] input, [L, S, S] uint8 masks or None). The
        random stream is consumed exactly as by :meth:`image_input`, so supervising with masks
        does not change the images a seed draws.
        """
        from breastscreen.preprocess.ultrasound import apply_us_augment, draw_us_params, normalize

        config = self._augment_config()
        params = draw_us_params(rng, config) if rng is not None else None
        masks = None if lesions is None else {str(i): m for i, m in enumerate(np.asarray(lesions, dtype=np.uint8))}
        image, moved = apply_us_augment(prepared.pixels, params, config.size, masks)
        out = None if lesions is None else (np.stack([moved[str(i)] for i in range(len(masks or {}))]) if masks
                                            else np.zeros((0, *config.size), np.uint8))
        return normalize(image), out

    def bag_input(self, images: Sequence[PreparedImage], rng: np.random.Generator | None = None) -> np.ndarray:
        """[K, C, S, S] float32 input of one bag (one draw per image from ``rng`` in training)."""
        if not images:
            raise BreastscreenError("a bag needs at least one image")
        return self.stack_images([self.image_input(im, rng) for im in images])

    def stack_images(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """[K, C, S, S] float32 bag tensor from K [S, S] image inputs (grey repeated to 3 channels when needed)."""
        stack = np.stack(inputs)[:, None]
        if self.in_channels == 3:
            stack = np.repeat(stack, 3, axis=1)
        return np.ascontiguousarray(stack, dtype=np.float32)

    def tta_inputs(self, bag_id: str, images: Sequence[PreparedImage], n: int = 1, seed: int = 0) -> np.ndarray:
        """[n, K, C, S, S]: copy 0 un-augmented, copies 1.. augmented from a seed of (seed, bag)."""
        if n < 1:
            raise BreastscreenError(f"tta must be >= 1, got {n}")
        copies = [self.bag_input(images)]
        rng = np.random.default_rng(derive_seed(seed, bag_id)) if n > 1 else None
        copies += [self.bag_input(images, rng) for _ in range(n - 1)]
        return np.stack(copies)


def dedupe(images: Sequence[PreparedImage]) -> tuple[list[PreparedImage], list[tuple[str, str]]]:
    """Drop exact duplicates (same prepared pixels) of an earlier image of the same bag."""
    kept: list[PreparedImage] = []
    dropped: list[tuple[str, str]] = []
    seen: dict[bytes, str] = {}
    for prepared in images:
        key = prepared.pixels.astype(np.uint8).tobytes()
        if key in seen:
            dropped.append((prepared.source, f"duplicate: same pixels as {seen[key]}"))
            continue
        seen[key] = prepared.source
        kept.append(prepared)
    return kept, dropped


def prepare_bag(spec: USSpec, images: Sequence[ImageLike]) -> tuple[list[PreparedImage], list[tuple[str, str]]]:
    """Prepare every image of a bag; return the kept images and (image, reason) for those left out.

    Excluded: images the preparation rules refuse, and exact duplicates of an earlier image of
    the same bag. Unreadable images raise (a bag is never predicted from fewer images silently).
    """
    prepared: list[PreparedImage] = []
    dropped: list[tuple[str, str]] = []
    for image in images:
        try:
            prepared.append(spec.prepare(image))
        except PreprocessError as exc:
            dropped.append((source_name(image), str(exc)))
    kept, duplicates = dedupe(prepared)
    return kept, dropped + duplicates
