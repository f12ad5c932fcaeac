"""Tiny synthetic images for the preprocessing tests (made in memory, deterministic)."""

from __future__ import annotations

import numpy as np


def phantom_mammo(
    h: int = 600,
    w: int = 400,
    chest_wall: str = "left",
    seed: int = 0,
    label: bool = True,
    edge_strip: bool = True,
    max_value: float = 4095.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A half-ellipse breast against one edge, with a dim skin rim, texture, a burned-in label
    blob in a far corner and a bright film strip along the opposite edge.

    Returns (image float32, true breast mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, ry, rx = h / 2.0, 0.42 * h, 0.6 * w
    d = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2
    breast = d <= 1.0
    img = np.zeros((h, w), np.float32)
    tissue = 0.55 + 0.25 * (1 - xx / rx) + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    img[breast] = (np.clip(tissue, 0.1, 1.0) * max_value)[breast]
    rim = breast & (d > 0.93)
    img[rim] = 0.1 * max_value  # dim skin line: above 8 % of the range, easy to lose
    if label:
        img[int(0.03 * h) : int(0.08 * h), int(0.85 * w) : int(0.93 * w)] = max_value
    if edge_strip:
        img[:, w - 4 : w - 1] = 0.9 * max_value
    if chest_wall == "right":
        img, breast = img[:, ::-1].copy(), breast[:, ::-1].copy()
    return img, breast


def tissue_count(a: np.ndarray) -> int:
    """Pixels above min + 8 % of the range (the acceptance script's tissue measure)."""
    a = a.astype(np.float64)
    return int((a > a.min() + 0.08 * (a.max() - a.min())).sum())
