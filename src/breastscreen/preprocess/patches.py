"""Patch sampling from lesion masks for the patch classifiers.

Wu et al. 2019 (supplementary) patch classifier, classes :data:`PATCH_CLASSES`:

* a patch is a square of side uniform in [128, 384] px (full resolution; times ``scale``),
  rotated by an angle uniform in [-30, 30] degrees, resized to 256x256 (times ``scale``);
* windows leaving the image or holding (almost) only background are rejected;
* ``malignant`` / ``benign``: the centre lies in a lesion of that label and the patch touches
  no lesion of the other label; ``outside``: the image has lesions but the patch touches none;
  ``negative``: the image comes from a breast with no findings.

The overlap tests are conservative: a patch is "outside" only if the axis-aligned bounding box
of the rotated square holds no lesion pixel (exact, from an integral image), so tiny
calcifications are never missed; candidates whose labels are ambiguous are rejected.

Shen et al. 2019 all-convolutional classifier, classes :data:`PATCH_CLASSES_5`:
:func:`roi_patch_set` builds the S1 set (one patch centred on each ROI) and the S10 set
(``n_per_roi`` random patches per ROI overlapping it by >= 0.9), each with as many background
patches (breast, no ROI) from the same images.

Sampling is vectorised over candidates (numpy) and deterministic for a seed; patches are
described by cheap :class:`PatchSpec` rows and cut out lazily with :func:`extract_patch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from breastscreen.errors import PreprocessError
from breastscreen.labels import PATCH_CLASSES, PATCH_CLASSES_5, PATCH_SIZE

_GRID = 9  # sample points per side used to measure the breast fraction of a candidate patch
_UNKNOWN = "unknown"  # lesion-mask group of lesions whose outcome is unknown


@dataclass
class PatchSource:
    """One preprocessed image with its breast mask and lesion masks.

    ``lesions`` holds ``(mask, label, kind)`` with label ``benign``/``malignant`` (or None when
    the outcome is unknown) and kind ``mass``/``calcification`` (or None). ``negative`` marks an
    image from a breast with no findings (source of ``negative`` patches); images with lesions
    give lesion and ``outside`` patches; images that are neither give nothing. A lesion of
    unknown outcome never gives patches: lesion patches must not touch it, and its image gives
    no ``outside`` patches.
    """

    image: np.ndarray
    breast_mask: np.ndarray
    lesions: list[tuple[np.ndarray, str | None, str | None]] = field(default_factory=list)
    negative: bool = False
    key: str = ""

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.breast_mask = np.asarray(self.breast_mask, dtype=bool)
        if self.image.ndim != 2 or self.breast_mask.shape != self.image.shape:
            raise ValueError(
                f"{self.key or 'patch source'}: image must be 2-D and the breast mask the same shape, "
                f"got {self.image.shape} and {self.breast_mask.shape}"
            )
        for mask, label, _ in self.lesions:
            if np.shape(mask) != self.image.shape:
                raise ValueError(f"{self.key or 'patch source'}: lesion mask shape {np.shape(mask)} != image {self.image.shape}")
            if label not in ("benign", "malignant", None):
                raise ValueError(f"{self.key or 'patch source'}: lesion label must be benign, malignant or None, "
                                 f"got {label!r}")
        if self.negative and self.lesions:
            raise ValueError(f"{self.key or 'patch source'}: an image with lesions cannot be negative")


@dataclass(frozen=True)
class PatchSpec:
    """One patch: source index, centre (row, col), side length (px), rotation (deg), class index."""

    source: int
    cy: float
    cx: float
    size: float
    angle: float
    label: int


def extract_patch(image: np.ndarray, cy: float, cx: float, size: float, angle: float, out_size: int,
                  interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Cut a square of side ``size`` centred at (cy, cx), rotated by ``angle`` degrees, as ``out_size``^2."""
    s = out_size / float(size)
    a = np.deg2rad(angle)
    ca, sa = np.cos(a) * s, np.sin(a) * s
    c = (out_size - 1) / 2.0
    # output = s * R(angle) @ (input - centre) + c
    mat = np.array([[ca, sa, c - ca * cx - sa * cy], [-sa, ca, c + sa * cx - ca * cy]])
    src = np.asarray(image, dtype=np.float32)
    return cv2.warpAffine(src, mat, (out_size, out_size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def _corners(cy: np.ndarray, cx: np.ndarray, size: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows / cols of the 4 corners of each rotated square, shape [N, 4]."""
    a = np.deg2rad(angle)[:, None]
    h = (size / 2.0)[:, None]
    u = np.array([-1.0, 1.0, 1.0, -1.0])[None] * h
    v = np.array([-1.0, -1.0, 1.0, 1.0])[None] * h
    xs = cx[:, None] + u * np.cos(a) - v * np.sin(a)
    ys = cy[:, None] + u * np.sin(a) + v * np.cos(a)
    return ys, xs


def _grid_points(cy, cx, size, angle, n: int = _GRID) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n) + 0.5) / n - 0.5
    u, v = np.meshgrid(t, t)
    u, v = u.ravel()[None] * size[:, None], v.ravel()[None] * size[:, None]
    a = np.deg2rad(angle)[:, None]
    xs = cx[:, None] + u * np.cos(a) - v * np.sin(a)
    ys = cy[:, None] + u * np.sin(a) + v * np.cos(a)
    return ys, xs


def _integral(mask: np.ndarray) -> np.ndarray:
    return cv2.integral(np.asarray(mask, dtype=np.uint8)).astype(np.int64)


def _box_sum(ii: np.ndarray, y0, x0, y1, x1) -> np.ndarray:
    """Sum of the mask over rows [y0, y1) and cols [x0, x1) (arrays, clipped to the image)."""
    H, W = ii.shape[0] - 1, ii.shape[1] - 1
    y0, y1 = np.clip(y0, 0, H), np.clip(y1, 0, H)
    x0, x1 = np.clip(x0, 0, W), np.clip(x1, 0, W)
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


@dataclass
class _Prepared:
    shape: tuple[int, int]
    breast_pts: np.ndarray  # [K, 2] rows, cols
    lesion_pts: dict[str, np.ndarray]
    ii_any: np.ndarray
    ii_label: dict[str, np.ndarray]


class PatchSampler:
    """Draw patch specs of the 4 :data:`PATCH_CLASSES` in a requested composition, from a seed.

    ``scale`` multiplies the full-resolution geometry: side in ``size_range`` px and output
    side ``PATCH_SIZE``. ``min_breast_fraction`` is the least fraction of a patch that must be
    breast (a 9x9 point grid inside the rotated square).
    """

    def __init__(
        self,
        sources: Sequence[PatchSource],
        scale: float = 1.0,
        size_range: tuple[float, float] = (128.0, 384.0),
        max_rotation: float = 30.0,
        out_size: int | None = None,
        min_breast_fraction: float = 0.1,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not 0 < size_range[0] <= size_range[1]:
            raise ValueError(f"size_range must satisfy 0 < low <= high, got {size_range}")
        if not 0.0 <= min_breast_fraction <= 1.0:
            raise ValueError(f"min_breast_fraction must be in [0, 1], got {min_breast_fraction}")
        self.sources = list(sources)
        self.scale = float(scale)
        self.size_range = (size_range[0] * scale, size_range[1] * scale)
        self.max_rotation = float(max_rotation)
        self.out_size = int(out_size) if out_size is not None else max(8, int(round(PATCH_SIZE * scale)))
        self.min_breast_fraction = float(min_breast_fraction)
        self._prep = [self._prepare(s) for s in self.sources]

    @staticmethod
    def _prepare(src: PatchSource) -> _Prepared:
        any_mask = np.zeros(src.image.shape, bool)
        by_label = {k: np.zeros(src.image.shape, bool) for k in ("benign", "malignant", _UNKNOWN)}
        for mask, label, _ in src.lesions:
            m = np.asarray(mask, dtype=bool)
            by_label[label or _UNKNOWN] |= m
            any_mask |= m
        return _Prepared(
            shape=src.image.shape,
            breast_pts=np.argwhere(src.breast_mask),
            lesion_pts={k: np.argwhere(v) for k, v in by_label.items() if k != _UNKNOWN},
            ii_any=_integral(any_mask),
            ii_label={k: _integral(v) for k, v in by_label.items()},
        )

    def _eligible(self, cls: str) -> list[int]:
        out = []
        for i, (s, p) in enumerate(zip(self.sources, self._prep)):
            if cls in ("malignant", "benign") and len(p.lesion_pts[cls]):
                out.append(i)
            elif cls == "outside" and s.lesions and len(p.breast_pts) and not p.ii_label[_UNKNOWN][-1, -1]:
                out.append(i)
            elif cls == "negative" and s.negative and len(p.breast_pts):
                out.append(i)
        return out

    def _candidates(self, cls: str, idx: int, n: int, rng: np.random.Generator) -> list[PatchSpec]:
        p = self._prep[idx]
        pts = p.lesion_pts[cls] if cls in ("malignant", "benign") else p.breast_pts
        pick = pts[rng.integers(0, len(pts), size=n)]
        cy = pick[:, 0] + rng.random(n)  # uniform inside the chosen pixel
        cx = pick[:, 1] + rng.random(n)
        size = rng.uniform(self.size_range[0], self.size_range[1], size=n)
        angle = rng.uniform(-self.max_rotation, self.max_rotation, size=n)
        H, W = p.shape
        ys, xs = _corners(cy, cx, size, angle)
        ok = (ys.min(1) >= 0) & (xs.min(1) >= 0) & (ys.max(1) <= H) & (xs.max(1) <= W)
        gy, gx = _grid_points(cy, cx, size, angle)
        gy = np.clip(gy.astype(int), 0, H - 1)
        gx = np.clip(gx.astype(int), 0, W - 1)
        ok &= self.sources[idx].breast_mask[gy, gx].mean(1) >= self.min_breast_fraction
        by0, bx0 = np.floor(ys.min(1)).astype(int), np.floor(xs.min(1)).astype(int)
        by1, bx1 = np.ceil(ys.max(1)).astype(int) + 1, np.ceil(xs.max(1)).astype(int) + 1
        if cls in ("malignant", "benign"):
            other = "benign" if cls == "malignant" else "malignant"
            ok &= _box_sum(p.ii_label[other], by0, bx0, by1, bx1) == 0
            ok &= _box_sum(p.ii_label[_UNKNOWN], by0, bx0, by1, bx1) == 0
        elif cls == "outside":
            ok &= _box_sum(p.ii_any, by0, bx0, by1, bx1) == 0
        label = PATCH_CLASSES.index(cls)
        return [PatchSpec(idx, float(cy[i]), float(cx[i]), float(size[i]), float(angle[i]), label)
                for i in np.flatnonzero(ok)]

    def sample_specs(self, composition: Mapping[str, int], seed: int, max_rounds: int = 50) -> list[PatchSpec]:
        """Draw ``composition[class]`` patch specs per class (shuffled together), deterministic for ``seed``.

        Raises :class:`PreprocessError` when a requested class has no eligible image or too few
        valid windows are found in ``max_rounds`` rounds of candidates.
        """
        rng = np.random.default_rng(seed)
        specs: list[PatchSpec] = []
        for cls in PATCH_CLASSES:  # fixed order keeps the draw deterministic
            want = int(composition.get(cls, 0))
            if want < 0:
                raise ValueError(f"composition[{cls!r}] must be >= 0, got {want}")
            if want == 0:
                continue
            eligible = self._eligible(cls)
            if not eligible:
                raise PreprocessError(f"no image can give {cls!r} patches (requested {want})")
            got: list[PatchSpec] = []
            for _ in range(max_rounds):
                need = want - len(got)
                if need <= 0:
                    break
                n_cand = max(8, 2 * need)
                per_src = np.bincount(rng.integers(0, len(eligible), size=n_cand), minlength=len(eligible))
                for j, k in enumerate(per_src):
                    if k:
                        got.extend(self._candidates(cls, eligible[j], int(k), rng))
            if len(got) < want:
                raise PreprocessError(
                    f"found only {len(got)} valid {cls!r} patches of {want} requested after {max_rounds} rounds "
                    "(lesions too close to the image edge, or patches larger than the images at this scale?)"
                )
            specs.extend(got[:want])
        order = rng.permutation(len(specs))
        return [specs[i] for i in order]

    def extract(self, spec: PatchSpec) -> np.ndarray:
        """Cut one patch (float32, ``out_size`` x ``out_size``) described by ``spec``."""
        return extract_patch(self.sources[spec.source].image, spec.cy, spec.cx, spec.size, spec.angle, self.out_size)

    def sample(self, composition: Mapping[str, int], seed: int) -> tuple[np.ndarray, np.ndarray, list[PatchSpec]]:
        """Convenience: specs plus the stacked patches [N, s, s] and labels [N] (small batches only)."""
        specs = self.sample_specs(composition, seed)
        patches = np.stack([self.extract(s) for s in specs]) if specs else np.zeros((0, self.out_size, self.out_size), np.float32)
        labels = np.array([s.label for s in specs], dtype=np.int64)
        return patches, labels, specs


def five_class(label: str | None, kind: str | None) -> int | None:
    """Index in :data:`PATCH_CLASSES_5` for a lesion, or None when its kind is not mass/calcification
    or its outcome (``label``) is unknown."""
    if label is None:
        return None
    k = (kind or "").lower()
    if k.startswith("calc"):
        name = f"{label}_calcification"
    elif k == "mass":
        name = f"{label}_mass"
    else:
        return None
    return PATCH_CLASSES_5.index(name)


@dataclass
class ROIPatchSet:
    """Result of :func:`roi_patch_set`: specs (axis-aligned, ``angle`` 0), out size and skipped lesions."""

    specs: list[PatchSpec]
    out_size: int
    skipped: list[str] = field(default_factory=list)

    def extract(self, sources: Sequence[PatchSource], spec: PatchSpec) -> np.ndarray:
        """Cut one patch of this set."""
        return extract_patch(sources[spec.source].image, spec.cy, spec.cx, spec.size, 0.0, self.out_size)


def roi_patch_set(
    sources: Sequence[PatchSource],
    n_per_roi: int,
    seed: int,
    scale: float = 1.0,
    patch_size: int | None = None,
    min_overlap: float = 0.9,
    max_tries: int = 2000,
    label_of: Callable[[str, str | None], int | None] | None = None,
) -> ROIPatchSet:
    """S1 (``n_per_roi=1``: centred on each ROI) or S10 (``n_per_roi=10``: random, overlap >= ``min_overlap``)
    patch sets with :data:`PATCH_CLASSES_5` labels, plus one background patch per ROI patch from
    the same image (breast, no lesion pixel in the patch).

    Each lesion mask is one ROI; overlap = |patch ∩ ROI| / min(|patch|, |ROI|). Lesions whose
    kind is neither mass nor calcification, or whose outcome is unknown, are skipped and listed
    in ``skipped`` (they still keep background patches away). Patches are
    axis-aligned squares of ``patch_size`` (default ``PATCH_SIZE * scale``) kept inside the image.
    ``label_of(label, kind)`` gives a lesion's class index (default :func:`five_class`; 0 is
    background), or None to skip the lesion.
    """
    if n_per_roi < 1:
        raise ValueError(f"n_per_roi must be >= 1, got {n_per_roi}")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    size = int(patch_size) if patch_size is not None else max(8, int(round(PATCH_SIZE * scale)))
    rng = np.random.default_rng(seed)
    specs: list[PatchSpec] = []
    skipped: list[str] = []
    half = size / 2.0
    for si, src in enumerate(sources):
        H, W = src.image.shape
        if H < size or W < size:
            skipped.extend(f"{src.key}: image {H}x{W} smaller than the patch {size}" for _ in src.lesions)
            continue
        any_mask = np.zeros((H, W), bool)
        for m, _, _ in src.lesions:
            any_mask |= np.asarray(m, dtype=bool)
        ii_any = _integral(any_mask)
        n_roi_patches = 0
        for li, (m, label, kind) in enumerate(src.lesions):
            cls = (label_of or five_class)(label, kind) if label is not None else None
            if cls is None:
                why = "outcome unknown" if label is None else f"kind {kind!r} is not mass or calcification"
                skipped.append(f"{src.key} lesion {li}: {why}")
                continue
            m = np.asarray(m, dtype=bool)
            if not m.any():
                skipped.append(f"{src.key} lesion {li}: empty mask")
                continue
            ii = _integral(m)
            area = int(m.sum())
            ys, xs = np.nonzero(m)
            ccy, ccx = (ys.min() + ys.max() + 1) / 2.0, (xs.min() + xs.max() + 1) / 2.0
            if n_per_roi == 1:
                cy = float(np.clip(ccy, half, H - half))
                cx = float(np.clip(ccx, half, W - half))
                specs.append(PatchSpec(si, cy, cx, float(size), 0.0, cls))
                n_roi_patches += 1
                continue
            need = min(area, size * size)
            cy = rng.uniform(max(half, ys.min() - half), min(H - half, ys.max() + 1 + half), size=max_tries)
            cx = rng.uniform(max(half, xs.min() - half), min(W - half, xs.max() + 1 + half), size=max_tries)
            y0, x0 = np.round(cy - half).astype(int), np.round(cx - half).astype(int)
            inside = _box_sum(ii, y0, x0, y0 + size, x0 + size)
            good = np.flatnonzero(inside >= min_overlap * need)[:n_per_roi]
            if len(good) < n_per_roi:
                skipped.append(f"{src.key} lesion {li}: only {len(good)} of {n_per_roi} patches reach overlap {min_overlap}")
            for g in good:
                specs.append(PatchSpec(si, float(y0[g] + half), float(x0[g] + half), float(size), 0.0, cls))
            n_roi_patches += len(good)
        if n_roi_patches:
            bpts = np.argwhere(src.breast_mask)
            if len(bpts) == 0:
                continue
            pick = bpts[rng.integers(0, len(bpts), size=max_tries)]
            cy = np.clip(pick[:, 0] + 0.5, half, H - half)
            cx = np.clip(pick[:, 1] + 0.5, half, W - half)
            y0, x0 = np.round(cy - half).astype(int), np.round(cx - half).astype(int)
            clean = np.flatnonzero(_box_sum(ii_any, y0, x0, y0 + size, x0 + size) == 0)[:n_roi_patches]
            if len(clean) < n_roi_patches:
                skipped.append(f"{src.key}: only {len(clean)} of {n_roi_patches} background patches found")
            for g in clean:
                specs.append(PatchSpec(si, float(y0[g] + half), float(x0[g] + half), float(size), 0.0, 0))
    return ROIPatchSet(specs=specs, out_size=size, skipped=skipped)


def sources_from_exams(
    exams: Iterable, load: Callable[[str], np.ndarray] | None = None, skipped: list[str] | None = None
) -> list[PatchSource]:
    """Build :class:`PatchSource` rows from PREPROCESSED exams (images, breast masks, lesion masks).

    An image is ``negative`` when its breast's labels are both 0 (no findings); images with
    lesion masks give lesion/outside patches; others (unknown labels, findings without masks)
    are left out. An image with any mask or ROI of unknown outcome is left out too, since its
    "outside" patches could hold an unlabelled lesion: its ``exam/view/index`` key is appended
    to ``skipped`` when a list is given, and their number is logged.
    ``load`` reads an image path into a 2-D array (default: ``load_image``).
    """
    from breastscreen.data.types import view_side

    if load is None:
        from breastscreen.data.readers import load_image

        def load(path: str) -> np.ndarray:
            return load_image(path).pixels

    out: list[PatchSource] = []
    unknown: list[str] = []
    for exam in exams:
        seen: dict[str, int] = {}
        for view, img in exam.iter_images():
            index = seen[view] = seen.get(view, -1) + 1
            if any(p.label is None for p in (*img.masks, *img.rois)):
                unknown.append(f"{exam.exam_id}/{view}/{index}")
                continue
            rec = img.preprocessing or {}
            if "breast_mask_path" not in rec:
                raise PreprocessError(f"exam {exam.exam_id} {view}: not preprocessed (no breast_mask_path); run "
                                      "`breastscreen preprocess` first")
            side = view_side(view)
            lab = exam.label(side) if side else None
            negative = bool(lab is not None and lab.benign == 0 and lab.malignant == 0 and not img.masks)
            if not img.masks and not negative:
                continue
            pixels = load(img.path)
            lesions = [(load(m.path) > 0, m.label, m.kind) for m in img.masks]
            out.append(PatchSource(pixels, load(rec["breast_mask_path"]) > 0, lesions, negative,
                                   key=f"{exam.exam_id}/{view}/{index}"))
    if unknown:
        logging.getLogger("breastscreen").info("patch sources: %d images with a lesion of unknown outcome left out",
                                               len(unknown))
        if skipped is not None:
            skipped.extend(unknown)
    return out
