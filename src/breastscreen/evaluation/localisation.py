"""Weakly supervised localisation quality of saliency maps against lesion masks.

The ultrasound classifier is trained with breast-level labels only, so how well its
malignant saliency map points at the lesion is a separate check (Shen et al. 2021 report it
against radiologists' segmentations). Two standard measures, both on one image at a time:

* **pointing game**: a hit when the location of the map's maximum (after upsampling the map
  to the mask's geometry) falls inside the lesion mask, optionally within ``tolerance``
  pixels of it;
* **IoU of the thresholded map**: the map is upsampled, thresholded (by default at half its
  own maximum, since sigmoid saliency maps trained with an L1 penalty rarely reach an
  absolute 0.5), and compared with the mask by intersection over union.

The functions above :func:`localisation_from_predictions` are pure and work on NumPy arrays;
that one reads a ``breastscreen predict`` run's ``predictions.jsonl`` (per breast: the saliency
maps, crop boxes and original shapes of its images) and a manifest's lesion masks, for
``breastscreen evaluate --masks MANIFEST``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

THRESHOLD_MODES: tuple[str, ...] = ("relative", "absolute")


def upsample_map(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D map to ``shape`` = (height, width), treating cells as areas.

    OpenCV's bilinear resize aligns cell centres (half-pixel convention), which is what a
    feature map with total stride S covering the image means.
    """
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2:
        raise ValueError(f"saliency map must be 2-D, got shape {saliency.shape}")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"target shape must be positive, got {shape}")
    return cv2.resize(saliency, (w, h), interpolation=cv2.INTER_LINEAR)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"lesion mask must be 2-D, got shape {mask.shape}")
    return mask > 0


def pointing_game_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the maximum of ``saliency`` (resized to the mask) lies in the lesion mask.

    ``tolerance`` (pixels of the mask's geometry) dilates the mask first, as in the original
    pointing-game protocol that allows a 15-pixel slack. Ties for the maximum count as a hit
    when any tied location is inside, so a constant map hits whenever the mask is non-empty;
    callers who want to penalise flat maps should check ``saliency.max() > saliency.min()``.
    """
    m = _check_mask(mask)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if not m.any():
        raise ValueError("lesion mask is empty: the pointing game needs a lesion")
    up = upsample_map(saliency, m.shape)
    if tolerance > 0:
        k = 2 * int(tolerance) + 1
        m = cv2.dilate(m.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    peak = up.max()
    return bool(np.any(m & (up >= peak)))


def threshold_map(saliency: np.ndarray, threshold: float = 0.5, mode: str = "relative") -> np.ndarray:
    """Binary region of a map: ``map >= threshold * max`` (relative) or ``map >= threshold``."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    saliency = np.asarray(saliency, dtype=np.float32)
    if mode == "relative":
        peak = float(saliency.max())
        if peak <= 0.0:
            return np.zeros(saliency.shape, dtype=bool)
        return saliency >= threshold * peak
    return saliency >= threshold


def saliency_iou(
    saliency: np.ndarray, mask: np.ndarray, threshold: float = 0.5, mode: str = "relative"
) -> float:
    """Intersection over union between the thresholded, upsampled map and the lesion mask.

    An empty mask raises, because IoU against no lesion is undefined.
    """
    m = _check_mask(mask)
    if not m.any():
        raise ValueError("lesion mask is empty: IoU needs a lesion")
    region = threshold_map(upsample_map(saliency, m.shape), threshold, mode)
    union = np.logical_or(region, m).sum()
    return float(np.logical_and(region, m).sum() / union)


@dataclass
class LocalisationSummary:
    """Pointing-game hit rate and mean IoU over a set of images."""

    n_images: int
    pointing_game: float
    mean_iou: float
    hits: list[bool]
    ious: list[float]

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly summary (without the per-image lists)."""
        return {"n_images": self.n_images, "pointing_game": self.pointing_game, "mean_iou": self.mean_iou}


def summarise_localisation(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float = 0.5,
    mode: str = "relative",
    tolerance: int = 0,
) -> LocalisationSummary:
    """Pointing-game hit rate and mean IoU over ``(saliency, mask)`` pairs (non-empty masks)."""
    hits: list[bool] = []
    ious: list[float] = []
    for saliency, mask in pairs:
        hits.append(pointing_game_hit(saliency, mask, tolerance))
        ious.append(saliency_iou(saliency, mask, threshold, mode))
    if not hits:
        raise ValueError("no images with a lesion mask to evaluate localisation on")
    return LocalisationSummary(
        n_images=len(hits),
        pointing_game=float(np.mean(hits)),
        mean_iou=float(np.mean(ious)),
        hits=hits,
        ious=ious,
    )


def mask_in_prepared_geometry(mask: np.ndarray, record: dict, size: int) -> np.ndarray:
    """A lesion mask of the original image cropped and resized (nearest) like a prepared ultrasound image.

    ``record`` is the preparation record (``crop_box``, ``original_shape``) and ``size`` the
    prepared image side.
    """
    mask = np.asarray(mask)
    shape = tuple(int(v) for v in record["original_shape"])
    if mask.shape[:2] != shape:
        raise ValueError(f"mask of shape {mask.shape[:2]} does not match the original image {shape}")
    x0, y0, x1, y1 = (int(v) for v in record["crop_box"])
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1]).astype(np.uint8)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST) > 0


def _saliency_bags(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(exam_id, breast entry) for every ultrasound breast of a predictions.jsonl; raises naming the file."""
    from breastscreen.evaluation.io import EvaluationInputError

    if not path.is_file():
        raise EvaluationInputError(f"{path}: not found; --masks reads the saliency maps from the predictions.jsonl "
                                   "written beside predictions.csv by `breastscreen predict`")
    bags = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise EvaluationInputError(f"{path}:{lineno}: not JSON ({exc})") from None
            for entry in (row.get("breasts") or {}).values():
                if isinstance(entry, dict):
                    bags.append((str(row.get("exam_id")), entry))
    if not bags:
        raise EvaluationInputError(f"{path}: no ultrasound breasts (the saliency localisation is for ultrasound runs)")
    if not any("saliency_malignant" in e for _, e in bags):
        raise EvaluationInputError(f"{path}: no saliency maps (written by `breastscreen predict` since saliency maps "
                                   "were added to predictions.jsonl); predict again")
    return bags


def _canonical(path: str) -> str:
    return os.path.realpath(path)


def localisation_from_predictions(
    predictions_jsonl: str | os.PathLike[str],
    masks_manifest: str | os.PathLike[str],
    threshold: float = 0.5,
    mode: str = "relative",
    tolerance: int = 0,
    label: str = "malignant",
) -> dict[str, Any]:
    """Pointing game and mean IoU of the ``label`` saliency maps of a predict run against the masks of a manifest.

    Every image of the manifest with a ``label`` lesion mask that the run predicted (same file)
    counts once: its masks (union) are cropped and resized like the prepared image
    (:func:`mask_in_prepared_geometry`) and compared with its map. Masked images the run did not
    predict, or excluded, are counted as ``n_masked_images_without_map``; a lesion wholly outside
    the crop (never with the safe crop) as ``n_lesions_outside_crop``. Bad input raises a
    one-line :class:`~breastscreen.evaluation.io.EvaluationInputError` naming the file.
    """
    from breastscreen.data.manifest import read_manifest
    from breastscreen.errors import BreastscreenError
    from breastscreen.evaluation.io import EvaluationInputError
    from breastscreen.preprocess.pipeline import load_mask_in_original

    if label not in ("malignant", "benign"):
        raise ValueError(f"label must be malignant or benign, got {label!r}")
    jsonl, manifest = Path(predictions_jsonl), Path(masks_manifest)
    maps: dict[str, tuple[np.ndarray, list[int], list[int], int]] = {}
    for exam_id, entry in _saliency_bags(jsonl):
        saliency = entry.get(f"saliency_{label}") or []
        images, boxes, shapes = entry.get("images") or [], entry.get("crop_boxes") or [], entry.get("original_shapes") or []
        if not (len(saliency) == len(images) == len(boxes) == len(shapes)):
            raise EvaluationInputError(f"{jsonl}: exam {exam_id}: images, saliency maps, crop boxes and shapes differ "
                                       "in number")
        for image, sal, box, shape in zip(images, saliency, boxes, shapes):
            if box is not None and shape is not None:
                maps[_canonical(str(image))] = (np.asarray(sal, np.float32), box, shape, int(entry["prepared_size"]))
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    n_masked = n_without = 0
    for exam in read_manifest(manifest):
        for _, image in exam.iter_images():
            paths = [m.path for m in image.masks if m.label == label]
            if not paths:
                continue
            n_masked += 1
            found = maps.get(_canonical(image.path))
            if found is None:
                n_without += 1
                continue
            sal, box, shape, size = found
            union = None
            for p in paths:
                try:
                    arr = load_mask_in_original(p, image, (int(shape[0]), int(shape[1])))
                except BreastscreenError as exc:
                    raise EvaluationInputError(f"{exc} (listed in {manifest})") from None
                except (OSError, ValueError) as exc:
                    raise EvaluationInputError(f"{p}: cannot read the lesion mask listed in {manifest} ({exc})") from None
                union = arr if union is None else union | arr
            mask = mask_in_prepared_geometry(union, {"crop_box": box, "original_shape": shape}, size)
            if mask.any():
                pairs.append((sal, mask))
    if not pairs:
        raise EvaluationInputError(f"{manifest}: none of its {n_masked} image(s) with a {label} lesion mask inside "
                                   f"the crop has a saliency map in {jsonl}")
    summary = summarise_localisation(pairs, threshold, mode, tolerance)
    return {"saliency": label, "n_images": summary.n_images, "pointing_game": summary.pointing_game,
            "mean_iou": summary.mean_iou, "threshold": threshold, "threshold_mode": mode, "tolerance_px": tolerance,
            "n_masked_images": n_masked, "n_masked_images_without_map": n_without,
            "n_lesions_outside_crop": n_masked - n_without - summary.n_images}
