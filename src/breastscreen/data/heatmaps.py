"""The on-disk format of patch heatmaps: one compressed NPZ per image.

Each file holds ``heatmaps`` [2, H, W] as float16 (benign, malignant; :data:`HEATMAP_CHANNELS`
order) on the grid of the preprocessed image, and ``meta`` (JSON: checkpoint hash, geometry,
source image size and mtime ...). ``breastscreen heatmaps`` writes them; the breast-model
training datasets and the batch predictor read them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.errors import BreastscreenError
from breastscreen.labels import HEATMAP_CHANNELS
from breastscreen.safety import loads_json, safe_name

HEATMAP_SUFFIX = ".npz"


def heatmap_filename(exam_id: str, view: str, index: int = 0) -> str:
    """File name of one image's heatmaps: ``<exam>_<VIEW>_<k>.npz`` with the exam id and view made
    safe (:func:`breastscreen.safety.safe_name`: reversible, so ``p_1`` and ``p-1`` never share a file)."""
    return f"{safe_name(exam_id)}_{safe_name(view)}_{int(index)}{HEATMAP_SUFFIX}"


def write_heatmap_file(path: str | os.PathLike[str], maps: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write ``maps`` [2, H, W] as float16 plus JSON ``meta`` into a compressed NPZ, atomically."""
    from breastscreen.utils import atomic_path

    if maps.ndim != 3 or maps.shape[0] != len(HEATMAP_CHANNELS):
        raise ValueError(f"heatmaps must be [{len(HEATMAP_CHANNELS)}, H, W], got shape {maps.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, heatmaps=maps.astype(np.float16), meta=np.array(json.dumps(meta, sort_keys=True))
            )
    return path


# Largest heatmap array read (two maps of a 100-megapixel image).
MAX_HEATMAP_VALUES = 2 * 100_000_000


def _npz_shape(data: Any, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` of an open NPZ from its header alone (nothing is decompressed)."""
    with data.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = reader(fh)
    return tuple(int(v) for v in shape)


def _meta(data: Any, path: Any) -> dict[str, Any]:
    meta = loads_json(str(data["meta"]), f"{path}: meta", max_bytes=1024 * 1024)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta is not a JSON object")
    return meta


def read_heatmap_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Metadata of a heatmap file, or ``None`` when the file is absent or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return _meta(data, path)
    except Exception:  # noqa: BLE001 - any unreadable file just means "not done yet" for resume
        return None


def read_heatmap_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Heatmaps [2, H, W] (float32; channels in :data:`HEATMAP_CHANNELS` order) and metadata.

    A damaged file, maps of the wrong shape or size, and NaN or infinite values are refused
    with :class:`BreastscreenError` naming the file.
    """
    from breastscreen.safety import check_regular_file

    check_regular_file(path, BreastscreenError)
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = _npz_shape(data, "heatmaps")
            if len(shape) != 3 or shape[0] != len(HEATMAP_CHANNELS) or int(np.prod(shape)) > MAX_HEATMAP_VALUES:
                raise ValueError(f"heatmaps must be [{len(HEATMAP_CHANNELS)}, H, W] of at most "
                                 f"{MAX_HEATMAP_VALUES:,} values, got shape {shape}")
            maps = data["heatmaps"].astype(np.float32)
            meta = _meta(data, path)
    except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many types for damaged files
        raise BreastscreenError(f"{path}: not a readable heatmap file ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(maps).all():
        raise BreastscreenError(f"{path}: heatmaps hold NaN or infinite values")
    return maps, meta
