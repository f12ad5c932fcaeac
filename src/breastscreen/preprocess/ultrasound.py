"""Ultrasound preprocessing: field-of-view crop, exclusion rules and the paper's augmentation.

Shen et al. 2021 crop away the periphery of each ultrasound image (burned-in text, calipers,
device annotations), exclude nearly empty images and exact duplicates, and train with
random flips, rotation, translation, scaling and shear before a bilinear resize to 256x256.

The field of view (FOV) is found as the largest connected region of non-dark pixels of a
smoothed copy after a morphological opening (which cuts thin caliper lines and text strokes
off its border), replaced by its convex hull (rectangular and fan-shaped FOVs are convex, so
dark lesions, cysts and shadows inside stay in). Everything outside the FOV's bounding box is
cropped away, and bright pixels inside the box but outside the FOV (text beside a fan) are set
to zero. That is crop ``"v1"``, kept unchanged for the models trained with it; it can cut
tissue: dark anechoic regions (large cysts, shadows) fall below its threshold, and when they
reach the FOV's edge the largest bright region, and so the crop, ends above them.

Crop ``"safe"`` (:func:`find_field_of_view_safe`, the default of new models) never cuts
tissue: background is only what is *uniform* and *connected to the image border* (scanners
paint it with one value outside the FOV; anechoic tissue is dark but noisy, and enclosed by
tissue), and only whole rows or columns of background are cut: the border strips, and the
gaps of at least ``gap_px`` that separate a side panel (text, scale, icons) from the FOV; a
2-px margin is then added back. Measured on BUS-BRA and on phantoms in docs/ultrasound.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from breastscreen.errors import PreprocessError

# Images with more than this fraction of exactly-zero pixels are excluded (paper's rule).
MAX_ZERO_FRACTION = 0.8
US_SIZE = 256


@dataclass
class USCrop:
    """Field of view of one ultrasound image: boolean ``mask`` (original size) and crop ``box``."""

    mask: np.ndarray
    box: tuple[int, int, int, int]

    def __iter__(self):  # allows ``mask, box = find_field_of_view(img)``
        return iter((self.mask, self.box))


def zero_fraction(pixels: np.ndarray) -> float:
    """Fraction of pixels that are exactly zero."""
    arr = np.asarray(pixels)
    return float((arr == 0).mean()) if arr.size else 1.0


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of the pixel values and shape (exact-duplicate detection, independent of file format)."""
    arr = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def find_duplicates(hashes: Iterable[tuple[Any, str]]) -> list[tuple[Any, Any]]:
    """Given ``(key, hash)`` pairs in order, return ``(duplicate_key, first_key)`` for every repeat."""
    first: dict[str, Any] = {}
    dups: list[tuple[Any, Any]] = []
    for key, digest in hashes:
        if digest in first:
            dups.append((key, first[digest]))
        else:
            first[digest] = key
    return dups


def find_field_of_view(
    pixels: np.ndarray, *, rel_threshold: float = 0.04, min_fraction: float = 0.05, name: str | None = None
) -> USCrop:
    """Locate the imaging field of view (rectangular or fan-shaped) of an ultrasound image.

    Raises :class:`PreprocessError` naming ``name`` when no region covers at least
    ``min_fraction`` of the image.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    label = f"image {name}" if name else "image"
    if arr.ndim != 2:
        raise PreprocessError(f"{label}: expected a 2-D greyscale array, got shape {arr.shape}")
    H, W = arr.shape
    lo, hi = float(arr.min()), float(np.percentile(arr, 99.5))
    if hi <= lo:
        raise PreprocessError(f"{label}: no field of view found (the image is uniform)")
    blur = cv2.blur(arr, (5, 5))
    fg = (blur > lo + rel_threshold * (hi - lo)).astype(np.uint8)
    # An opening wider than text strokes and caliper lines separates them from the FOV; dark
    # structures inside the FOV (cysts, shadows) do not matter because the FOV is convex (below).
    ko = max(3, int(round(0.025 * min(H, W))) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        raise PreprocessError(f"{label}: no field of view found (nothing above the background)")
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[best, cv2.CC_STAT_AREA])
    if area < min_fraction * H * W:
        raise PreprocessError(
            f"{label}: no field of view found (largest region covers {100.0 * area / (H * W):.1f} % of the "
            f"image; at least {100 * min_fraction:.0f} % is required)"
        )
    # Rectangles and fan sectors are convex: the hull fills dark lesions and shadows inside the
    # FOV and restores the corners the opening rounded.
    pts = cv2.findNonZero((labels == best).astype(np.uint8))
    mask = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(pts), 1)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return USCrop(mask=mask, box=box)


CROP_MODES = ("v1", "safe")


def uniform_background(arr: np.ndarray, *, tol: float = 2.0, gap_px: int = 5,
                       min_border_share: float = 0.25) -> np.ndarray:
    """Boolean mask of the scanner background: pixels within ``tol`` of the most common border
    value, in ``gap_px`` x ``gap_px`` blocks of such pixels, connected to the image border.

    Empty when that value covers less than ``min_border_share`` of the border (an image cropped
    to the tissue has no background).
    """
    a = np.asarray(arr, dtype=np.float32)
    H, W = a.shape
    frame = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    values, counts = np.unique(np.rint(frame), return_counts=True)
    bg_value = float(values[np.argmax(counts)])
    empty = np.zeros((H, W), bool)
    if float((np.abs(frame - bg_value) <= tol).mean()) < min_border_share:
        return empty
    near = np.abs(a - bg_value) <= tol
    k = max(1, int(gap_px))
    # Opening: only blocks of background values count; scattered zeros in dark tissue do not.
    block = cv2.morphologyEx(near.astype(np.uint8), cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    n, labels = cv2.connectedComponents(block, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if edge.size == 0:
        return empty
    # Enclosed uniform regions are holes in the tissue (anechoic content), not background.
    return np.isin(labels, edge)


def _bands(profile: np.ndarray, weight: np.ndarray, gap: int) -> tuple[int, int] | None:
    """The run of ``profile`` (rows or columns holding content) with the most ``weight``, after
    joining runs separated by fewer than ``gap`` empty entries."""
    idx = np.flatnonzero(profile)
    if idx.size == 0:
        return None
    breaks = np.flatnonzero(np.diff(idx) > gap)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    best = int(np.argmax([weight[s:e].sum() for s, e in zip(starts, ends)]))
    return int(starts[best]), int(ends[best])


def find_field_of_view_safe(
    pixels: np.ndarray, *, tol: float = 2.0, gap_px: int = 5, min_fraction: float = 0.05,
    island_fraction: float = 0.02, margin_px: int = 2, name: str | None = None,
) -> USCrop:
    """Field of view that never cuts tissue (crop ``"safe"``; see the module docstring).

    The box: recursively drop whole background rows/columns at the borders and side panels
    separated from the content with the most pixels by at least ``gap_px`` background
    rows/columns; then widen it by ``margin_px`` (within the image). ``mask``: the box, less small islands (each under ``island_fraction`` of the
    main region and wholly outside its convex hull: text beside a fan) that uniform background
    separates from the main region. Raises :class:`PreprocessError` naming ``name`` when the
    image is uniform or the box covers less than ``min_fraction`` of it.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    label = f"image {name}" if name else "image"
    if arr.ndim != 2:
        raise PreprocessError(f"{label}: expected a 2-D greyscale array, got shape {arr.shape}")
    H, W = arr.shape
    if arr.size == 0 or float(arr.max()) <= float(arr.min()):
        raise PreprocessError(f"{label}: no field of view found (the image is uniform)")
    content = ~uniform_background(arr, tol=tol, gap_px=gap_px)
    y0, y1, x0, x1 = 0, H, 0, W
    while True:
        sub = content[y0:y1, x0:x1]
        rows = _bands(sub.any(axis=1), sub.sum(axis=1), gap_px)
        cols = _bands(sub.any(axis=0), sub.sum(axis=0), gap_px)
        if rows is None or cols is None:
            raise PreprocessError(f"{label}: no field of view found (nothing but uniform background)")
        new = (y0 + rows[0], y0 + rows[1], x0 + cols[0], x0 + cols[1])
        if new == (y0, y1, x0, x1):
            break
        y0, y1, x0, x1 = new
    # Content pixels whose value happens to equal the background's at the FOV's edge (anechoic
    # tissue touching it) read as background: a small margin keeps them.
    y0, y1, x0, x1 = max(y0 - margin_px, 0), min(y1 + margin_px, H), max(x0 - margin_px, 0), min(x1 + margin_px, W)
    if (y1 - y0) * (x1 - x0) < min_fraction * H * W:
        raise PreprocessError(
            f"{label}: no field of view found (content covers {100.0 * (y1 - y0) * (x1 - x0) / (H * W):.1f} % "
            f"of the image; at least {100 * min_fraction:.0f} % is required)"
        )
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    n, labels, stats, _ = cv2.connectedComponentsWithStats(content[y0:y1, x0:x1].astype(np.uint8), connectivity=8)
    if n > 2:
        main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        hull = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero((labels == main).astype(np.uint8))), 1)
        small = stats[:, cv2.CC_STAT_AREA] < island_fraction * stats[main, cv2.CC_STAT_AREA]
        touches = np.bincount(labels[hull.astype(bool)], minlength=n) > 0
        islands = small & ~touches
        islands[0] = False
        mask[y0:y1, x0:x1] &= ~islands[labels]
    return USCrop(mask=mask, box=(x0, y0, x1, y1))


def field_of_view(pixels: np.ndarray, mode: str = "v1", *, name: str | None = None) -> USCrop:
    """The field of view by crop ``mode``: ``"v1"`` (legacy models) or ``"safe"``."""
    if mode == "v1":
        return find_field_of_view(pixels, name=name)
    if mode == "safe":
        return find_field_of_view_safe(pixels, name=name)
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")


def crop_ultrasound(
    pixels: np.ndarray, *, name: str | None = None, clear_outside: bool = True, mode: str = "v1",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop an ultrasound image to its field of view; return the crop and a geometry record.

    With ``clear_outside`` pixels inside the box but outside the FOV region (annotations
    beside a fan) are set to zero. ``mode`` chooses the crop (:data:`CROP_MODES`). The record has ``crop_box``, ``flipped`` (always False),
    ``original_shape`` and ``output_shape``, so :func:`breastscreen.preprocess.mammo.to_original`
    maps results back.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    fov = field_of_view(arr, mode, name=name)
    x0, y0, x1, y1 = fov.box
    crop = arr[y0:y1, x0:x1].copy()
    if clear_outside:
        crop[~fov.mask[y0:y1, x0:x1]] = 0.0
    record = {
        "crop_box": [x0, y0, x1, y1],
        "flipped": False,
        "original_shape": [int(arr.shape[0]), int(arr.shape[1])],
        "output_shape": [int(crop.shape[0]), int(crop.shape[1])],
        "fov_cleared": bool(clear_outside),
    }
    if mode != "v1":  # legacy records stay exactly as they were
        record["crop_mode"] = mode
    return crop, record


# ---------------------------------------------------------------------------------------------
# Augmentation (Shen et al. 2021)


@dataclass(frozen=True)
class USAugmentParams:
    """One draw of the ultrasound training augmentation."""

    flip: bool
    angle: float  # degrees
    translate: tuple[float, float]  # (dx, dy) as fractions of width / height
    scale: float
    shear: float  # degrees


@dataclass(frozen=True)
class USAugmentConfig:
    """Ranges of the ultrasound training augmentation (paper defaults)."""

    flip_p: float = 0.5
    max_rotation: float = 45.0
    max_translate: float = 0.1
    scale_range: tuple[float, float] = (0.7, 1.5)
    max_shear: float = 25.0
    size: tuple[int, int] = (US_SIZE, US_SIZE)


def draw_us_params(rng: np.random.Generator, config: USAugmentConfig = USAugmentConfig()) -> USAugmentParams:
    """Draw one set of augmentation parameters from ``rng``."""
    return USAugmentParams(
        flip=bool(rng.random() < config.flip_p),
        angle=float(rng.uniform(-config.max_rotation, config.max_rotation)),
        translate=(
            float(rng.uniform(-config.max_translate, config.max_translate)),
            float(rng.uniform(-config.max_translate, config.max_translate)),
        ),
        scale=float(rng.uniform(*config.scale_range)),
        shear=float(rng.uniform(-config.max_shear, config.max_shear)),
    )


def _affine_matrix(params: USAugmentParams, shape: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """2x3 matrix mapping input pixels to output pixels: flip, rotate/scale/shear about the centre,
    translate, then the resize to ``out``."""
    H, W = shape
    oh, ow = out
    c = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    a = np.deg2rad(params.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shear = np.array([[1.0, np.tan(np.deg2rad(params.shear))], [0.0, 1.0]])
    lin = params.scale * rot @ shear
    if params.flip:
        lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    t = c - lin @ c + np.array([params.translate[0] * W, params.translate[1] * H])
    m = np.concatenate([np.concatenate([lin, t[:, None]], 1), [[0.0, 0.0, 1.0]]], 0)
    # pixel-centre convention: out = (in + 0.5) * s - 0.5
    resize = np.array([[ow / W, 0, 0.5 * ow / W - 0.5], [0, oh / H, 0.5 * oh / H - 0.5], [0, 0, 1.0]])
    return (resize @ m)[:2]


def normalize(x: np.ndarray, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """Normalise an image: fixed ``mean``/``std`` when given, else per-image statistics (std guarded)."""
    arr = np.asarray(x, dtype=np.float32)
    m = float(arr.mean()) if mean is None else float(mean)
    s = float(arr.std()) if std is None else float(std)
    return ((arr - m) / (s if s > 1e-6 else 1.0)).astype(np.float32)


def apply_us_augment(
    image: np.ndarray,
    params: USAugmentParams | None,
    size: tuple[int, int] = (US_SIZE, US_SIZE),
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Apply one parameter draw (``None`` = resize only) to an image (bilinear) and masks (nearest).

    Returns the transformed image (float32, not normalised) and masks at ``size`` (h, w).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"ultrasound image must be 2-D, got shape {img.shape}")
    oh, ow = int(size[0]), int(size[1])
    out_masks: dict[str, np.ndarray] = {}
    if params is None:
        out = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR)
        for key, m in (masks or {}).items():
            out_masks[key] = cv2.resize(np.asarray(m).astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST)
        return out, out_masks
    mat = _affine_matrix(params, img.shape, (oh, ow))
    out = cv2.warpAffine(img, mat, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    for key, m in (masks or {}).items():
        out_masks[key] = cv2.warpAffine(
            np.asarray(m).astype(np.uint8), mat, (ow, oh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        )
    return out, out_masks


@dataclass
class USTransform:
    """Train/eval transform of ultrasound images: augmentation (train only), resize, normalise.

    Deterministic: each call takes an explicit ``rng``; ``train=False`` ignores it.
    """

    train: bool = True
    config: USAugmentConfig = field(default_factory=USAugmentConfig)
    mean: float | None = None
    std: float | None = None

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator | None = None, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Transform one image (+ aligned masks); returns (normalised image, masks)."""
        params = None
        if self.train:
            if rng is None:
                raise ValueError("a training transform needs an explicit numpy Generator (rng)")
            params = draw_us_params(rng, self.config)
        out, out_masks = apply_us_augment(image, params, self.config.size, masks)
        return normalize(out, self.mean, self.std), out_masks


def iter_augmented(images: Iterable[np.ndarray], seed: int, config: USAugmentConfig = USAugmentConfig()) -> Iterator[np.ndarray]:
    """Yield augmented (not normalised) copies of ``images`` from one seeded generator, in order."""
    rng = np.random.default_rng(seed)
    for img in images:
        yield apply_us_augment(img, draw_us_params(rng, config), config.size)[0]


# ---------------------------------------------------------------------------------------------
# The one preparation step of model inputs (training cache and Predictor alike)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey pixels as uint8: 8-bit data unchanged, wider data linearly rescaled from its range."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        # Colour ultrasound screenshots: Doppler overlays are not used by the model.
        pixels = cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2:
        raise ValueError(f"ultrasound image must be 2-D grey or RGB, got shape {pixels.shape}")
    lo, hi = float(np.min(pixels)), float(np.max(pixels))
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(pixels).astype(np.uint8)
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    return np.rint((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


class ExcludedImage(PreprocessError):
    """An ultrasound image the paper's rules leave out (mostly zero pixels)."""


def fov_crop_uint8(raw: np.ndarray, *, name: str | None = None,
                   max_zero_fraction: float = MAX_ZERO_FRACTION, crop: str = "v1",
                   annotations: Any = None, rgb: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """8-bit field-of-view crop of a raw ultrasound image and its geometry record.

    ``crop`` is the crop mode (:data:`CROP_MODES`). With ``annotations`` (an
    :class:`~breastscreen.preprocess.us_annotations.AnnotationParams`) burned-in marks are
    detected and inpainted on the whole image first (``rgb``: the colour source, for the colour
    cue; taken from ``raw`` when it is RGB); the record then says ``annotations_removed``.
    Raises :class:`ExcludedImage` for an image the paper's rules exclude (mostly zero pixels,
    counted before any inpainting) and :class:`PreprocessError` when no field of view is
    found. ``breastscreen preprocess`` stores this crop (``--us-preparation``: ``safe`` by default,
    or ``legacy``); the function's own defaults are the legacy ``"v1"`` crop without removal.
    """
    raw_arr = np.asarray(raw)
    if rgb is None and raw_arr.ndim == 3 and raw_arr.shape[-1] in (3, 4):
        rgb = raw_arr[..., :3]
    u8 = to_uint8(raw_arr)
    zf = zero_fraction(u8)
    if zf > max_zero_fraction:
        raise ExcludedImage(f"mostly-empty: {zf:.0%} zero pixels (limit {max_zero_fraction:.0%})")
    removed = None
    if annotations is not None:
        from breastscreen.preprocess.us_annotations import remove_annotations

        removed = remove_annotations(u8, rgb, annotations)
        u8 = removed.pixels
    out, record = crop_ultrasound(u8, name=name, mode=crop)
    out = to_uint8(out)
    if out.size == 0:
        raise PreprocessError(f"{name or 'image'}: empty-crop: no field of view found")
    if removed is not None:
        record.update(annotations_removed=True, annotation_marks=removed.n_marks,
                      annotation_pixels=int(removed.inpainted.sum()),
                      annotation_params=annotations.model_dump(mode="json"))
    return out, record


US_PREPARATIONS = ("safe", "legacy")


def us_preparation(name: str) -> tuple[str, Any]:
    """``(crop mode, AnnotationParams or None)`` of a named preparation of ``breastscreen preprocess``.

    ``"safe"``: burned-in annotations removed (default parameters), then the crop that never cuts
    tissue, as ``breastscreen train us`` prepares new models (the bundled ``us-busbra-mil``);
    ``"legacy"``: the v1 crop with annotations kept, as models trained before those two existed.
    """
    from breastscreen.preprocess.us_annotations import AnnotationParams

    if name == "safe":
        return "safe", AnnotationParams()
    if name == "legacy":
        return "v1", None
    raise PreprocessError(f"--us-preparation must be one of {', '.join(US_PREPARATIONS)}, got {name!r}")


def resize_area(crop_u8: np.ndarray, size: int) -> np.ndarray:
    """The square uint8 image a model's input builder starts from (area interpolation)."""
    return cv2.resize(np.asarray(crop_u8, np.uint8), (size, size), interpolation=cv2.INTER_AREA).astype(np.uint8)
