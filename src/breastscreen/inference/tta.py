"""Test-time augmentation (TTA) policies of the mammography model families.

Each family builds its model input for one view from the preprocessed image (and optional
heatmap channels) with the same geometry its training used, and draws TTA copies with the
preprocess stage's transforms (:mod:`breastscreen.preprocess.augment`):

==============  ==========================================  =====================================
family          base input                                  TTA (n > 1)
==============  ==========================================  =====================================
``nyu``         NYU window of the view's angle (CC/MLO)     random window jitter (size/position,
                (``preprocessing["window"]``)               ±100 px at full resolution)
``mvdcn``       MV-DCN window 2600×2000 (``mvdcn_window``)  random crop noise (position, ±100 px)
``flips``       NYU window of the view's angle              horizontal / vertical flips only
==============  ==========================================  =====================================

With ``n`` copies the first is always the un-augmented input, so ``n = 1`` means no TTA and
results for ``n`` and ``n + 1`` share their first ``n`` copies. Copies are drawn from a seed
derived from the run seed, the exam id, the view and the image index, so a prediction never
depends on which other exams are in the batch. The image channel is standardised (zero mean,
unit variance over the model window) after augmentation; heatmap channels stay probabilities.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

from breastscreen.data.types import view_angle
from breastscreen.preprocess import augment
from breastscreen.preprocess.mammo import extract_window, place_window, standardize, window_size

FAMILIES: tuple[str, ...] = ("nyu", "mvdcn", "flips")
JITTER_FULL_RES = 100  # pixels at full resolution (Wu et al. 2019 SI; Geras et al. 2017)


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and identifying parts (exam id, view, index), stable across runs."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return (int(seed) * 1_000_003 + zlib.crc32(text)) % (2**63)


def base_window(family: str, view: str, record: dict[str, Any], mask: np.ndarray | None, scale: float) -> tuple[int, int, int, int]:
    """The un-augmented model window (x0, y0, x1, y1) of a view in preprocessed pixels.

    Uses the box stored by preprocessing when present, else places it on the breast mask.
    """
    if family not in FAMILIES:
        raise ValueError(f"TTA family must be one of {FAMILIES}, got {family!r}")
    key, kind = ("mvdcn_window", "MVDCN") if family == "mvdcn" else ("window", view_angle(view))
    size = window_size(kind, scale)
    box = record.get(key) if record else None
    if box is not None and (box[3] - box[1], box[2] - box[0]) == size:
        return tuple(int(v) for v in box)  # type: ignore[return-value]
    if mask is None:
        raise ValueError(f"view {view}: no stored {key} and no breast mask to place one")
    return place_window(mask, size)


def view_inputs(
    family: str,
    view: str,
    image: np.ndarray,
    heatmaps: np.ndarray | None,
    window: Sequence[int],
    n: int,
    seed: int,
    scale: float,
) -> np.ndarray:
    """``n`` model inputs [n, C, h, w] float32 for one view (C = 1 + heatmap channels)."""
    if n < 1:
        raise ValueError(f"--tta must be >= 1, got {n}")
    sample: dict[str, Any] = {"image": np.asarray(image, dtype=np.float32)}
    map_keys: tuple[str, ...] = ()
    if heatmaps is not None:
        if heatmaps.shape[-2:] != image.shape:
            raise ValueError(f"view {view}: heatmaps {heatmaps.shape[-2:]} do not match the image {image.shape}")
        sample["heatmaps"] = np.asarray(heatmaps, dtype=np.float32)
        map_keys = ("heatmaps",)
    jitter = max(0, round(JITTER_FULL_RES * scale))
    box = tuple(int(v) for v in window)
    if family == "nyu":
        transform: Any = augment.NYUWindowJitter(image_keys=("image",), map_keys=map_keys, window=box, max_jitter=jitter)
    elif family == "mvdcn":
        transform = augment.MVDCNCropNoise(image_keys=("image",), map_keys=map_keys, window=box, max_noise=jitter)
    elif family == "flips":
        sample["image"] = extract_window(sample["image"], box, fill=float(sample["image"].min()))
        if heatmaps is not None:
            sample["heatmaps"] = extract_window(sample["heatmaps"], box, fill=0.0)
        transform = augment.AllConvAugment(
            image_keys=("image",), map_keys=map_keys, max_rotation=0.0, max_shear=0.0, zoom_range=(1.0, 1.0),
            max_shift=0.0,
        )
    else:
        raise ValueError(f"TTA family must be one of {FAMILIES}, got {family!r}")
    out = []
    for copy in augment.tta_samples(sample, n, seed, transform, include_identity=True):
        planes = [standardize(copy["image"])[None]]
        if heatmaps is not None:
            planes.append(np.clip(copy["heatmaps"], 0.0, 1.0))
        out.append(np.concatenate(planes, axis=0))
    return np.stack(out).astype(np.float32)
