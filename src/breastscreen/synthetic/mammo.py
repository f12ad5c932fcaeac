"""Synthetic four-view screening mammograms (the built-in default data of breastscreen).

Each exam has the four standard views ``L-CC``, ``R-CC``, ``L-MLO``, ``R-MLO`` drawn on a
300 x 200 mm detector (3000 x 2000 pixels of 0.1 mm at ``scale`` 1.0; ``scale`` F gives pixels
of 0.1/F mm). Display convention (matches the NYU sample exam and the usual hanging): the
chest wall of a LEFT breast is at the LEFT image edge with the nipple pointing right; a
RIGHT breast is the mirror image (chest wall at the right edge). In CC views the lateral side
of the breast is at the top of the image; in MLO views the pectoral muscle is the bright
triangle in the upper chest-wall corner.

Phantom model, per breast (all geometry in millimetres, so every scale shows the same breast):
- outline from a smooth row profile (CC: half-ellipse against the chest wall; MLO: axillary
  tail at the top edge, nipple, inframammary fold), a nipple bump and a bright skin line;
- compressed-thickness fall-off near the skin, partly equalised as in processed images;
- fibroglandular tissue: 1/f^3 (power-law) noise mixed with ducts radiating from the nipple,
  thresholded so the dense fraction matches the BI-RADS density (A-D);
- lesions placed at the same depth behind the nipple and in the matching quadrant in the CC
  and MLO view of the breast: masses whose margin goes from circumscribed/oval through
  irregular to spiculated, and calcification clusters going from a few round punctate specks
  to many fine pleomorphic specks in a linear/segmental spread. One latent "suspicion" per
  lesion drives its appearance; it is drawn from Beta(2, 5) for benign and Beta(5, 2) for
  malignant lesions, so appearances overlap and the tasks are learnable but not trivial;
- 12-bit values (0-4095, brighter = denser, MONOCHROME2), a dark noisy background, a
  burned-in view label ("L CC") in the upper corner away from the chest wall and, sometimes,
  a bright skin marker on the nipple.

Exam-level BI-RADS is what a reader would say from the appearance (noisy suspicion): 1 for no
finding (a few false recalls get 0), 2/3 for benign-looking, 0 for indeterminate and 4/5 for
suspicious findings; the labels are the truth (benign/malignant per breast).

Each lesion shown in a view gets a mask and its bounding-box ROI, both with the lesion's
outcome, kind (mass/calcification) and ``lesion_id`` ``<side><k>`` (``L1``, ``R2`` ...: the k-th
lesion of that breast), so the same lesion has the same id in the CC and the MLO view.

The generator is split by concern: ``_mammo_phantom`` draws the resolution-independent exam
(breast shape, findings), ``_mammo_lesions`` describes and renders masses and calcification
clusters, ``_mammo_render`` draws a view's tissue texture and pixels, and this module writes
the cohort (PNG or DICOM files, masks, manifest). Every public name is importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import MG_VIEWS, ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import BreastscreenError
from breastscreen.synthetic import _common as C
from breastscreen.synthetic._mammo_lesions import Lesion
from breastscreen.synthetic._mammo_phantom import (
    BIRADS_SEVERITY,
    DENSITY_FRACTION,
    DENSITY_PROBS,
    DETECTOR_MM,
    FULL_SHAPE,
    BreastPhantom,
    ExamPhantom,
    _lesion_centre,  # importable here for the tests that check lesion placement
    draw_exam,
)
from breastscreen.synthetic._mammo_render import DEFAULT_SCALE, RenderedView, render_view

__all__ = [
    "BIRADS_SEVERITY",
    "DEFAULT_SCALE",
    "DENSITY_FRACTION",
    "DENSITY_PROBS",
    "DETECTOR_MM",
    "FULL_SHAPE",
    "BreastPhantom",
    "ExamPhantom",
    "Lesion",
    "RenderedView",
    "draw_exam",
    "generate_mammo_cohort",
    "render_view",
    "write_mammo_dicom",
]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

_VIEW_CODES = {
    "CC": ("R-10242", "SRT", "cranio-caudal"),
    "MLO": ("R-10226", "SRT", "medio-lateral oblique"),
}
# Row direction \ column direction, for the display convention above (lateral up in CC).
_PATIENT_ORIENTATION = {"L-CC": "A\\R", "R-CC": "P\\L", "L-MLO": "A\\FR", "R-MLO": "P\\FL"}
_MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["breastscreen-synthetic", *[str(p) for p in parts]])


def write_mammo_dicom(path: Path, exam: ExamPhantom, rendered: RenderedView, seed: int) -> None:
    """Write one view as a Digital Mammography X-Ray (For Presentation) DICOM file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    side, angle = rendered.view.split("-")
    study_uid = _uid(seed, exam.exam_id, "study")
    series_uid = _uid(seed, exam.exam_id, "series", rendered.view)
    sop_uid = _uid(seed, exam.exam_id, "sop", rendered.view)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date = exam.study_date.replace("-", "")
    ds.SOPClassUID = _MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(seed, exam.exam_id, "frame", side)
    ds.Modality = "MG"
    ds.PatientID = f"P{exam.exam_id}"
    ds.PatientName = f"SYNTHETIC^{exam.exam_id}"
    ds.PatientAge = f"{exam.age:03d}Y"
    ds.PatientSex = "F"
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.StudyTime = "090000"
    ds.AccessionNumber = exam.exam_id[:16]
    ds.StudyID = str(exam.index + 1)
    ds.SeriesNumber = MG_VIEWS.index(rendered.view) + 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "breastscreen synthetic phantom"
    ds.StudyDescription = "Synthetic screening mammogram (not a patient)"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side
    ds.Laterality = side
    ds.ViewPosition = angle
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _VIEW_CODES[angle]
    ds.ViewCodeSequence = Sequence([code])
    ds.PatientOrientation = _PATIENT_ORIENTATION[rendered.view]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rendered.pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    sp = f"{rendered.spacing_mm:.10g}"
    ds.PixelSpacing = [sp, sp]
    ds.ImagerPixelSpacing = [sp, sp]
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = rendered.pixels.astype("<u2").tobytes()
    with C.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _exam_record(exam: ExamPhantom, views: dict[str, list[ImageRef]], seed: int, scale: float) -> Exam:
    labels = {}
    findings = []
    breast_birads = {}
    for side, b in exam.breasts.items():
        labs = {les.label for les in b.lesions}
        labels[side] = BreastLabel(benign=int("benign" in labs), malignant=int("malignant" in labs))
        findings.extend(les.summary(side) for les in b.lesions)
        sev = [les.birads for les in b.lesions] or ["1"]
        breast_birads[side] = max(sev, key=BIRADS_SEVERITY.index)
    return Exam(
        exam_id=exam.exam_id,
        modality=Modality.MG,
        views=views,
        patient_id=f"P{exam.exam_id}",
        study_date=exam.study_date,
        age=float(exam.age),
        density=exam.density,
        birads=exam.birads,
        labels=labels,
        meta={
            "synthetic": True,
            "generator": "breastscreen.synthetic.mammo",
            "seed": seed,
            "index": exam.index,
            "scale": scale,
            "breast_birads": breast_birads,
            "findings": findings,
        },
    )


def generate_mammo_cohort(
    out_dir: str | os.PathLike[str],
    n_exams: int,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
    fmt: str = "png",
    prevalence: float = 0.25,
    benign_prevalence: float = 0.3,
    id_prefix: str | None = None,
    overwrite: bool = False,
    progress: C.ProgressFn | None = None,
) -> list[Exam]:
    """Write a synthetic screening-mammography cohort and its ``manifest.jsonl``; return the exams.

    Args:
        out_dir: folder to write into (created; must be empty unless ``overwrite``).
        n_exams: number of four-view exams.
        seed: cohort seed; the same seed and arguments give identical files. Exam ``i`` does
            not depend on ``n_exams``.
        scale: resolution factor, pixels of 0.1/scale mm (1.0 = 3000 x 2000 full resolution).
        fmt: ``"png"`` (16-bit PNG holding 12-bit values, pHYs = pixel spacing) or ``"dicom"``.
        prevalence: fraction of exams with a malignant finding (in one breast, rarely both).
        benign_prevalence: fraction of exams with a benign finding (independent of the above).
        id_prefix: exam-id prefix (no underscore); default ``syn<seed>-`` so cohorts with
            different seeds never share exam ids.
        overwrite: allow a non-empty ``out_dir`` (files of a previous cohort there are replaced).
        progress: optional callback ``progress(done, total)`` after each exam.
    """
    n_exams = C.check_count("n_exams", n_exams)
    seed = C.check_seed(seed)
    scale = _check_scale(scale)
    C.check_format(fmt)
    prevalence = C.check_fraction("prevalence", prevalence)
    benign_prevalence = C.check_fraction("benign_prevalence", benign_prevalence)
    C.check_id_prefix(id_prefix)
    out = C.prepare_out_dir(out_dir, overwrite)
    exams: list[Exam] = []
    for i in range(n_exams):
        phantom = draw_exam(seed, i, prevalence, benign_prevalence, id_prefix)
        views: dict[str, list[ImageRef]] = {}
        for view in MG_VIEWS:
            r = render_view(phantom, view, scale)
            stem = f"{phantom.exam_id}_{view}"
            if fmt == "png":
                img_path = out / f"{stem}.png"
                C.write_png(img_path, r.pixels, r.spacing_mm)
            else:
                img_path = out / f"{stem}.dcm"
                write_mammo_dicom(img_path, phantom, r, seed)
            mask_refs, rois = [], []
            counters = {"benign": 0, "malignant": 0}
            side, angle = view.split("-")
            for m, les in r.masks:
                box = C.mask_box(m)
                if box is None:
                    continue
                k = counters[les.label]
                counters[les.label] += 1
                mpath = out / f"{stem}_mask_{les.label}_{k}.png"
                C.write_mask(mpath, m, r.spacing_mm)
                lesion_id = _lesion_id(phantom, side, les)
                mask_refs.append(LesionMask(str(mpath.resolve()), les.label, les.kind, lesion_id))
                rois.append(ROI(box, les.label, les.kind, lesion_id))
            views[view] = [
                ImageRef(
                    path=str(img_path.resolve()),
                    pixel_spacing=(r.spacing_mm, r.spacing_mm),
                    masks=mask_refs,
                    rois=rois,
                    meta={
                        "laterality": side,
                        "view_position": angle,
                        "chest_wall": "left" if side == "L" else "right",
                        "bits_stored": 12,
                    },
                )
            ]
        exams.append(_exam_record(phantom, views, seed, scale))
        if progress is not None:
            progress(i + 1, n_exams)
    write_manifest(exams, out / "manifest.jsonl")
    return exams


def _lesion_id(phantom: ExamPhantom, side: str, lesion: Lesion) -> str:
    """``<side><k>``: the k-th lesion (1-based) of that breast; the same lesion has the same id in CC and MLO."""
    k = next(i for i, les in enumerate(phantom.breasts[side].lesions, start=1) if les is lesion)
    return f"{side}{k}"


def _check_scale(scale: float) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise BreastscreenError(f"scale must be a number in [0.02, 1.0], got {scale!r}") from None
    if not 0.02 <= s <= 1.0:
        raise BreastscreenError(f"scale must be in [0.02, 1.0] (1.0 = 0.1 mm pixels), got {scale!r}")
    return s
