"""Helpers shared by the mammography and ultrasound phantom generators.

Everything here is deterministic: random draws come from generators built by :func:`sub_rng`
from the cohort seed and the item's index, so item ``i`` is the same whatever the cohort size.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from breastscreen.errors import BreastscreenError
from breastscreen.utils import atomic_path

ProgressFn = Callable[[int, int], None]

# Irrational steps of the low-discrepancy (Weyl) sequences that decide which items carry
# findings: every prefix of the cohort has close to the requested prevalence, and item i's
# draw does not depend on how many items are generated.
_WEYL_STEPS = (0.6180339887498949, 0.4142135623730951, 0.7320508075688772, 0.2360679774997898)


def check_seed(seed: int) -> int:
    """Return ``seed`` as an int after checking it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BreastscreenError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float after checking it lies in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BreastscreenError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise BreastscreenError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BreastscreenError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


FORMATS: tuple[str, ...] = ("png", "dicom")


def check_format(fmt: str) -> str:
    """Return ``fmt`` after checking it is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise BreastscreenError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def check_id_prefix(id_prefix: str | None) -> str | None:
    """Return ``id_prefix`` after checking it holds no underscore (the file-name separator) or path separator."""
    if id_prefix is not None and ("_" in id_prefix or "/" in id_prefix or os.sep in id_prefix):
        raise BreastscreenError(f"id_prefix must not contain '_' or path separators, got {id_prefix!r}")
    return id_prefix


def sub_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator for item ``index`` and purpose ``stream`` of a cohort seeded ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def weyl_fraction(seed: int, index: int, which: int) -> float:
    """Point ``index`` of a Weyl sequence in [0, 1) whose offset comes from ``seed``.

    ``u < p`` then selects a fraction ``p`` of items with a count error of about one item in
    every prefix, unlike independent coin flips.
    """
    offset = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, int(which)])).random()
    return float((offset + index * _WEYL_STEPS[which % len(_WEYL_STEPS)]) % 1.0)


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise with power spectrum ~ 1/f**beta (float32).

    beta ~ 3 reproduces the anatomical-noise spectrum reported for mammograms.
    """
    h, w = shape
    white = rng.standard_normal((h, w)).astype(np.float32)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    out = np.fft.irfft2(spec * amp, s=(h, w)).astype(np.float32)
    std = float(out.std())
    return out / std if std > 0 else out


def smooth_curve(n: int, rng: np.random.Generator, correlation: float, amplitude: float = 1.0) -> np.ndarray:
    """A smooth random 1-D curve of length ``n`` (Gaussian-filtered white noise, unit std * amplitude)."""
    sigma = max(1.0, correlation)
    pad = int(3 * sigma) + 1
    raw = rng.standard_normal(n + 2 * pad)
    x = np.arange(-pad, pad + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    sm = np.convolve(raw, k / k.sum(), mode="same")[pad : pad + n]
    std = sm.std()
    return (sm / std if std > 0 else sm) * amplitude


def text_mask(shape: tuple[int, int], text: str, org: tuple[int, int], height_px: float) -> np.ndarray:
    """Boolean mask of ``text`` drawn in a Hershey font, top-left corner at ``org`` = (x, y)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    base_h = cv2.getTextSize("H", font, 1.0, 1)[0][1]
    scale = max(height_px, 4.0) / base_h
    thickness = max(1, int(round(height_px / 7.0)))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    canvas = np.zeros(shape, np.uint8)
    cv2.putText(canvas, text, (int(org[0]), int(org[1] + th)), font, scale, 255, thickness, cv2.LINE_8)
    return canvas > 0


def text_size(text: str, height_px: float) -> tuple[int, int]:
    """(width, height) in pixels that :func:`text_mask` uses for ``text``."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    base_h = cv2.getTextSize("H", font, 1.0, 1)[0][1]
    scale = max(height_px, 4.0) / base_h
    thickness = max(1, int(round(height_px / 7.0)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    return tw + thickness, th + base + thickness


def plus_mask(shape: tuple[int, int], centre: tuple[float, float], arm_px: int, thickness: int = 1) -> np.ndarray:
    """Boolean mask of a '+' caliper mark centred at ``centre`` = (x, y)."""
    canvas = np.zeros(shape, np.uint8)
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    cv2.line(canvas, (cx - arm_px, cy), (cx + arm_px, cy), 255, thickness, cv2.LINE_8)
    cv2.line(canvas, (cx, cy - arm_px), (cx, cy + arm_px), 255, thickness, cv2.LINE_8)
    return canvas > 0


def _dpi(spacing_mm: float) -> float:
    return 25.4 / float(spacing_mm)


def write_png(path: Path, array: np.ndarray, spacing_mm: float | None) -> None:
    """Write an 8- or 16-bit greyscale PNG atomically, with a pHYs chunk when the spacing is known."""
    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 2:
        raise TypeError(f"write_png needs 2-D uint8 or uint16 pixels, got {array.dtype} {array.shape}")
    img = Image.fromarray(np.ascontiguousarray(array))
    # Noisy 16-bit images barely compress better at higher zlib levels, but take 5x longer.
    kwargs: dict[str, object] = {"compress_level": 1 if array.dtype == np.uint16 else 6}
    if spacing_mm is not None:
        d = _dpi(spacing_mm)
        kwargs["dpi"] = (d, d)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", **kwargs)


def write_mask(path: Path, mask: np.ndarray, spacing_mm: float | None) -> None:
    """Write a binary mask as an 8-bit PNG holding 0 and 255."""
    write_png(path, np.where(mask, 255, 0).astype(np.uint8), spacing_mm)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a boolean mask, or None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def prepare_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Create ``out_dir``; refuse a non-empty folder unless ``overwrite``.

    With ``overwrite`` the files listed in a previous ``manifest.jsonl`` of this folder (images
    and masks written by an earlier run) are removed so a smaller cohort leaves no stale
    exams behind; any other file in the folder is left alone.
    """
    from breastscreen.outdir import MARKER_NAME, check_output_owner, claim_output_dir

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BreastscreenError(f"output path {out} exists and is not a folder")
    check_output_owner(out, "synth")  # never another command's folder, even with overwrite
    if out.is_dir() and any(p.name != MARKER_NAME for p in out.iterdir()):
        if not overwrite:
            raise BreastscreenError(
                f"output folder {out} is not empty; choose an empty or new folder, or pass overwrite "
                "(--overwrite) to replace a previous synthetic cohort there"
            )
        _remove_previous_output(out)
    return claim_output_dir(out, "synth")


def _remove_previous_output(out: Path) -> None:
    manifest = out / "manifest.jsonl"
    if not manifest.is_file():
        return
    root = out.resolve()
    paths: list[Path] = []
    with manifest.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # Not a manifest we wrote: leave every file in place.
                return
            for images in (record.get("views") or {}).values():
                for image in images or []:
                    paths.append(Path(str(image.get("path", ""))))
                    paths.extend(Path(str(m.get("path", ""))) for m in image.get("masks") or [])
                    extra = (image.get("meta") or {}).get("annotation_mask")
                    if isinstance(extra, str) and extra:  # ultrasound annotation ground truth
                        paths.append(Path(extra))
    for rel in paths:
        p = (root / rel).resolve()
        # Only files directly inside the folder, never anything a crafted manifest points elsewhere.
        if p.parent == root and p.is_file():
            p.unlink()
    manifest.unlink()


def render_supersampled(
    shape: tuple[int, int], factor: int, draw: Callable[[np.ndarray, int], None]
) -> np.ndarray:
    """Call ``draw(canvas, factor)`` on a float32 canvas ``factor`` times larger, then area-average down.

    Gives partial-volume rendering of structures thinner than a pixel (spicules, calcifications).
    """
    h, w = shape
    canvas = np.zeros((h * factor, w * factor), np.float32)
    draw(canvas, factor)
    if factor == 1:
        return canvas
    return canvas.reshape(h, factor, w, factor).mean(axis=(1, 3))


def paste_add(target: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Add ``patch`` into ``target`` with its top-left corner at (x0, y0), clipped to the target."""
    h, w = patch.shape
    ty0, tx0 = max(0, y0), max(0, x0)
    ty1, tx1 = min(target.shape[0], y0 + h), min(target.shape[1], x0 + w)
    if ty1 <= ty0 or tx1 <= tx0:
        return
    target[ty0:ty1, tx0:tx1] += patch[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]


def paste_or(target: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Logical-or a boolean ``patch`` into ``target`` at (x0, y0), clipped to the target."""
    h, w = patch.shape
    ty0, tx0 = max(0, y0), max(0, x0)
    ty1, tx1 = min(target.shape[0], y0 + h), min(target.shape[1], x0 + w)
    if ty1 <= ty0 or tx1 <= tx0:
        return
    target[ty0:ty1, tx0:tx1] |= patch[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]


def radius_profile(
    theta: np.ndarray, harmonics: Sequence[tuple[int, float, float]]
) -> np.ndarray:
    """1 + sum_k a_k cos(k * theta + phi_k): a smooth closed outline's radius factor."""
    r = np.ones_like(theta)
    for k, a, phi in harmonics:
        r += a * np.cos(k * theta + phi)
    return r
