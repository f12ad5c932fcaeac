"""The on-disk format of patch heatmaps: one compressed NPZ per image.

Each file holds ``heatmaps`` [2, H, W] as float16 (benign, malignant; :data:`HEATMAP_CHANNELS`
order) on the grid of the preprocessed image, and ``meta`` (JSON: checkpoint hash, geometry,
source image size and mtime ...). ``breastscreen heatmaps`` writes them; the breast-model
training datasets and the batch predictor read them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from breastscreen.errors import BreastscreenError
from breastscreen.labels import HEATMAP_CHANNELS

HEATMAP_SUFFIX = ".npz"


def heatmap_filename(exam_id: str, view: str, index: int = 0) -> str:
    """File name of one image's heatmaps: ``<exam_id>_<VIEW>_<k>.npz`` (unsafe characters replaced)."""
    safe = re.sub(r"[^A-Za-z0-9.\-]+", "-", str(exam_id)).strip(".") or "exam"
    return f"{safe}_{view}_{int(index)}{HEATMAP_SUFFIX}"


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


def read_heatmap_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Metadata of a heatmap file, or ``None`` when the file is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError):
        return None


def read_heatmap_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Heatmaps [2, H, W] (float32; channels in :data:`HEATMAP_CHANNELS` order) and metadata."""
    try:
        with np.load(path, allow_pickle=False) as data:
            maps = data["heatmaps"].astype(np.float32)
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise BreastscreenError(f"{path}: not a readable heatmap file ({exc})") from None
    return maps, meta
