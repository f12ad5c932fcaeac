"""Core exam data model shared by every stage.

An :class:`Exam` holds images grouped by view. Mammography views are ``L-CC``, ``R-CC``,
``L-MLO`` and ``R-MLO``; ultrasound images are grouped by breast as ``L-US``, ``R-US`` (and
``U-US`` when the laterality is unknown). Every view maps to a list of :class:`ImageRef`, so
several images per view are allowed and a missing view is simply an empty list.

Labels are per breast side: ``L`` and ``R``, plus ``U`` for the ``U-US`` bag of an ultrasound
exam (a breast whose side is unknown); mammography exams have ``L``/``R`` labels only.

In memory, image and mask paths are absolute strings; the manifest writer stores them
relative to the manifest's folder (see :mod:`breastscreen.data.manifest`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

MG_VIEWS: tuple[str, ...] = ("L-CC", "R-CC", "L-MLO", "R-MLO")
US_VIEWS: tuple[str, ...] = ("L-US", "R-US", "U-US")
ALL_VIEWS: tuple[str, ...] = MG_VIEWS + US_VIEWS
SIDES: tuple[str, ...] = ("L", "R")
# Label sides add "U" (the U-US bag); SIDES stays L/R because a view's side is a real laterality.
LABEL_SIDES: tuple[str, ...] = SIDES + ("U",)
UNKNOWN_SIDE = "U"
DENSITIES: tuple[str, ...] = ("A", "B", "C", "D")
BIRADS_VALUES: tuple[str, ...] = ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
LESION_LABELS: tuple[str, ...] = ("benign", "malignant")


class Modality(str, enum.Enum):
    """Imaging modality of an exam (DICOM Modality codes)."""

    MG = "MG"
    US = "US"


def view_side(view: str) -> str | None:
    """Return ``"L"``/``"R"`` for a view name, or ``None`` for unknown laterality (``U-US``)."""
    if view not in ALL_VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(ALL_VIEWS)}")
    side = view.split("-")[0]
    return side if side in SIDES else None


def view_angle(view: str) -> str:
    """Return the projection part of a view name: ``CC``, ``MLO`` or ``US``."""
    if view not in ALL_VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(ALL_VIEWS)}")
    return view.split("-")[1]


@dataclass
class LesionMask:
    """A binary lesion mask file aligned pixel-for-pixel with its image.

    ``label`` is the biopsy outcome, ``"benign"`` or ``"malignant"``, or ``None`` when it is
    unknown. ``lesion_id`` names the lesion within its image; a mask and an :class:`ROI` of the
    same image with the same id are one lesion (see :mod:`breastscreen.data.lesions`).
    """

    path: str
    label: str | None  # "benign", "malignant" or None (outcome unknown)
    kind: str | None = None  # e.g. "mass", "calcification", "cyst"
    lesion_id: str | None = None

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in LESION_LABELS:
            raise ValueError(f"mask label must be one of {LESION_LABELS} or None, got {self.label!r}")
        _check_lesion_id(self.lesion_id)


def _check_lesion_id(lesion_id: str | None) -> None:
    if lesion_id is not None and (not isinstance(lesion_id, str) or not lesion_id):
        raise ValueError(f"lesion_id must be a non-empty string or None, got {lesion_id!r}")


def circle_box(cx: float, cy: float, r: float) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of a disc, clipped at 0 on the top/left.

    The disc holds the pixels whose centre ``(col, row)`` lies within ``r`` of ``(cx, cy)``
    (pixel ``(col, row)`` has its centre at those integer coordinates), so the box is
    ``(floor(cx - r), floor(cy - r), floor(cx + r) + 1, floor(cy + r) + 1)``; for an integer
    centre and radius that is exactly the disc's extent. Manifest boxes cannot be negative,
    hence the clip at 0; the right/bottom edges are left for the caller to clip to the image.
    """
    if not all(math.isfinite(v) for v in (cx, cy, r)) or r < 0:
        raise ValueError(f"circle must be a finite centre and a radius >= 0, got ({cx}, {cy}, {r})")
    return (max(0, math.floor(cx - r)), max(0, math.floor(cy - r)), math.floor(cx + r) + 1, math.floor(cy + r) + 1)


@dataclass
class ROI:
    """A lesion region as a box ``(x0, y0, x1, y1)`` in original-image pixels (x1, y1 exclusive).

    ``circle`` = ``(cx, cy, r)`` in the image's pixels (centre column, centre row, radius) when
    the region is a disc, as in mini-MIAS; the box must then be the disc's bounding box
    (:func:`circle_box`), possibly clipped at the image's right/bottom edge.
    :meth:`from_circle` builds such an ROI. ``label`` as in :class:`LesionMask` (None = unknown).
    """

    box: tuple[int, int, int, int]
    label: str | None
    kind: str | None = None
    lesion_id: str | None = None
    circle: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in LESION_LABELS:
            raise ValueError(f"ROI label must be one of {LESION_LABELS} or None, got {self.label!r}")
        _check_lesion_id(self.lesion_id)
        x0, y0, x1, y1 = self.box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"ROI box must have x1 > x0 and y1 > y0, got {self.box}")
        self.box = (int(x0), int(y0), int(x1), int(y1))
        if self.circle is not None:
            cx, cy, r = (float(v) for v in self.circle)
            self.circle = (cx, cy, r)
            fx0, fy0, fx1, fy1 = circle_box(cx, cy, r)
            bx0, by0, bx1, by1 = self.box
            # The right/bottom edges may be clipped to the image, whose size an ROI does not know.
            if (bx0, by0) != (fx0, fy0) or not (bx1 <= fx1 and by1 <= fy1):
                raise ValueError(f"ROI box {self.box} is not the bounding box {(fx0, fy0, fx1, fy1)} of its "
                                 f"circle {self.circle}")

    @classmethod
    def from_circle(cls, cx: float, cy: float, r: float, label: str | None, kind: str | None = None,
                    lesion_id: str | None = None, *, shape: tuple[int, int] | None = None) -> "ROI":
        """An ROI for the disc of centre ``(cx, cy)`` and radius ``r``, its box from :func:`circle_box`.

        With ``shape`` = the image's (height, width), the box is also clipped at the right and
        bottom edges; a disc entirely outside the image raises ``ValueError``.
        """
        x0, y0, x1, y1 = circle_box(float(cx), float(cy), float(r))
        if shape is not None:
            x1, y1 = min(x1, int(shape[1])), min(y1, int(shape[0]))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"circle ({cx}, {cy}, {r}) lies outside the image")
        return cls((x0, y0, x1, y1), label, kind, lesion_id, (float(cx), float(cy), float(r)))


@dataclass
class ImageRef:
    """One image file (or one frame of a multi-frame file) with its annotations.

    ``preprocessing`` is filled by ``breastscreen preprocess``: the crop box, the flip, the
    breast-mask file and the chosen window, so results can be mapped back to original pixels.
    ``meta`` holds anything else (SOP instance UID, device, per-image BI-RADS ...).
    """

    path: str
    frame: int | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row, column) in mm
    masks: list[LesionMask] = field(default_factory=list)
    rois: list[ROI] = field(default_factory=list)
    preprocessing: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BreastLabel:
    """Per-breast finding labels: 1 = present, 0 = absent, ``None`` = unknown."""

    benign: int | None = None
    malignant: int | None = None

    def __post_init__(self) -> None:
        for name in ("benign", "malignant"):
            value = getattr(self, name)
            if value not in (None, 0, 1):
                raise ValueError(f"{name} label must be 0, 1 or None, got {value!r}")

    @property
    def known(self) -> bool:
        """True when both labels are known."""
        return self.benign is not None and self.malignant is not None


@dataclass
class Exam:
    """One screening exam (mammography) or one patient visit's breast images (ultrasound)."""

    exam_id: str
    modality: Modality = Modality.MG
    views: dict[str, list[ImageRef]] = field(default_factory=dict)
    patient_id: str | None = None
    study_date: str | None = None  # ISO 8601 date, YYYY-MM-DD
    age: float | None = None
    density: str | None = None  # BI-RADS density A-D
    birads: str | None = None
    labels: dict[str, BreastLabel] = field(default_factory=dict)  # keys "L", "R"; "U" for ultrasound only
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modality = Modality(self.modality)
        if not self.exam_id:
            raise ValueError("exam_id must be a non-empty string")
        for view in self.views:
            if view not in ALL_VIEWS:
                raise ValueError(f"exam {self.exam_id}: unknown view {view!r}")
        if self.modality is Modality.MG:
            for view in MG_VIEWS:
                self.views.setdefault(view, [])
        if self.density is not None and self.density not in DENSITIES:
            raise ValueError(f"exam {self.exam_id}: density must be one of A-D, got {self.density!r}")
        if self.birads is not None and str(self.birads).upper() not in BIRADS_VALUES:
            raise ValueError(f"exam {self.exam_id}: BI-RADS must be one of {BIRADS_VALUES}, got {self.birads!r}")
        for side in self.labels:
            if side not in LABEL_SIDES:
                raise ValueError(f"exam {self.exam_id}: label side must be L, R or U, got {side!r}")
        # Mammography always knows the laterality; a U label there would be silently ignored.
        if UNKNOWN_SIDE in self.labels and self.modality is not Modality.US:
            raise ValueError(f"exam {self.exam_id}: label side U (unknown laterality) is for ultrasound exams only")

    def label(self, side: str) -> BreastLabel:
        """Labels of one breast, ``L``, ``R`` or ``U`` (the ``U-US`` bag); unknown labels when none were given."""
        return self.labels.get(side, BreastLabel())

    def present_views(self) -> list[str]:
        """Views with at least one image, in canonical order."""
        return [v for v in ALL_VIEWS if self.views.get(v)]

    def missing_views(self) -> list[str]:
        """Standard mammography views with no image (always empty for ultrasound)."""
        if self.modality is not Modality.MG:
            return []
        return [v for v in MG_VIEWS if not self.views.get(v)]

    def iter_images(self) -> Iterator[tuple[str, ImageRef]]:
        """Yield ``(view, image)`` for every image in canonical view order."""
        for view in ALL_VIEWS:
            for image in self.views.get(view, []):
                yield view, image

    @property
    def any_biopsy(self) -> bool:
        """True when any breast (including an unknown-side ultrasound bag) has a positive benign or malignant label."""
        return any(lab.benign == 1 or lab.malignant == 1 for lab in self.labels.values())
