"""How preprocessed intensities are stored: integer PNG pixels plus a record to map them back.

Intensities are stored unchanged (rounded) when they lie in the integer range of the PNG
(0..255 or 0..65535), recorded as ``{"mode": "original"}``; otherwise they are mapped linearly
onto that range and the record holds ``{"mode": "linear", "offset": a, "scale": b}`` with
``original = stored * b + a``. In-memory preprocessing (the Predictor) quantises the same way,
so an image preprocessed in memory and one read back from disk are the same array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def quantise(arr: np.ndarray, bits: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Integer pixels (uint8 or uint16) and the intensity record of ``arr``."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    a = np.asarray(arr, dtype=np.float64)
    top = 255 if bits == 8 else 65535
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= top:
        stored = np.rint(a)
        info: dict[str, Any] = {"mode": "original"}
    else:
        span = hi - lo if hi > lo else 1.0
        stored = np.rint((a - lo) / span * top)
        info = {"mode": "linear", "offset": lo, "scale": span / top}
    return stored.astype(np.uint8 if bits == 8 else np.uint16), info


def dequantise(stored: np.ndarray, info: dict[str, Any] | None) -> np.ndarray:
    """Float32 pixels in original intensity units from stored pixels and their record."""
    pixels = np.asarray(stored, dtype=np.float32)
    info = info or {"mode": "original"}
    if info.get("mode") == "linear":
        pixels = pixels * float(info["scale"]) + float(info["offset"])
    return pixels.astype(np.float32, copy=False)
