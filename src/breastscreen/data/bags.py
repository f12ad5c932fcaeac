"""Per-breast bags of images with their labels (for multiple-instance ultrasound models).

Ultrasound exams put images under ``L-US``/``R-US`` when the breast side is known and under
``U-US`` when it is not (BUS-BRA, BUSI). Each bag's label is ``exam.label(side)`` with side
``L``, ``R`` or ``U`` (the unknown-side bag; manifests store it as ``labels.U``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from breastscreen.data.types import UNKNOWN_SIDE, BreastLabel, Exam, ImageRef, Modality, view_side
from breastscreen.errors import BreastscreenError



def breast_bags(exam: Exam) -> list[tuple[str, list[ImageRef], BreastLabel]]:
    """``(view, images, label)`` for every non-empty ultrasound view of an exam (L-US, R-US, U-US)."""
    out = []
    for view in ("L-US", "R-US", "U-US"):
        images = exam.views.get(view) or []
        if not images:
            continue
        side = view_side(view)
        label = exam.label(side or UNKNOWN_SIDE)
        out.append((view, list(images), label))
    return out


# BI-RADS categories as an ordered suspicion scale; sub-categories of 4 sort between 4 and 5.
_BIRADS_ORDER = {"0": 0.0, "1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "4A": 4.1, "4B": 4.2, "4C": 4.3, "5": 5.0, "6": 6.0}


@dataclass
class Breast:
    """One breast of one exam: the bag of its ultrasound images and its labels."""

    breast_id: str
    exam_id: str
    view: str
    images: list[ImageRef]
    label: BreastLabel
    patient_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def side(self) -> str | None:
        """``"L"``, ``"R"`` or ``None`` (unknown laterality)."""
        return view_side(self.view)

    @property
    def targets(self) -> tuple[int, int]:
        """(benign, malignant) as 0/1; unknown labels raise."""
        if not self.label.known:
            raise BreastscreenError(f"breast {self.breast_id} has unknown labels {self.label}")
        return int(self.label.benign), int(self.label.malignant)


def birads_score(value: Any) -> float | None:
    """A BI-RADS category (``2``, ``"4A"`` ...) as a number on an ordered scale, or None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    key = str(value).strip().upper()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in _BIRADS_ORDER:
        raise BreastscreenError(f"BI-RADS must be one of {sorted(_BIRADS_ORDER)}, got {value!r}")
    return _BIRADS_ORDER[key]


def breasts_from_exams(exams: Iterable[Exam], require_labels: bool = False) -> list[Breast]:
    """One :class:`Breast` per ultrasound exam and view with images, in manifest order.

    Labels come from :func:`breast_bags` (``exam.labels`` for L/R and ``U``, the unknown-side bag).

    Each breast's ``meta`` gets ``birads`` (the most suspicious per-image BI-RADS in the
    bag, a float on the scale of :func:`birads_score`, or the exam's BI-RADS), plus any per-image
    ``fold`` and ``device`` values when all images agree.
    """
    out: list[Breast] = []
    for exam in exams:
        if exam.modality is not Modality.US:
            raise BreastscreenError(f"exam {exam.exam_id} is {exam.modality.value}, expected ultrasound (US)")
        for view, images, label in breast_bags(exam):
            if require_labels and not label.known:
                raise BreastscreenError(f"exam {exam.exam_id} view {view}: breast labels are unknown")
            meta: dict[str, Any] = {}
            scores = [birads_score(im.meta.get("birads")) for im in images]
            scores = [s for s in scores if s is not None]
            if scores:
                meta["birads"] = max(scores)
            elif exam.birads is not None:
                meta["birads"] = birads_score(exam.birads)
            for key in ("fold", "device"):
                values = {str(im.meta[key]) for im in images if key in im.meta}
                if len(values) == 1:
                    meta[key] = next(im.meta[key] for im in images if key in im.meta)
            out.append(
                Breast(
                    breast_id=f"{exam.exam_id}/{view}",
                    exam_id=exam.exam_id,
                    view=view,
                    images=list(images),
                    label=label,
                    patient_id=exam.patient_id,
                    meta=meta,
                )
            )
    return out
