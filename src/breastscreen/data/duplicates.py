"""Exact duplicate images inside one dataset: found by pixel hash, reported, never dropped silently.

Public datasets carry copies of the same image (BUSI has several, some filed under two
classes). A copy inflates a test set, leaks between training and test folds and, with a
different label, contradicts itself. :func:`duplicate_images` finds them with
:func:`breastscreen.preprocess.ultrasound.pixel_hash` (the decoded pixels, so a PNG and a JPEG
of the same pixels would only match when the pixels are identical); :func:`drop_duplicate_exams`
applies the adapters' rule for one-image exams: a later copy with the same label is left out
and reported with both ids and labels; copies with different labels are an error, every copy
is left out and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from breastscreen.data._adapter_io import Problems, problem
from breastscreen.data.types import Exam, ImageRef


@dataclass(frozen=True)
class DuplicateImage:
    """Image ``path`` of exam ``exam_id`` has the same pixels as ``first_path`` of ``first_exam``."""

    exam_id: str
    path: str
    label: str
    first_exam: str
    first_path: str
    first_label: str

    @property
    def conflict(self) -> bool:
        """True when the two copies carry different labels."""
        return self.label != self.first_label


def label_name(exam: Exam) -> str:
    """A short label of an exam for reports: ``benign``, ``malignant``, ``benign+malignant``,
    ``normal`` (both 0) or ``unknown``, over its breast labels."""
    names = []
    for side in sorted(exam.labels):
        lab = exam.labels[side]
        parts = [n for n, v in (("benign", lab.benign), ("malignant", lab.malignant)) if v]
        unknown = lab.benign is None or lab.malignant is None
        names.append("+".join(parts) or ("unknown" if unknown else "normal"))
    return "/".join(names) or "unknown"


def duplicate_images(exams: Iterable[Exam]) -> list[DuplicateImage]:
    """Every image whose pixels equal those of an earlier image (exams in order); unreadable images are skipped."""
    from breastscreen.data.readers import load_image
    from breastscreen.errors import BreastscreenError
    from breastscreen.preprocess.ultrasound import pixel_hash

    first: dict[str, tuple[Exam, ImageRef]] = {}
    out: list[DuplicateImage] = []
    for exam in exams:
        for _, image in exam.iter_images():
            try:
                digest = pixel_hash(load_image(image.path, frame=image.frame).pixels)
            except (BreastscreenError, OSError, ValueError):
                continue  # unreadable: reported where the image is used, not a duplicate question
            if digest in first:
                e0, im0 = first[digest]
                out.append(DuplicateImage(exam.exam_id, image.path, label_name(exam), e0.exam_id, im0.path,
                                          label_name(e0)))
            else:
                first[digest] = (exam, image)
    return out


def drop_duplicate_exams(exams: list[Exam], problems: Problems | None) -> list[Exam]:
    """Leave out exams whose (only) image duplicates an earlier one, reporting each to ``problems``.

    Same label: the later copy is left out. Different labels: an error; every exam of that set
    of copies is left out. Raises :class:`~breastscreen.errors.ManifestError` for the first
    duplicate when ``problems`` is None (the adapters' rule).
    """
    dups = duplicate_images(exams)
    if not dups:
        return exams
    drop: set[str] = set()
    conflicted = {d.first_exam for d in dups if d.conflict}
    for d in dups:
        if d.conflict or d.first_exam in conflicted:
            drop.update((d.exam_id, d.first_exam))
            what = "conflicting labels for the same pixels" if d.conflict else "same pixels, and other copies disagree"
            problem(problems, d.path,
                    f"error: {what}: {d.exam_id} ({d.label}) and {d.first_exam} ({d.first_label}, {d.first_path}); "
                    "every copy left out")
        else:
            drop.add(d.exam_id)
            problem(problems, d.path,
                    f"duplicate image: same pixels as {d.first_exam} ({d.first_label}, {d.first_path}); "
                    f"{d.exam_id} ({d.label}) left out, {d.first_exam} kept")
    return [e for e in exams if e.exam_id not in drop]
