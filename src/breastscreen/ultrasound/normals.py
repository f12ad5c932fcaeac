"""Derived normals: lesion-free crops cut from ultrasound images that have a lesion mask.

BUS-BRA has lesion images only, so a breast-level model trained on it never sees a breast
without a finding. This module cuts, from each image with a lesion mask, at most one rectangle
of tissue away from the lesion, deterministically (no random numbers), by these rules
(:class:`NormalCropRules`, defaults fixed before any run that uses them):

1. **Field of view.** The crop lies inside the box and the mask of the existing safe crop
   (:func:`~breastscreen.preprocess.ultrasound.find_field_of_view_safe`) of the 8-bit image, and
   holds no pixel of the uniform scanner background
   (:func:`~breastscreen.preprocess.ultrasound.uniform_background`): tissue only.
2. **Away from the lesion.** Forbidden: every lesion mask of the image (all labels, pixels > 0)
   and, for each 8-connected lesion component, its near-posterior band (the component's
   bounding-box columns from its top row down to ``posterior_depth`` (1.0) lesion heights below
   its bottom row: posterior shadowing or enhancement belongs to the lesion); the union is
   dilated by ``margin_px`` (24 px, elliptical) so that the lesion border, its halo and the
   calipers drawn on it stay out.
3. **Size and shape.** Both sides at least ``min_side_px`` (96 px); the longer side at most
   ``max_aspect`` (2.0) times the shorter.
4. **Choice.** The allowed rectangle of largest area: heights from ``min_side_px`` upwards in
   steps of ``step_px`` (4 px), at each height the widest allowed run (cut to ``max_aspect`` x
   height); equal areas keep the first found (shorter height first, then topmost, then
   leftmost). One crop per image at most (more would be near-copies of each other).
5. **Excluded, and reported with the reason** (never silently): images without a lesion mask
   (``no-mask``), with an empty mask (``empty-mask``) or a mask of another size than the image
   (``mask-shape``), images whose safe crop finds no field of view (``no-fov``), and images in
   which no crop of the minimum size fits (``no-fit``).
6. **Annotations.** The crop is written with the source pixels (8-bit grey PNG; the colour
   samples when the source is colour). Nothing is inpainted here: burned-in text and marks in a
   crop are removed by the model's spec when it prepares the image
   (``USSpec.remove_annotations``), exactly as in every lesion image, so both kinds of bag get the
   same treatment. Calipers sit on lesion borders and are kept out by the margin.

Bags: the crops of one exam and view form one **normal bag** of the same woman and breast:
exam ``<exam_id>-normal``, the same ``patient_id``, labels benign 0 / malignant 0, each image
with the ``fold`` of its source image (so cross-validation folds stay patient-disjoint: a crop
goes to the fold of the image it was cut from), ``derived_from`` (source path) and ``crop_box``.
Files go to ``OUT/images/`` and the full record (every crop and every exclusion) to
``OUT/normals.json``; nothing is written into the dataset folder. A second call with the same
rules and sources reuses the record and the files.

Caveat: a crop is smaller than its source image, so after the model's resize to a fixed size
its speckle looks coarser (magnified by about 1/sqrt(crop share of the field of view)); a model
could use that scale difference, which the lesion-vs-normal AUROC on derived normals does not
rule out.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from breastscreen.data.types import UNKNOWN_SIDE, BreastLabel, Exam, ImageRef, Modality, view_side
from breastscreen.errors import BreastscreenError, PreprocessError
from breastscreen.utils import atomic_path

NORMAL_SUFFIX = "-normal"
REPORT_NAME = "normals.json"
REASONS = ("no-mask", "empty-mask", "mask-shape", "no-fov", "no-fit")


@dataclass(frozen=True)
class NormalCropRules:
    """The derivation rules of :mod:`breastscreen.ultrasound.normals` (see its docstring)."""

    margin_px: int = 24
    posterior_depth: float = 1.0
    min_side_px: int = 96
    max_aspect: float = 2.0
    step_px: int = 4

    def __post_init__(self) -> None:
        if self.margin_px < 0 or self.min_side_px < 8 or self.step_px < 1:
            raise ValueError(f"normal-crop rules need margin_px >= 0, min_side_px >= 8 and step_px >= 1, got {self}")
        if self.posterior_depth < 0 or self.max_aspect < 1.0:
            raise ValueError(f"normal-crop rules need posterior_depth >= 0 and max_aspect >= 1, got {self}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (recorded in every result that used the rules)."""
        return asdict(self)


@dataclass
class NormalCrop:
    """Outcome for one source image: a crop ``box`` (x0, y0, x1, y1) or the ``reason`` it has none."""

    source: str
    box: tuple[int, int, int, int] | None = None
    reason: str = ""
    fov_share: float | None = None  # crop area / safe field-of-view box area


@dataclass
class NormalsReport:
    """Every crop and every exclusion of one derivation."""

    rules: NormalCropRules
    crops: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)
    n_bags: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts for a results JSON (the lists stay in ``normals.json``)."""
        by_reason: dict[str, int] = {}
        for e in self.excluded:
            key = e["reason"].split(":")[0]
            by_reason[key] = by_reason.get(key, 0) + 1
        shares = [c["fov_share"] for c in self.crops if c.get("fov_share") is not None]
        return {
            "rules": self.rules.as_dict(), "n_source_images": len(self.crops) + len(self.excluded),
            "n_crops": len(self.crops), "n_bags": self.n_bags, "n_excluded": len(self.excluded),
            "excluded_by_reason": by_reason,
            "median_crop_share_of_fov": float(np.median(shares)) if shares else None,
        }


def forbidden_region(lesion: np.ndarray, rules: NormalCropRules = NormalCropRules()) -> np.ndarray:
    """Pixels no normal crop may touch: lesion + near-posterior band, dilated by the margin (rule 2)."""
    les = np.asarray(lesion) > 0
    if les.ndim != 2:
        raise ValueError(f"lesion mask must be 2-D, got shape {les.shape}")
    H = les.shape[0]
    out = les.copy()
    n, _, stats, _ = cv2.connectedComponentsWithStats(les.astype(np.uint8), connectivity=8)
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        bottom = min(H, y + h + int(round(rules.posterior_depth * h)))
        out[y:bottom, x:x + w] = True
    if rules.margin_px > 0:
        k = 2 * rules.margin_px + 1
        out = cv2.dilate(out.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    return out


def allowed_region(pixels_u8: np.ndarray, lesion: np.ndarray, rules: NormalCropRules = NormalCropRules(),
                   name: str | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(pixels a crop may cover, safe field-of-view box) of one 8-bit image (rules 1 and 2).

    Raises :class:`PreprocessError` naming ``name`` when the safe crop finds no field of view.
    """
    from breastscreen.preprocess.ultrasound import find_field_of_view_safe, uniform_background

    img = np.asarray(pixels_u8)
    fov = find_field_of_view_safe(img, name=name)
    x0, y0, x1, y1 = fov.box
    inside = np.zeros(img.shape, bool)
    inside[y0:y1, x0:x1] = True
    allowed = inside & fov.mask & ~uniform_background(img) & ~forbidden_region(lesion, rules)
    return allowed, fov.box


def largest_crop(allowed: np.ndarray, rules: NormalCropRules = NormalCropRules()) -> tuple[int, int, int, int] | None:
    """Largest rectangle (x0, y0, x1, y1) inside ``allowed`` obeying rules 3-4, or None when none fits."""
    ok_px = np.asarray(allowed, bool)
    if ok_px.ndim != 2:
        raise ValueError(f"allowed region must be 2-D, got shape {ok_px.shape}")
    H, W = ok_px.shape
    # bad[y] = forbidden pixels above row y per column: a column is free over rows y..y+h-1
    # when bad[y + h] == bad[y], which tests every height in one vectorised step.
    bad = np.zeros((H + 1, W), np.int32)
    bad[1:] = np.cumsum(~ok_px, axis=0, dtype=np.int32)
    cols = np.arange(W)
    best: tuple[int, tuple[int, int, int, int]] | None = None
    for h in range(rules.min_side_px, H + 1, rules.step_px):
        free = (bad[h:] - bad[:-h]) == 0
        if not free.any():
            break  # a taller crop cannot fit where this one does not
        last_blocked = np.maximum.accumulate(np.where(free, -1, cols), axis=1)
        run = cols[None, :] - last_blocked  # width of the free run ending at each column
        w = min(int(run.max()), int(rules.max_aspect * h))
        if w < rules.min_side_px or h > rules.max_aspect * w:
            continue
        if best is not None and h * w <= best[0]:
            continue
        y, x_end = np.unravel_index(int(np.argmax(run >= w)), run.shape)
        best = (h * w, (int(x_end) - w + 1, int(y), int(x_end) + 1, int(y) + h))
    return None if best is None else best[1]


def derive_normal_crop(pixels: np.ndarray, lesion: np.ndarray | None, rules: NormalCropRules = NormalCropRules(),
                       name: str = "image") -> NormalCrop:
    """The normal crop of one image (grey or RGB pixels, lesion mask of the same size), or why there is none."""
    from breastscreen.preprocess.ultrasound import to_uint8

    if lesion is None:
        return NormalCrop(name, reason="no-mask: the image has no lesion mask")
    u8 = to_uint8(pixels)
    les = np.asarray(lesion)
    if les.shape[:2] != u8.shape:
        return NormalCrop(name, reason=f"mask-shape: mask {les.shape[:2]} vs image {u8.shape}")
    les = les > 0
    if not les.any():
        return NormalCrop(name, reason="empty-mask: the lesion mask has no pixel")
    try:
        allowed, (fx0, fy0, fx1, fy1) = allowed_region(u8, les, rules, name)
    except PreprocessError as exc:
        return NormalCrop(name, reason=f"no-fov: {exc}")
    box = largest_crop(allowed, rules)
    if box is None:
        return NormalCrop(name, reason=f"no-fit: no lesion-free crop of {rules.min_side_px} px fits")
    x0, y0, x1, y1 = box
    return NormalCrop(name, box, fov_share=(x1 - x0) * (y1 - y0) / max((fx1 - fx0) * (fy1 - fy0), 1))


def _lesion_union(image: ImageRef, shape: tuple[int, int]) -> np.ndarray | None:
    """Union of an image's lesion masks (None without masks); a mask of another size is returned as is."""
    if not image.masks:
        return None
    union = None
    for m in image.masks:
        arr = cv2.imread(m.path, cv2.IMREAD_GRAYSCALE)
        if arr is None:
            raise BreastscreenError(f"cannot read lesion mask {m.path}")
        if arr.shape != shape:
            return arr
        union = arr > 0 if union is None else union | (arr > 0)
    return union


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:120]


def _write_crop(path: Path, data: Any, box: tuple[int, int, int, int]) -> None:
    from breastscreen.preprocess.ultrasound import to_uint8

    x0, y0, x1, y1 = box
    if data.colour is not None:
        # Keep the colour samples: the annotation remover uses chroma as a cue, as on the source.
        rgb = np.clip(np.rint(np.asarray(data.colour, np.float32)[y0:y1, x0:x1, :3]), 0, 255).astype(np.uint8)
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    else:
        out = to_uint8(data.pixels)[y0:y1, x0:x1]
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(out)):
            raise BreastscreenError(f"cannot write normal crop {path}")


def _previous(out: Path, rules: NormalCropRules) -> dict[str, dict[str, Any]]:
    """Outcomes of an earlier derivation with the same rules, by source path ({} when none)."""
    path = out / REPORT_NAME
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("rules") != rules.as_dict():
        return {}
    return {**{e["image"]: e for e in old.get("excluded", [])}, **{c["source"]: c for c in old.get("crops", [])}}


def derive_normal_exams(exams: Sequence[Exam], out_dir: str | Path, rules: NormalCropRules = NormalCropRules(),
                        log: Callable[[str], None] | None = None) -> tuple[list[Exam], NormalsReport]:
    """Normal bags (one exam per source exam with crops) written under ``out_dir``; see the module docstring."""
    from breastscreen.data.readers import load_image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    previous = _previous(out, rules)
    report = NormalsReport(rules)
    normals: list[Exam] = []
    for n_exam, exam in enumerate(exams):
        if exam.modality is not Modality.US:
            raise BreastscreenError(f"exam {exam.exam_id} is {exam.modality.value}; normal crops need ultrasound exams")
        views: dict[str, list[ImageRef]] = {}
        for view, image in exam.iter_images():
            if not view.endswith("-US"):
                continue
            file = out / "images" / f"{_safe_name(exam.exam_id)}-{_safe_name(Path(image.path).stem)}{NORMAL_SUFFIX}.png"
            old = previous.get(image.path)
            data = None
            if old is not None and (old.get("box") is None or file.is_file()):
                crop = NormalCrop(image.path, tuple(old["box"]) if old.get("box") else None, old.get("reason", ""),
                                  old.get("fov_share"))
            else:
                data = load_image(image.path, frame=image.frame)
                crop = derive_normal_crop(data.pixels, _lesion_union(image, data.pixels.shape), rules, image.path)
            if crop.box is None:
                report.excluded.append({"image": image.path, "reason": crop.reason})
                continue
            if not file.is_file():
                _write_crop(file, data if data is not None else load_image(image.path, frame=image.frame), crop.box)
            meta = {k: image.meta[k] for k in ("fold", "device", "panel") if k in image.meta}
            if "id" in image.meta:
                meta["id"] = f"{image.meta['id']}{NORMAL_SUFFIX}"
            meta.update(derived_from=image.path, crop_box=list(crop.box), derivation="normal crop")
            views.setdefault(view, []).append(ImageRef(str(file.resolve()), pixel_spacing=image.pixel_spacing,
                                                       meta=meta))
            report.crops.append({"source": image.path, "file": str(file), "box": list(crop.box),
                                 "fov_share": crop.fov_share, "exam_id": exam.exam_id})
        if views:
            labels = {view_side(v) or UNKNOWN_SIDE: BreastLabel(0, 0) for v in views}
            meta = {"derived_from_exam": exam.exam_id, "derivation": "normal crops"}
            meta.update({k: exam.meta[k] for k in ("dataset", "fold") if k in exam.meta})
            normals.append(Exam(f"{exam.exam_id}{NORMAL_SUFFIX}", Modality.US, views, patient_id=exam.patient_id,
                                labels=labels, meta=meta))
            report.n_bags += len(views)
        if log is not None and (n_exam + 1) % 200 == 0:
            log(f"normal crops: {n_exam + 1}/{len(exams)} exams, {len(report.crops)} crops")
    with atomic_path(out / REPORT_NAME) as tmp:
        tmp.write_text(json.dumps({"rules": rules.as_dict(), **report.summary(), "crops": report.crops,
                                   "excluded": report.excluded}, indent=1))
    return normals, report
