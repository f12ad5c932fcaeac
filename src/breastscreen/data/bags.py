"""Per-breast bags of images with their labels (for multiple-instance ultrasound models).

Ultrasound exams put images under ``L-US``/``R-US`` when the breast side is known and under
``U-US`` when it is not (BUS-BRA, BUSI). Labels of ``L``/``R`` live in ``exam.labels``; the label
of the unknown-side bag lives in ``exam.meta["label_U"]`` (``{"benign": 0|1|None,
"malignant": 0|1|None}``), because the exam model keeps per-breast labels for L and R only.
"""

from __future__ import annotations

from breastscreen.data.types import BreastLabel, Exam, ImageRef, view_side


def unknown_side_label(exam: Exam) -> BreastLabel:
    """Label of the exam's ``U-US`` bag (unknown labels when none was given)."""
    raw = exam.meta.get("label_U") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"exam {exam.exam_id}: meta.label_U must be an object, got {raw!r}")
    return BreastLabel(raw.get("benign"), raw.get("malignant"))


def breast_bags(exam: Exam) -> list[tuple[str, list[ImageRef], BreastLabel]]:
    """``(view, images, label)`` for every non-empty ultrasound view of an exam (L-US, R-US, U-US)."""
    out = []
    for view in ("L-US", "R-US", "U-US"):
        images = exam.views.get(view) or []
        if not images:
            continue
        side = view_side(view)
        label = exam.label(side) if side else unknown_side_label(exam)
        out.append((view, list(images), label))
    return out
