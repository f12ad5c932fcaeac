"""Where an image's pixels come from: a file path, an :class:`ImageRef`, a numpy array or a pydicom Dataset.

The Predictor accepts any of these for every image of an exam. :func:`read_source` turns one
into :class:`~breastscreen.data.readers.ImageData` (float32 pixels, pixel spacing) with the same
readers and guards the file-based commands use; :func:`preprocessed_pixels` reads an image that
``breastscreen preprocess`` already wrote, in original intensity units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from breastscreen.data.readers import ImageData, dataset_image, load_image
from breastscreen.data.types import ImageRef
from breastscreen.errors import BreastscreenError
from breastscreen.preprocess.intensity import dequantise

#: One image as the Predictor accepts it.
ImageLike = Union[ImageRef, str, os.PathLike, np.ndarray, Any]


def source_name(image: ImageLike, fallback: str = "<array>") -> str:
    """A short name of an image for messages."""
    if isinstance(image, ImageRef):
        return image.path
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if _is_dataset(image):
        return f"<dataset {getattr(image, 'SOPInstanceUID', '')}>".replace(" >", ">")
    return fallback


def _is_dataset(obj: Any) -> bool:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return False
    return isinstance(obj, pydicom.Dataset)


def is_preprocessed(image: ImageLike) -> bool:
    """True for an :class:`ImageRef` that carries a preprocessing record (made by ``preprocess``)."""
    return isinstance(image, ImageRef) and bool(image.preprocessing)


def read_source(image: ImageLike, name: str | None = None) -> ImageData:
    """Raw pixels and spacing of one image, whatever form it is given in."""
    label = name or source_name(image)
    if isinstance(image, ImageRef):
        data = load_image(image.path, frame=image.frame)
        if image.pixel_spacing:
            data.pixel_spacing = tuple(float(v) for v in image.pixel_spacing)  # type: ignore[assignment]
        return data
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if _is_dataset(image):
        return dataset_image(image, label)
    if isinstance(image, np.ndarray):
        arr = np.asarray(image)
        colour = None
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            colour = arr[..., :3]
            arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if arr.ndim != 2 or arr.size == 0:
            raise BreastscreenError(f"{label}: an image array must be 2-D grey (or RGB), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise BreastscreenError(f"{label}: image array must hold finite numbers")
        bits = 8 if arr.dtype == np.uint8 else 16
        return ImageData(np.ascontiguousarray(arr, dtype=np.float32), None, bits, label, {"format": "array"}, colour)
    raise BreastscreenError(
        f"{label}: an image must be a file path, ImageRef, numpy array or pydicom Dataset, got {type(image).__name__}"
    )


def preprocessed_pixels(image: ImageRef) -> np.ndarray:
    """Pixels of a preprocessed image in original intensity units (float32)."""
    record = image.preprocessing or {}
    stored = load_image(image.path, frame=image.frame).pixels
    return dequantise(stored, record.get("intensity"))


def preprocessed_mask(image: ImageRef, shape: tuple[int, int]) -> np.ndarray | None:
    """The stored breast / field-of-view mask of a preprocessed image (None when it has none)."""
    path = (image.preprocessing or {}).get("breast_mask_path")
    if not path or not Path(path).is_file():
        return None
    mask = load_image(path).pixels > 0
    if mask.shape != tuple(shape):
        raise BreastscreenError(f"{path}: breast mask shape {mask.shape} differs from the image {tuple(shape)}")
    return mask
