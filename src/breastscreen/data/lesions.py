"""Lesions as data: one :class:`LesionRecord` per lesion of an image, built from its masks and ROIs.

A manifest stores lesions as the ``masks`` and ``rois`` of each image (see
:mod:`breastscreen.data.types`). This module turns them into lesion records, the unit a
lesion-level classifier trains and predicts on, and gives each lesion's region as a pixel mask.

**Shapes.** A lesion's region is a ``mask`` (a binary image file aligned with its image), a
``box`` (``x0, y0, x1, y1``, x1/y1 exclusive) or a ``circle`` (``cx, cy, r``; the pixels whose
centre ``(col, row)`` lies within ``r`` of the centre, as in mini-MIAS). An ROI with a circle is
a circle lesion; its box is the circle's bounding box.

**Identity.** Lesions are named within their image by ``lesion_id``:

* A mask and an ROI of the same image with the same ``lesion_id`` are ONE lesion; the mask
  gives the region (preferred over the ROI's box or circle), the record keeps the ROI's box
  and circle too. A lesion has at most one mask and at most one ROI.
* Masks and ROIs without ``lesion_id`` get automatic ids. When the image has NO explicit id at
  all: if it has masks, its lesions are its masks (``m1``, ``m2`` ... in order) and its ROIs are
  ignored, because legacy manifests (written by the synthetic generator and the dataset adapters
  before lesion ids existed) store each lesion as a mask plus that mask's box; if it has no
  masks, its lesions are its ROIs (``r1``, ``r2`` ...). When the image has some explicit ids,
  every mask or ROI without one is a lesion of its own, ``m<k>`` / ``r<k>`` by its position
  among the image's masks / ROIs (an explicit id equal to such an automatic one is an error).
* The outcome of a lesion is the ``label`` of its parts (``benign`` / ``malignant``; ``None`` =
  unknown). Parts of one lesion with different known outcomes are an error naming the exam,
  view and lesion id; an unknown part takes the known outcome of the other. The kind is the
  mask's, else the ROI's.

Records of an exam come in canonical view order (``L-CC``, ``R-CC``, ``L-MLO``, ``R-MLO``,
``L-US``, ``R-US``, ``U-US``), then image index, then first appearance of the lesion id (masks
before ROIs). ``record.key`` = ``exam_id/view/image_index/lesion_id`` is unique in a manifest.

Every problem with a lesion raises :class:`LesionError` with a one-line message naming the
image file and the lesion id.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

import numpy as np

from breastscreen.data.types import ALL_VIEWS, ROI, Exam, ImageRef, LesionMask
from breastscreen.errors import BreastscreenError

SHAPES: tuple[str, ...] = ("mask", "box", "circle")
OUTCOMES: tuple[str, ...] = ("benign", "malignant")
UNKNOWN = "unknown"  # summary key of lesions whose outcome is None
UNSPECIFIED_KIND = "unspecified"  # summary key of lesions whose kind is None


class LesionError(BreastscreenError):
    """A lesion cannot be built or located: conflicting parts, unusable mask, region outside the image."""


@dataclass(frozen=True)
class LesionRecord:
    """One lesion of one image, in the image's own pixel geometry.

    ``box`` is always set for ``box`` and ``circle`` lesions; a ``mask`` lesion has the box (and
    circle) of an ROI with the same id when there is one, else ``None``.
    """

    exam_id: str
    patient_id: str | None
    view: str  # e.g. "L-CC"
    image_index: int  # index within exam.views[view]
    image_path: str
    lesion_id: str
    outcome: str | None  # "benign" | "malignant" | None
    kind: str | None  # "mass" | "calcification" | other string | None
    shape: str  # "mask" | "box" | "circle"
    mask_path: str | None
    box: tuple[int, int, int, int] | None
    circle: tuple[float, float, float] | None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"lesion shape must be one of {SHAPES}, got {self.shape!r}")
        if self.shape == "mask" and not self.mask_path:
            raise ValueError("a mask lesion needs mask_path")
        if self.shape in ("box", "circle") and self.box is None:
            raise ValueError(f"a {self.shape} lesion needs box")
        if self.shape == "circle" and self.circle is None:
            raise ValueError("a circle lesion needs circle")

    @property
    def key(self) -> str:
        """``exam_id/view/image_index/lesion_id``, unique within a manifest."""
        return f"{self.exam_id}/{self.view}/{self.image_index}/{self.lesion_id}"


_Part = Union[LesionMask, ROI]


def _where(exam: Exam, view: str, index: int, image: ImageRef) -> str:
    return f"{image.path}: exam {exam.exam_id} {view} image {index}"


def _parts(exam: Exam, view: str, index: int, image: ImageRef) -> list[tuple[str, _Part]]:
    """(lesion id, part) of every mask / ROI that makes a lesion, by the identity rules."""
    explicit = {p.lesion_id for p in (*image.masks, *image.rois) if p.lesion_id is not None}
    if not explicit:
        if image.masks:  # legacy: one lesion per mask, ROIs are the masks' derived boxes
            return [(f"m{k}", m) for k, m in enumerate(image.masks, start=1)]
        return [(f"r{k}", r) for k, r in enumerate(image.rois, start=1)]
    out: list[tuple[str, _Part]] = []
    for prefix, items in (("m", image.masks), ("r", image.rois)):
        for k, p in enumerate(items, start=1):
            if p.lesion_id is not None:
                out.append((p.lesion_id, p))
                continue
            auto = f"{prefix}{k}"
            if auto in explicit:
                raise LesionError(f"{_where(exam, view, index, image)}: lesion {auto!r}: the automatic id of "
                                  f"{'mask' if prefix == 'm' else 'ROI'} {k} (which has no lesion_id) is also an "
                                  "explicit id; give every mask and ROI of this image a lesion_id")
            out.append((auto, p))
    return out


def _merge(exam: Exam, view: str, index: int, image: ImageRef, lesion_id: str, parts: list[_Part]) -> LesionRecord:
    where = f"{_where(exam, view, index, image)}: lesion {lesion_id!r}"
    masks = [p for p in parts if isinstance(p, LesionMask)]
    rois = [p for p in parts if isinstance(p, ROI)]
    if len(masks) > 1 or len(rois) > 1:
        raise LesionError(f"{where}: {len(masks)} masks and {len(rois)} ROIs share this id; a lesion has at most "
                          "one mask and one ROI")
    outcomes = sorted({p.label for p in parts if p.label is not None})
    if len(outcomes) > 1:
        raise LesionError(f"{where}: conflicting outcomes {' and '.join(outcomes)} for one lesion id")
    mask = masks[0] if masks else None
    roi = rois[0] if rois else None
    kind = (mask.kind if mask is not None and mask.kind else None) or (roi.kind if roi is not None else None)
    if mask is not None:
        shape = "mask"
    else:
        shape = "circle" if roi is not None and roi.circle is not None else "box"
    return LesionRecord(
        exam_id=exam.exam_id, patient_id=exam.patient_id, view=view, image_index=index, image_path=image.path,
        lesion_id=lesion_id, outcome=outcomes[0] if outcomes else None, kind=kind, shape=shape,
        mask_path=mask.path if mask is not None else None,
        box=tuple(roi.box) if roi is not None else None,  # type: ignore[arg-type]
        circle=tuple(roi.circle) if roi is not None and roi.circle is not None else None,  # type: ignore[arg-type]
    )


def image_lesions(exam: Exam, view: str, index: int, image: ImageRef) -> list[LesionRecord]:
    """The lesions of one image (``exam.views[view][index]``), by the identity rules of this module."""
    groups: dict[str, list[_Part]] = {}
    for lesion_id, part in _parts(exam, view, index, image):
        groups.setdefault(lesion_id, []).append(part)
    return [_merge(exam, view, index, image, lid, parts) for lid, parts in groups.items()]


def exam_lesions(exam: Exam) -> list[LesionRecord]:
    """The lesions of every image of an exam: canonical view order, then image index."""
    out: list[LesionRecord] = []
    for view in ALL_VIEWS:
        for index, image in enumerate(exam.views.get(view, [])):
            out.extend(image_lesions(exam, view, index, image))
    return out


def manifest_lesions(exams: Iterable[Exam]) -> list[LesionRecord]:
    """The lesions of every exam, in exam order; raises :class:`LesionError` when two keys repeat."""
    out: list[LesionRecord] = []
    seen: set[str] = set()
    for exam in exams:
        for rec in exam_lesions(exam):
            if rec.key in seen:
                raise LesionError(f"{rec.image_path}: lesion {rec.lesion_id!r}: key {rec.key!r} repeats "
                                  f"(exam id {rec.exam_id!r} given twice?)")
            seen.add(rec.key)
            out.append(rec)
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_shape(shape: tuple[int, int], where: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise LesionError(f"{where}: image shape must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1:
        raise LesionError(f"{where}: image shape must be positive, got {shape!r}")
    return h, w


def _mask_region(record: LesionRecord, shape: tuple[int, int], where: str) -> np.ndarray:
    from breastscreen.preprocess.pipeline import load_mask

    try:
        region = load_mask(str(record.mask_path), shape)
    except BreastscreenError as exc:
        from breastscreen.errors import PreprocessError

        if isinstance(exc, PreprocessError):  # load_mask's shape check; the message names both shapes
            raise LesionError(_one_line(f"{where}: {exc}")) from None
        raise LesionError(_one_line(f"{where}: mask file unreadable ({exc})")) from None
    except (OSError, ValueError) as exc:
        raise LesionError(_one_line(f"{where}: mask file {record.mask_path} unreadable ({exc})")) from None
    if not region.any():
        raise LesionError(f"{where}: mask {record.mask_path} is empty (no pixel set)")
    return region


def lesion_region(record: LesionRecord, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's region as a boolean mask of ``shape`` = (height, width), the image's pixel geometry.

    ``mask``: the mask file (same shape required); ``box``: the rectangle; ``circle``: the disc.
    A box or circle partly outside the image is clipped. Raises :class:`LesionError` (naming the
    image file and lesion id) for an unreadable mask, a mask of another shape, an empty mask, and
    a region with no pixel inside the image.
    """
    where = f"{record.image_path}: lesion {record.lesion_id!r}"
    h, w = _check_shape(shape, where)
    if record.shape == "mask":
        return _mask_region(record, (h, w), where)
    out = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in record.box)  # type: ignore[union-attr]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 > cx0 and cy1 > cy0:
        if record.shape == "box":
            out[cy0:cy1, cx0:cx1] = True
        else:
            cx, cy, r = record.circle  # type: ignore[misc]
            # Evaluate the disc over its bounding box only: a mammogram is ~10^7 pixels, a lesion far fewer.
            bx0, by0 = max(0, math.floor(cx - r)), max(0, math.floor(cy - r))
            bx1, by1 = min(w, math.floor(cx + r) + 1), min(h, math.floor(cy + r) + 1)
            if bx1 > bx0 and by1 > by0:
                yy, xx = np.mgrid[by0:by1, bx0:bx1]
                out[by0:by1, bx0:bx1] = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if not out.any():
        what = f"box {tuple(record.box)}" if record.shape == "box" else f"circle {tuple(record.circle)}"  # type: ignore[arg-type]
        raise LesionError(f"{where}: {what} has no pixel inside the {h}x{w} image")
    return out


def _each_image_lesions(exams: Iterable[Exam]) -> Iterator[tuple[ImageRef, list[LesionRecord] | LesionError]]:
    """Every image with its lesion records, or the error building them raised."""
    for exam in exams:
        for view in ALL_VIEWS:
            for index, image in enumerate(exam.views.get(view, [])):
                try:
                    yield image, image_lesions(exam, view, index, image)
                except LesionError as exc:
                    yield image, exc


def lesion_summary(exams: Iterable[Exam]) -> dict[str, Any]:
    """Counts of the lesions of ``exams`` (for ``manifest check``).

    Keys: ``lesions``, ``images_with_lesions``, ``by_outcome`` (benign / malignant / unknown),
    ``by_kind`` (kind, ``unspecified`` when None; most frequent first), ``by_shape`` (mask / box /
    circle) and ``errors``: one message per image whose lesions could not be built (those images
    are left out of the counts).
    """
    n = 0
    images = 0
    outcome = Counter({k: 0 for k in (*OUTCOMES, UNKNOWN)})
    kind: Counter[str] = Counter()
    shape = Counter({k: 0 for k in SHAPES})
    errors: list[str] = []
    for _, records in _each_image_lesions(exams):
        if isinstance(records, LesionError):
            errors.append(str(records))
            continue
        images += bool(records)
        for rec in records:
            n += 1
            outcome[rec.outcome or UNKNOWN] += 1
            kind[rec.kind or UNSPECIFIED_KIND] += 1
            shape[rec.shape] += 1
    return {
        "lesions": n,
        "images_with_lesions": images,
        "by_outcome": dict(outcome),
        "by_kind": dict(sorted(kind.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_shape": dict(shape),
        "errors": errors,
    }


def format_lesion_summary(summary: dict[str, Any]) -> str:
    """One line from :func:`lesion_summary`, e.g. ``lesions: 12 on 9 images (benign 7, malignant 4, unknown 1; ...)``."""
    if not summary["lesions"]:
        return "lesions: 0"
    groups = []
    for key in ("by_outcome", "by_kind", "by_shape"):
        groups.append(", ".join(f"{k} {v}" for k, v in summary[key].items() if v))
    return f"lesions: {summary['lesions']} on {summary['images_with_lesions']} images ({'; '.join(groups)})"


def _image_shape(path: str) -> tuple[int, int]:
    """(rows, columns) of an image from its header, without decoding pixels where the format allows."""
    from breastscreen.data.readers import RASTER_SUFFIXES, load_image, raster_header, read_dicom_header

    if os.path.splitext(path)[1].lower() in RASTER_SUFFIXES:
        h, w, _ = raster_header(path)
        return int(h), int(w)
    ds = read_dicom_header(path)
    if "Rows" in ds and "Columns" in ds:
        return int(ds.Rows), int(ds.Columns)
    return load_image(path).pixels.shape  # type: ignore[return-value]


def lesion_problems(exams: Iterable[Exam]) -> list[str]:
    """One message per invalid lesion: conflicting parts, unreadable/empty/misfit masks, regions outside.

    Reads every lesion mask and the header of every image with lesions, so it costs about one
    mask read per lesion (``manifest check`` runs it with its file checks).
    """
    problems: list[str] = []
    for image, records in _each_image_lesions(exams):
        if isinstance(records, LesionError):
            problems.append(str(records))
            continue
        if not records:
            continue
        try:
            shape = _image_shape(image.path)
        except (BreastscreenError, OSError) as exc:
            problems.append(_one_line(f"{image.path}: image unreadable, its lesions cannot be checked ({exc})"))
            continue
        for rec in records:
            try:
                lesion_region(rec, shape)
            except LesionError as exc:
                problems.append(str(exc))
    return problems
