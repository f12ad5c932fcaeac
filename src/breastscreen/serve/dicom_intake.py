"""What the DICOM node accepts: SOP classes, transfer syntaxes and the checks of each received instance.

Every C-STORE gets one of these statuses (PS3.4 B.2.3; the ``0xC0xx`` codes are in the
"Cannot understand" range, told apart by the ErrorComment and this table):

========  ==============================================================================
0x0000    stored
0xA700    refused, out of resources: larger than ``--max-instance-mb`` or ``--max-pixels``
0xA701    refused, out of resources: the instance could not be written (disk full, ...)
0xA900    data set does not match its SOP class: SOP Class UID differs from the negotiated
          one, is not an image storage class this node takes, or there is no pixel data
0xC000    cannot understand: not a parsable data set, or no Study/SOP Instance UID
0xC001    non-breast modality (the rule of ``manifest build``: MG or US, or CR/DX with
          BodyPartExamined BREAST)
0xC002    pixel data truncated or undecodable
0xC003    not usable by ``manifest build``'s rules (laterality or view unknown, multi-frame)
========  ==============================================================================

SOP classes outside :data:`IMAGE_SOP_CLASSES` (CT, MR, SR, presentation states ...) are refused
earlier, during association negotiation (the presentation context is rejected), so a PACS never
sends them; a data set that names one anyway inside an accepted context gets 0xA900.

Laterality, view and modality are decided by the same functions as ``manifest build``
(:mod:`breastscreen.data._build_views`), and the pixel data is decoded once at receipt with the
same reader as ``predict``, so a stored instance is one that ``predict`` can read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from breastscreen.data.build import BREAST_MODALITIES
from breastscreen.data.dicom_checks import header_int, header_text
from breastscreen.errors import ImageReadError

STATUS_SUCCESS = 0x0000
STATUS_TOO_LARGE = 0xA700
STATUS_WRITE_FAILED = 0xA701
STATUS_SOP_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_NON_BREAST = 0xC001
STATUS_BAD_PIXELS = 0xC002
STATUS_NOT_IDENTIFIABLE = 0xC003

# Image storage SOP classes a screening exam is made of (single-frame: the model reads frames).
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
}
# Transfer syntaxes pydicom + pylibjpeg decode (the `predict` reader); the first is preferred.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless, first-order prediction (process 14 SV1)
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless (process 14)
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline (process 1)
    "1.2.840.10008.1.2.4.51",   # JPEG Extended (process 2 & 4)
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",   # JPEG 2000
    "1.2.840.10008.1.2.4.80",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",   # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5",      # RLE Lossless
)


# Words of manifest build's refusals that are about the pixel data rather than identification.
_PIXEL_WORDS = ("truncat", "pixel data", "fragment", "damaged", "stream", "photometric", "bitsallocated",
                "samplesperpixel", "bitsstored", "transfer syntax", "transfersyntax")


@dataclass
class Intake:
    """The outcome of checking one received instance: a status, and what was learnt when it passed."""

    status: int
    comment: str = ""
    study_uid: str = ""
    sop_uid: str = ""
    view: str | None = None
    presentation_intent: str = ""

    @property
    def ok(self) -> bool:
        """True when the instance may be stored."""
        return self.status == STATUS_SUCCESS


def _refuse(status: int, comment: str) -> Intake:
    # ErrorComment is LO: at most 64 characters, and it must never quote header values (PHI).
    return Intake(status, comment[:64])


def is_breast_modality(ds: Any) -> bool:
    """True for the modalities ``manifest build`` reads (MG, US, or CR/DX of the breast)."""
    modality = header_text(ds, "Modality").upper()
    if modality in ("CR", "DX") and "BREAST" in header_text(ds, "BodyPartExamined").upper():
        return True
    return modality in BREAST_MODALITIES


def check_instance(path: str | os.PathLike[str], context_sop_class: str, *, max_pixels: int) -> Intake:
    """Check the received instance stored (as a DICOM file) at ``path``; see the module docstring for statuses."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from breastscreen.data._build_views import _dicom_image
    from breastscreen.data.readers import load_image

    where = str(path)
    try:
        ds = pydicom.dcmread(where, stop_before_pixels=True)
        sop_class = header_text(ds, "SOPClassUID")
        study_uid = header_text(ds, "StudyInstanceUID")
        sop_uid = header_text(ds, "SOPInstanceUID")
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as exc:
        return _refuse(STATUS_CANNOT_UNDERSTAND, f"not a readable data set ({type(exc).__name__})")
    if sop_class != context_sop_class:
        return _refuse(STATUS_SOP_MISMATCH, "SOP Class UID differs from the presentation context")
    if sop_class not in IMAGE_SOP_CLASSES:
        return _refuse(STATUS_SOP_MISMATCH, "not an image storage SOP class this node takes")
    if not study_uid or not sop_uid:
        return _refuse(STATUS_CANNOT_UNDERSTAND, "no StudyInstanceUID or SOPInstanceUID")
    if not is_breast_modality(ds):
        return _refuse(STATUS_NON_BREAST, "non-breast modality (MG, US, or CR/DX of BREAST only)")
    if "Rows" not in ds or "Columns" not in ds:
        return _refuse(STATUS_SOP_MISMATCH, "image SOP class without an image (no Rows/Columns)")
    try:
        pixels = header_int(ds, "Rows", where, lo=1, hi=65535) * header_int(ds, "Columns", where, lo=1, hi=65535)
        frames = header_int(ds, "NumberOfFrames", where, default=1, lo=1)
    except ImageReadError:
        return _refuse(STATUS_BAD_PIXELS, "invalid Rows/Columns/NumberOfFrames")
    if pixels * frames > max_pixels:
        return _refuse(STATUS_TOO_LARGE, f"{pixels * frames} pixels, above the limit of {max_pixels}")
    try:
        # Header rules first: they name truncated pixel data without decoding it.
        found = _dicom_image(where, True)
    except ImageReadError as exc:
        text = str(exc).replace(where, "").lower()
        if any(word in text for word in _PIXEL_WORDS):
            return _refuse(STATUS_BAD_PIXELS, "pixel data truncated or malformed")
        return _refuse(STATUS_NOT_IDENTIFIABLE, "not usable by manifest build (view, laterality or frames)")
    try:
        load_image(where, max_pixels=max_pixels)
    except (ImageReadError, ValueError, OSError, RuntimeError, NotImplementedError) as exc:
        return _refuse(STATUS_BAD_PIXELS, f"pixel data cannot be decoded ({type(exc).__name__})")
    intent = str(found.image.meta.get("presentation_intent", "")) if found.image.meta else ""
    return Intake(STATUS_SUCCESS, "", study_uid, sop_uid, found.view, intent)

