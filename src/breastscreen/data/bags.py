"""Per-breast bags of images with their labels (for multiple-instance ultrasound models).

Ultrasound exams put images under ``L-US``/``R-US`` when the breast side is known and under
``U-US`` when it is not (BUS-BRA, BUSI). Each bag's label is ``exam.label(side)`` with side
``L``, ``R`` or ``U`` (the unknown-side bag; manifests store it as ``labels.U``).
"""

from __future__ import annotations

from breastscreen.data.types import UNKNOWN_SIDE, BreastLabel, Exam, ImageRef, view_side


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
