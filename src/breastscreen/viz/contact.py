"""Contact sheets: a grid of preprocessed views (one row per exam) with lesion masks outlined."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from breastscreen.data.types import MG_VIEWS, Exam
from breastscreen.utils import atomic_path

# Outline colours (RGB) by lesion label; benign green and malignant red, as in the heatmap overlays.
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {"benign": (40, 220, 40), "malignant": (235, 40, 40)}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Window an image to its 0.5-99.5 percentile range for display."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def render_tile(image_path: str, masks: Sequence[tuple[str, str | None]], height: int) -> np.ndarray:
    """One view as an RGB tile of the given height, with each ``(mask_path, label)`` outlined."""
    grey = np.asarray(Image.open(image_path))
    rgb = np.repeat(_to_uint8(grey)[..., None], 3, axis=2)
    thickness = max(1, round(grey.shape[0] / height))
    for mask_path, label in masks:
        mask = (np.asarray(Image.open(mask_path)) > 0).astype(np.uint8)
        if mask.shape != grey.shape:
            raise ValueError(f"{mask_path}: mask shape {mask.shape} differs from image shape {grey.shape}")
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, LABEL_COLOURS.get(label, (255, 255, 0)), 2 * thickness)
    width = max(1, round(grey.shape[1] * height / grey.shape[0]))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def contact_sheet(
    exams: Sequence[Exam],
    out_path: str | os.PathLike[str],
    tile_height: int = 220,
    views: Sequence[str] = MG_VIEWS,
) -> Path:
    """Write a PNG grid: one row per exam, one column per view, lesion masks outlined by label."""
    if not exams:
        raise ValueError("contact_sheet needs at least one exam")
    label_h, pad = 36, 4
    rows = []
    for exam in exams:
        tiles = []
        for view in views:
            images = exam.views.get(view) or []
            if images:
                img = images[0]
                tile = render_tile(img.path, [(m.path, m.label) for m in img.masks], tile_height)
            else:
                tile = np.full((tile_height, tile_height * 2 // 3, 3), 40, np.uint8)
            header = np.zeros((label_h, tile.shape[1], 3), np.uint8)
            lab = exam.label(view[0])
            status = "malignant" if lab.malignant == 1 else "benign" if lab.benign == 1 else ""
            for i, text in enumerate((exam.exam_id, f"{view} {status}".strip())):
                colour = LABEL_COLOURS.get(status, (255, 255, 255)) if i else (255, 255, 255)
                cv2.putText(header, text, (3, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
            tiles.append(np.concatenate([header, tile], axis=0))
            tiles.append(np.zeros((label_h + tile_height, pad, 3), np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
        rows.append(None)
    width = max(r.shape[1] for r in rows if r is not None)
    padded = [
        np.zeros((pad, width, 3), np.uint8) if r is None else np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)))
        for r in rows
    ]
    sheet = np.concatenate(padded, axis=0)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return out_path
