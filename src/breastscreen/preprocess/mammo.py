"""Mammography preprocessing on arrays: breast segmentation, crop, orientation, resampling, windows.

Geometry conventions (used by every later stage):

* Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
* Canonical orientation: chest wall at the LEFT image edge, nipple pointing right.
* The "preprocessed geometry" of an image is: crop the original to ``crop_box``, flip
  left-right when ``flipped``, then resize to ``output_shape`` (pixel spacing
  ``REF_SPACING_MM / scale`` mm). :func:`to_original` undoes exactly these steps and
  :func:`to_preprocessed` applies them (for lesion masks, heatmaps, any aligned map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import cv2
import numpy as np
from scipy import ndimage

from breastscreen.errors import PreprocessError
from breastscreen.labels import MVDCN_WINDOW, NYU_WINDOWS, REF_SPACING_MM

Box = tuple[int, int, int, int]

# Segmentation works on a copy whose long side is about this many pixels (speed; the breast
# outline is smooth at this resolution and the mask is dilated before it is used).
WORK_SIZE = 512
# Foreground threshold as a fraction of the robust intensity range. Kept well below the
# 8 % "tissue" level of the acceptance check so that the dim skin line is inside the mask.
REL_THRESHOLD = 0.05
# Safety margin around the breast, as a fraction of the image's long side (skin line, nipple).
MARGIN_FRACTION = 0.01
# Pixel spacing assumed when an image has none (documented in docs/data.md; the run lists a warning).
DEFAULT_SPACING_MM = REF_SPACING_MM
# Sanity limits of the resampled image: a damaged spacing (1e-9 mm, 100 mm) must fail clearly,
# not produce a 1x1 image or allocate gigabytes.
MIN_OUTPUT_SIDE = 16
MAX_OUTPUT_SIDE = 20_000
MAX_RESAMPLE_FACTOR = 50.0
# Neighbouring pixels of a radiograph differ by a small fraction of the image's spread; noise
# (random bytes, a wrong byte order, a damaged stream decoded to garbage) by about 1.13 of it.
MAX_ROUGHNESS = 0.7


@dataclass
class BreastSegmentation:
    """Result of :func:`segment_breast`: a boolean breast ``mask`` (original size) and its ``box``."""

    mask: np.ndarray
    box: Box

    def __iter__(self):  # allows ``mask, box = segment_breast(img)``
        return iter((self.mask, self.box))


@dataclass
class PreprocessResult:
    """Output of :func:`preprocess_image` in preprocessed geometry.

    ``image`` is float32 in the input's intensity units, ``mask`` the boolean breast mask and
    ``record`` the JSON-serialisable geometry record (crop box, flip, shapes, scale ...).
    """

    image: np.ndarray
    mask: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


def _label(name: str | None) -> str:
    return f"image {name}" if name else "image"


def _check_image(img: np.ndarray, name: str | None) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise PreprocessError(f"{_label(name)}: expected a 2-D greyscale array, got shape {arr.shape}")
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise PreprocessError(f"{_label(name)}: image is too small ({arr.shape[0]}x{arr.shape[1]} pixels)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise PreprocessError(f"{_label(name)}: image holds NaN or infinite values")
    return arr


def check_not_noise(arr: np.ndarray, name: str | None = None) -> None:
    """Raise :class:`PreprocessError` when the pixels look like random noise rather than an image."""
    from breastscreen.data.readers import roughness

    r = roughness(arr)
    if r > MAX_ROUGHNESS:
        raise PreprocessError(
            f"{_label(name)}: pixel values look like random noise (neighbouring pixels differ by {r:.2f} standard "
            f"deviations on average; radiographs stay below {MAX_ROUGHNESS}); the file may be damaged or decoded wrongly"
        )


def _downsample(arr: np.ndarray, work_size: int) -> tuple[np.ndarray, float]:
    h, w = arr.shape
    factor = max(1.0, max(h, w) / float(work_size))
    if factor == 1.0:
        return arr.copy(), 1.0
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA), factor


def intensity_range(arr: np.ndarray) -> tuple[float, float]:
    """Robust (background, bright) intensity levels: the minimum and the 99.5th percentile.

    The percentile ignores small saturated labels and markers when setting the threshold.
    """
    lo = float(arr.min())
    hi = float(np.percentile(arr, 99.5))
    if hi <= lo:
        hi = float(arr.max())
    return lo, hi


def _edge_strip(stats_row: np.ndarray, shape: tuple[int, int]) -> bool:
    """True for a component that looks like a film edge / frame: thin and lying along an image border."""
    x, y, w, h, _ = (int(v) for v in stats_row)
    H, W = shape
    thin_vertical = w <= max(3, 0.04 * W) and h >= 0.3 * H and (x <= 0.08 * W or x + w >= 0.92 * W)
    thin_horizontal = h <= max(3, 0.04 * H) and w >= 0.3 * W and (y <= 0.08 * H or y + h >= 0.92 * H)
    return thin_vertical or thin_horizontal


def _film_border_lines(fill: np.ndarray, full: float = 0.95, drop: float = 0.85, zone: float = 0.12,
                       start: float = 0.03, thickest: float = 0.10) -> list[int]:
    """Indices of lines (rows or columns) that form a film-edge / scanner-border strip at either end.

    ``fill`` is the foreground fraction of each line. A strip is a run of lines at least ``full``
    foreground, starting within ``start`` of the border, at most ``thickest`` thick, inside the
    outer ``zone``, and followed inwards by a line at most ``drop`` foreground: a border band
    spanning the whole film, unlike breast tissue, whose extent changes gradually.
    """
    n = len(fill)
    out: list[int] = []
    for order in (range(n), range(n - 1, -1, -1)):
        idx = list(order)[: max(1, int(zone * n))]
        first = next((k for k, i in enumerate(idx) if fill[i] >= full), None)
        if first is None or first > max(1, int(start * n)):
            continue
        run = first
        while run < len(idx) and fill[idx[run]] >= full:
            run += 1
        if run - first > max(1, int(thickest * n)) or run >= len(idx) or fill[idx[run]] > drop:
            continue
        out.extend(idx[:run])
    return out


def _film_borders(fg: np.ndarray) -> tuple[list[int], list[int]]:
    """(rows, columns) of ``fg`` that are film-edge / scanner-border strips along its four sides."""
    return _film_border_lines(fg.mean(axis=1)), _film_border_lines(fg.mean(axis=0))


def _outside_borders(lines: list[int], n: int) -> tuple[int, int]:
    """The half-open range of line indices left between the border strips ``lines`` of ``n`` lines."""
    lo = 0
    while lo in lines:
        lo += 1
    hi = n
    while hi - 1 in lines:
        hi -= 1
    return lo, hi


def segment_breast(
    img: np.ndarray,
    *,
    rel_threshold: float = REL_THRESHOLD,
    work_size: int = WORK_SIZE,
    margin_fraction: float = MARGIN_FRACTION,
    name: str | None = None,
) -> BreastSegmentation:
    """Segment the breast and return its mask (original size) and crop box.

    Thresholds a smoothed, downsampled copy at ``background + rel_threshold * range``, clears
    film-edge / scanner-border strips that span the whole film along a side (even where they
    touch the breast), opens it to cut thin lines and marker stalks, keeps the largest connected component
    (burned-in labels, skin markers and frame strips are separate components and are
    dropped), fills holes and dilates by ``margin_fraction`` of the long side so the dim
    skin line stays inside. The box is mapped back to full resolution with the same margin.
    Raises :class:`PreprocessError` naming ``name`` when no breast is found.
    """
    if not 0.0 < rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    if work_size < 32:
        raise ValueError(f"work_size must be >= 32, got {work_size}")
    arr = _check_image(img, name)
    H, W = arr.shape
    small, factor = _downsample(arr, work_size)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    lo, hi = intensity_range(small)
    if hi - lo <= 1e-6:
        raise PreprocessError(f"{_label(name)}: no breast found (the image is uniform, value {lo:g})")
    fg = (small > lo + rel_threshold * (hi - lo)).astype(np.uint8)
    # Film edges and scanner borders that span the whole film touch the breast on digitised
    # films; cut them off first so that they cannot join the breast component.
    strip_rows, strip_cols = _film_borders(fg)
    fg[strip_rows, :] = 0
    fg[:, strip_cols] = 0
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        raise PreprocessError(f"{_label(name)}: no breast found (nothing above the background threshold)")
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1] + 1
    candidates = [i for i in order if not _edge_strip(stats[i], small.shape)] or list(order)
    best = candidates[0]
    area = int(stats[best, cv2.CC_STAT_AREA])
    if area < 0.01 * small.size:
        raise PreprocessError(
            f"{_label(name)}: no breast found (largest bright region covers {100.0 * area / small.size:.2f} % "
            "of the image; at least 1 % is required)"
        )
    comp = labels == best
    # Give back the pixels the opening shaved off the breast outline (but not detached blobs).
    comp = cv2.dilate(comp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & fg.astype(bool) | comp
    comp = ndimage.binary_fill_holes(comp)
    margin_small = max(1, int(round(margin_fraction * max(small.shape))))
    k = 2 * margin_small + 1
    comp = cv2.dilate(comp.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    # The safety margin must not reach back into a film strip that was cut off.
    comp[strip_rows, :] = 0
    comp[:, strip_cols] = 0
    mask = cv2.resize(comp.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) > 0.25
    ys, xs = np.nonzero(comp)
    margin = int(np.ceil(factor))  # one working pixel of slack for the resize
    (r0, r1), (c0, c1) = _outside_borders(strip_rows, small.shape[0]), _outside_borders(strip_cols, small.shape[1])
    box = (
        max(int(np.ceil(c0 * factor)), int(np.floor(xs.min() * factor)) - margin),
        max(int(np.ceil(r0 * factor)), int(np.floor(ys.min() * factor)) - margin),
        min(int(np.floor(c1 * factor)) if c1 < small.shape[1] else W, int(np.ceil((xs.max() + 1) * factor)) + margin),
        min(int(np.floor(r1 * factor)) if r1 < small.shape[0] else H, int(np.ceil((ys.max() + 1) * factor)) + margin),
    )
    mask[:, : box[0]] = False
    mask[:, box[2] :] = False
    mask[: box[1], :] = False
    mask[box[3] :, :] = False
    return BreastSegmentation(mask=mask, box=box)


def chest_wall_side(
    mask: np.ndarray,
    image: np.ndarray | None = None,
    laterality_hint: str | None = None,
    *,
    edge_fraction: float = 0.1,
    background: float | None = None,
) -> str:
    """Return ``"left"`` or ``"right"``: the side of a cropped breast holding the chest wall.

    Two cues are added: (1) the breast is thicker, hence brighter, towards the chest wall, so
    the relative difference of intensity mass (above background, inside the mask) between the
    right and left halves; (2) the chest-wall edge of the crop is covered by breast over most
    of its height while the nipple side tapers, so the difference of mask coverage of the
    outer ``edge_fraction`` columns. On all 322 mini-MIAS films and the NYU sample exam the
    sum of the two is right every time, while each cue alone fails on a few images (a film
    strip touching the breast, a breast filling the whole film). ``laterality_hint`` (``"L"``:
    chest wall on the left as in standard left-breast displays, ``"R"``: on the right) only
    decides when the score is within +-0.01 of zero.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        raise ValueError("chest_wall_side needs a non-empty 2-D mask")
    w = m.shape[1]
    k = max(1, int(round(edge_fraction * w)))
    score = float(m[:, w - k :].mean() - m[:, :k].mean())
    if image is not None:
        img = np.asarray(image, dtype=np.float32)
        if img.shape != m.shape:
            raise ValueError(f"image shape {img.shape} does not match mask shape {m.shape}")
        bg = float(img.min()) if background is None else float(background)
        weight = np.where(m, np.maximum(img - bg, 0.0), 0.0)
        half = w // 2
        left, right = float(weight[:, :half].sum()), float(weight[:, w - half :].sum())
        if left + right > 0:
            score += (right - left) / (right + left)
    if abs(score) < 0.01 and laterality_hint in ("L", "R"):
        return "left" if laterality_hint == "L" else "right"
    return "right" if score > 0 else "left"


def output_spacing(scale: float) -> float:
    """Pixel spacing (mm) of preprocessed images at ``scale``: ``REF_SPACING_MM / scale``."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return REF_SPACING_MM / float(scale)


def resample_factors(spacing: Sequence[float] | None, scale: float) -> tuple[float, float]:
    """(row, column) resize factors taking pixels of ``spacing`` mm to ``REF_SPACING_MM / scale``.

    Unknown spacing (``None``) is taken as :data:`DEFAULT_SPACING_MM` (full resolution).
    """
    out = output_spacing(scale)
    if spacing is None:
        spacing = (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    if len(spacing) != 2 or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"pixel spacing must be two positive finite numbers (row, column) in mm, got {spacing}")
    return float(spacing[0]) / out, float(spacing[1]) / out


def check_resampled_size(shape: Sequence[int], out_shape: Sequence[int], factors: Sequence[float],
                         spacing: Sequence[float] | None, scale: float, name: str | None = None) -> None:
    """Refuse a resampling whose factor or result is implausible (damaged pixel spacing or scale)."""
    shown = "unknown" if spacing is None else f"{float(spacing[0]):g} x {float(spacing[1]):g} mm"
    if not all(1.0 / MAX_RESAMPLE_FACTOR <= f <= MAX_RESAMPLE_FACTOR for f in factors):
        raise PreprocessError(
            f"{_label(name)}: resampling pixels of {shown} to {output_spacing(scale):g} mm (scale {scale:g}) changes the "
            f"size by {max(factors, key=lambda f: abs(np.log(f))):.3g}x, beyond {MAX_RESAMPLE_FACTOR:g}x; "
            "the pixel spacing or the scale is wrong"
        )
    if min(out_shape) < MIN_OUTPUT_SIDE or max(out_shape) > MAX_OUTPUT_SIDE:
        raise PreprocessError(
            f"{_label(name)}: the {shape[0]}x{shape[1]} crop resampled from {shown} to {output_spacing(scale):g} mm would "
            f"be {out_shape[0]}x{out_shape[1]} pixels (allowed {MIN_OUTPUT_SIDE}-{MAX_OUTPUT_SIDE} per side); "
            "the pixel spacing or the scale is wrong"
        )


def resize(arr: np.ndarray, shape: tuple[int, int], kind: Literal["image", "mask", "linear"] = "image") -> np.ndarray:
    """Resize a 2-D array (or [C, H, W] stack) to ``shape`` (h, w).

    ``image``: area averaging when shrinking, bicubic when enlarging; ``linear``: bilinear;
    ``mask``: nearest neighbour (labels stay labels).
    """
    arr = np.asarray(arr)
    h, w = int(shape[0]), int(shape[1])
    if arr.ndim == 3:
        return np.stack([resize(a, shape, kind) for a in arr])
    if arr.shape == (h, w):
        return arr.copy()
    if kind == "mask":
        src = arr.astype(np.uint8) if arr.dtype == bool else arr
        out = cv2.resize(src, (w, h), interpolation=cv2.INTER_NEAREST)
        return out.astype(bool) if arr.dtype == bool else out
    work = arr.astype(np.float32, copy=False)
    if kind == "linear":
        interp = cv2.INTER_LINEAR
    else:
        interp = cv2.INTER_AREA if (h <= arr.shape[0] and w <= arr.shape[1]) else cv2.INTER_CUBIC
    out = cv2.resize(work, (w, h), interpolation=interp)
    if interp == cv2.INTER_CUBIC:  # cubic overshoots; keep values inside the input range
        out = np.clip(out, float(work.min()), float(work.max()))
    return out


def standardize(x: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """Per-image standardisation: subtract the mean, divide by the std (statistics over ``mask`` if given).

    A constant image (std below ``eps``) is only mean-centred, never divided by ~0.
    """
    arr = np.asarray(x, dtype=np.float32)
    vals = arr[np.asarray(mask, dtype=bool)] if mask is not None else arr
    if vals.size == 0:
        raise ValueError("standardize: the mask selects no pixels")
    mean = float(vals.mean())
    std = float(vals.std())
    return ((arr - mean) / (std if std > eps else 1.0)).astype(np.float32)


def preprocess_image(
    pixels: np.ndarray,
    spacing: Sequence[float] | None,
    scale: float,
    laterality_hint: str | None = None,
    *,
    suppress_background: bool = True,
    name: str | None = None,
) -> PreprocessResult:
    """Crop to the breast, orient (chest wall left), resample to ``REF_SPACING_MM / scale`` mm.

    ``suppress_background`` sets pixels outside the (dilated) breast mask to the background
    level, which erases burned-in labels and film edges that fall inside the crop box.
    The returned record has ``crop_box``, ``flipped``, ``scale``, ``resample`` (column
    factor; ``resample_yx`` both), ``original_shape``, ``output_shape``, ``spacing_mm``,
    ``background`` and the NYU / MV-DCN windows (``window``, ``mvdcn_window``) are added by
    :func:`preprocess_manifest` once the view is known (see :func:`place_window`).
    """
    arr = _check_image(pixels, name)
    check_not_noise(arr, name)
    seg = segment_breast(arr, name=name)
    x0, y0, x1, y1 = seg.box
    crop = arr[y0:y1, x0:x1]
    mask = seg.mask[y0:y1, x0:x1]
    background = float(arr.min())
    if suppress_background:
        crop = np.where(mask, crop, background).astype(np.float32)
    side = chest_wall_side(mask, crop, laterality_hint, background=background)
    flipped = side == "right"
    if flipped:
        crop = crop[:, ::-1]
        mask = mask[:, ::-1]
    fy, fx = resample_factors(spacing, scale)
    out_shape = (max(1, int(round(crop.shape[0] * fy))), max(1, int(round(crop.shape[1] * fx))))
    check_resampled_size(crop.shape, out_shape, (fy, fx), spacing, scale, name)
    image = resize(crop, out_shape, "image").astype(np.float32)
    mask_out = resize(mask, out_shape, "mask")
    record: dict[str, Any] = {
        "crop_box": [int(x0), int(y0), int(x1), int(y1)],
        "flipped": bool(flipped),
        "scale": float(scale),
        "resample": float(fx),
        "resample_yx": [float(fy), float(fx)],
        "original_shape": [int(arr.shape[0]), int(arr.shape[1])],
        "output_shape": [int(out_shape[0]), int(out_shape[1])],
        "spacing_mm": output_spacing(scale),
        "input_spacing_mm": [float(s) for s in spacing] if spacing is not None else None,
        "background": background,
        "background_suppressed": bool(suppress_background),
    }
    return PreprocessResult(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask_out), record=record)


def _record_geometry(record: dict[str, Any]) -> tuple[Box, bool, tuple[int, int], tuple[int, int]]:
    try:
        box = tuple(int(v) for v in record["crop_box"])
        flipped = bool(record["flipped"])
        original = tuple(int(v) for v in record["original_shape"])
        output = tuple(int(v) for v in record["output_shape"])
    except KeyError as exc:
        raise ValueError(f"preprocessing record lacks {exc.args[0]!r}; it needs crop_box, flipped, "
                         "original_shape and output_shape") from None
    return box, flipped, original, output  # type: ignore[return-value]


def to_preprocessed(array: np.ndarray, record: dict[str, Any], kind: Literal["image", "mask", "linear"] = "mask") -> np.ndarray:
    """Map an array aligned with the ORIGINAL image (mask, map; 2-D or [C, H, W]) into preprocessed geometry."""
    (x0, y0, x1, y1), flipped, original, output = _record_geometry(record)
    arr = np.asarray(array)
    if arr.shape[-2:] != original:
        raise ValueError(f"array shape {arr.shape[-2:]} does not match the original image shape {original}")
    out = arr[..., y0:y1, x0:x1]
    if flipped:
        out = out[..., ::-1]
    return resize(np.ascontiguousarray(out), output, kind)


def to_original(
    array: np.ndarray, record: dict[str, Any], kind: Literal["image", "mask", "linear"] = "linear", fill: float = 0.0
) -> np.ndarray:
    """Map an array in preprocessed geometry (2-D or [C, H, W]) back onto the original image grid.

    Undoes the resample, the flip and the crop; pixels outside the crop box get ``fill``.
    Use ``kind="mask"`` for label maps (nearest neighbour), ``"linear"`` for heatmaps.
    """
    (x0, y0, x1, y1), flipped, original, output = _record_geometry(record)
    arr = np.asarray(array)
    if arr.shape[-2:] != output:
        raise ValueError(f"array shape {arr.shape[-2:]} does not match the preprocessed shape {output}")
    back = resize(arr, (y1 - y0, x1 - x0), kind)
    if flipped:
        back = back[..., ::-1]
    out = np.full(arr.shape[:-2] + original, fill, dtype=back.dtype)
    out[..., y0:y1, x0:x1] = back
    return out


def box_to_preprocessed(box: Sequence[int], record: dict[str, Any]) -> Box | None:
    """Map a box in original pixels into preprocessed pixels (clipped); ``None`` if it falls outside the crop."""
    (cx0, cy0, cx1, cy1), flipped, _, (oh, ow) = _record_geometry(record)
    bx0, by0, bx1, by1 = (float(v) for v in box)
    bx0, bx1 = max(bx0, cx0) - cx0, min(bx1, cx1) - cx0
    by0, by1 = max(by0, cy0) - cy0, min(by1, cy1) - cy0
    if bx1 <= bx0 or by1 <= by0:
        return None
    cw = cx1 - cx0
    if flipped:
        bx0, bx1 = cw - bx1, cw - bx0
    fx, fy = ow / cw, oh / (cy1 - cy0)
    out = (int(np.floor(bx0 * fx)), int(np.floor(by0 * fy)), int(np.ceil(bx1 * fx)), int(np.ceil(by1 * fy)))
    return (max(0, out[0]), max(0, out[1]), min(ow, max(out[2], out[0] + 1)), min(oh, max(out[3], out[1] + 1)))


def point_to_preprocessed(x: float, y: float, record: dict[str, Any]) -> tuple[float, float]:
    """Map a point ``(x, y)`` = (column, row) in original pixels into preprocessed pixels (not clipped).

    Pixel ``(col, row)`` has its centre at those integer coordinates (the convention of ROI
    circles); the crop, flip and resample are those of :func:`box_to_preprocessed`.
    """
    (cx0, cy0, cx1, cy1), flipped, _, (oh, ow) = _record_geometry(record)
    cw, ch = cx1 - cx0, cy1 - cy0
    # Work on pixel edges (centre of pixel i = i + 0.5), where cropping, flipping and resizing are exact.
    u, v = float(x) + 0.5 - cx0, float(y) + 0.5 - cy0
    if flipped:
        u = cw - u
    return u * ow / cw - 0.5, v * oh / ch - 0.5


def circle_to_preprocessed(circle: Sequence[float], record: dict[str, Any]) -> tuple[float, float, float]:
    """Map a circle ``(cx, cy, r)`` in original pixels into preprocessed pixels (not clipped).

    The radius is scaled by the geometric mean of the row and column resample factors (equal up
    to rounding unless the input pixels are not square).
    """
    (cx0, cy0, cx1, cy1), _, _, (oh, ow) = _record_geometry(record)
    px, py = point_to_preprocessed(circle[0], circle[1], record)
    factor = float(np.sqrt((ow / (cx1 - cx0)) * (oh / (cy1 - cy0))))
    return px, py, float(circle[2]) * factor


def window_size(kind: str, scale: float) -> tuple[int, int]:
    """Fixed model window (h, w) at ``scale``: ``kind`` is ``"CC"``/``"MLO"`` (NYU) or ``"MVDCN"``."""
    if kind in NYU_WINDOWS:
        h, w = NYU_WINDOWS[kind]
    elif kind.upper() == "MVDCN":
        h, w = MVDCN_WINDOW
    else:
        raise ValueError(f"window kind must be CC, MLO or MVDCN, got {kind!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def place_window(mask: np.ndarray, size: tuple[int, int]) -> Box:
    """Place a fixed (h, w) window on an oriented breast mask, anchored at the chest wall (left edge).

    The window starts at column 0 and its rows are chosen to cover the most breast pixels
    (ties: the position closest to centring the breast). When the image is smaller than the
    window the box extends past the image and :func:`extract_window` pads.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"window size must be positive, got {size}")
    H, W = m.shape
    cols = min(w, W)
    rows = m[:, :cols].sum(axis=1).astype(np.int64)
    if H <= h:
        ys = np.nonzero(rows)[0]
        centre = (ys.min() + ys.max() + 1) / 2.0 if ys.size else H / 2.0
        y0 = int(round(centre - h / 2.0))
        y0 = min(0, max(H - h, y0))  # keep the whole image inside the window
        return (0, y0, w, y0 + h)
    csum = np.concatenate([[0], np.cumsum(rows)])
    cover = csum[h:] - csum[:-h]  # tissue covered by a window starting at each row
    best = np.flatnonzero(cover == cover.max())
    ys = np.nonzero(rows)[0]
    centre = (ys.min() + ys.max() + 1) / 2.0 if ys.size else H / 2.0
    y0 = int(best[np.argmin(np.abs(best + h / 2.0 - centre))])
    return (0, y0, w, y0 + h)


def extract_window(arr: np.ndarray, box: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Cut ``box`` out of a 2-D array or [C, H, W] stack, padding with ``fill`` where it leaves the image."""
    a = np.asarray(arr)
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"window box must have x1 > x0 and y1 > y0, got {tuple(box)}")
    H, W = a.shape[-2:]
    out = np.full(a.shape[:-2] + (y1 - y0, x1 - x0), fill, dtype=a.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[..., sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = a[..., sy0:sy1, sx0:sx1]
    return out


def preprocess_view(
    pixels: np.ndarray,
    spacing: Sequence[float] | None,
    view: str,
    scale: float,
    *,
    suppress_background: bool = True,
    name: str | None = None,
) -> PreprocessResult:
    """:func:`preprocess_image` for a known view, with its NYU and MV-DCN windows placed.

    The one mammography preprocessing step: ``breastscreen preprocess`` saves its result and the
    Predictor uses it in memory, so both see the same crop, orientation and windows.
    """
    from breastscreen.data.types import view_angle, view_side

    res = preprocess_image(pixels, spacing, scale, laterality_hint=view_side(view),
                           suppress_background=suppress_background, name=name)
    res.record["window"] = list(place_window(res.mask, window_size(view_angle(view), scale)))
    res.record["mvdcn_window"] = list(place_window(res.mask, window_size("MVDCN", scale)))
    return res
