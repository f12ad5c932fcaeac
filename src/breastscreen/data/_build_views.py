"""What one file of a scanned folder is: modality, breast side, view and exam key.

Used by :func:`breastscreen.data.build.build_manifest`. A DICOM file is classified from its
header alone (laterality and view from the standard tags, then from series/protocol text); a
PNG/TIFF/JPEG from its file name; a file listed in the mapping CSV from its row. Unusable files
raise :class:`ImageReadError` with the reason that goes into the problem list.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from breastscreen.data.readers import (
    DEFAULT_MAX_PIXELS,
    RASTER_SUFFIXES,
    dicom_pixel_spacing,
    is_dicom_file,
    raster_header,
    read_dicom_header,
)
from breastscreen.data.types import ImageRef, Modality
from breastscreen.errors import ImageReadError

# ViewPosition (0018,5101) values → projection. True laterals (ML, LM) and the other oblique
# (LMO) are grouped with MLO, exaggerated/rolled CC variants with CC; the original code is kept
# in the image meta as ``view_position``.
VIEW_POSITION_MAP: dict[str, str] = {
    "CC": "CC", "XCCL": "CC", "XCCM": "CC", "FB": "CC", "CCID": "CC", "RL": "CC", "RM": "CC",
    "MLO": "MLO", "LMO": "MLO", "ML": "MLO", "LM": "MLO", "SIO": "MLO", "ISO": "MLO", "MLOID": "MLO",
}
# ViewCodeSequence code values (SNOMED-RT "R-" codes and their SNOMED CT equivalents).
VIEW_CODE_MAP: dict[str, str] = {
    "R-10242": "CC", "399162004": "CC",  # cranio-caudal
    "R-1024A": "CC", "399067008": "CC",  # cranio-caudal exaggerated laterally
    "R-1024B": "CC", "399192003": "CC",  # cranio-caudal exaggerated medially
    "R-10226": "MLO", "399368009": "MLO",  # medio-lateral oblique
    "R-10224": "MLO", "399260004": "MLO",  # medio-lateral (true lateral)
    "R-10228": "MLO", "399352003": "MLO",  # latero-medial (true lateral)
    "R-102D0": "MLO", "399099002": "MLO",  # latero-medial oblique
}
BREAST_MODALITIES = {"MG", "US"}

_IMAGE_RE = re.compile(
    r"^(?P<exam>.+?)[_-](?P<side>[LRU])[-_](?P<view>CC|MLO|US)(?:[_-](?P<idx>\d+))?$", re.IGNORECASE
)
_MASK_RE = re.compile(r"^(?P<image>.+)_mask_(?P<label>benign|malignant)(?:_(?P<k>\d+))?$", re.IGNORECASE)
_TEXT_VIEW_RE = re.compile(
    r"(?<![A-Z])(?P<side>L|R|LEFT|RIGHT)[\s_-]*(?P<view>CC|MLO|XCCL|ML|LM)(?![A-Z])", re.IGNORECASE
)


@dataclass
class _Found:
    """One usable image before grouping into exams."""

    path: str
    group: str  # grouping key (StudyInstanceUID or file-name exam id)
    view: str
    modality: Modality
    image: ImageRef
    exam_fields: dict[str, Any]


# --------------------------------------------------------------------------- small parsers


def _iso_date(value: Any) -> str | None:
    s = str(value or "").strip()
    if re.fullmatch(r"\d{8}", s):
        return f"{s[:4]}-{s[4:6]}-{s[6:8]}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        return s
    return None


def _age_years(value: Any) -> float | None:
    """DICOM AS (``054Y``, ``006M``, ``010W``, ``003D``) → years."""
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(value or "").strip().upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    years = {"Y": n, "M": n / 12, "W": n / 52.1775, "D": n / 365.25}[unit]
    return round(float(years), 3) if 0 <= years <= 130 else None


def _side_from_text(*texts: Any) -> tuple[str | None, str | None]:
    for text in texts:
        s = str(text or "")
        m = _TEXT_VIEW_RE.search(s)
        if m:
            side = m.group("side").upper()[0]
            view = VIEW_POSITION_MAP.get(m.group("view").upper())
            return side, view
        compact = re.search(r"(?<![A-Z])(L|R)(CC|MLO)(?![A-Z])", s.upper())
        if compact:
            return compact.group(1), compact.group(2)
    return None, None


def _view_from_code_sequence(ds: Any) -> tuple[str | None, str | None]:
    seq = ds.get("ViewCodeSequence")
    if not seq:
        return None, None
    item = seq[0]
    value = str(item.get("CodeValue", "") or item.get("ConceptCodeValue", "")).strip()
    if value in VIEW_CODE_MAP:
        return VIEW_CODE_MAP[value], value
    meaning = str(item.get("CodeMeaning", "")).lower().replace("-", "").replace(" ", "")
    if "craniocaudal" in meaning:
        return "CC", meaning
    if "mediolateraloblique" in meaning or "lateromedialoblique" in meaning or "mediolateral" in meaning:
        return "MLO", meaning
    if "lateromedial" in meaning:
        return "MLO", meaning
    return None, value or meaning


# --------------------------------------------------------------------------- DICOM


def _check_size(path: str, rows: int, cols: int) -> None:
    if rows * cols > DEFAULT_MAX_PIXELS:
        raise ImageReadError(f"{path}: image is {rows}x{cols} pixels, above the limit of {DEFAULT_MAX_PIXELS:,}")
    if rows <= 0 or cols <= 0:
        raise ImageReadError(f"{path}: image has an empty size {rows}x{cols}")


def _check_not_truncated(path: str, ds: Any, n_frames: int) -> None:
    """Refuse an uncompressed DICOM whose file is smaller than its pixel data alone (a cut-off copy).

    Only the header is read while scanning, so this size test is what catches truncated files
    before preprocessing; compressed pixel data has no fixed size and is not checked.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_compressed", True):
        return
    bits = int(ds.get("BitsAllocated", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = (int(ds.Rows) * int(ds.Columns) * samples * n_frames * bits + 7) // 8
    size = os.path.getsize(path)
    if size < expected:
        raise ImageReadError(
            f"{path}: truncated DICOM (file has {size:,} bytes, its {int(ds.Rows)}x{int(ds.Columns)} "
            f"{bits}-bit pixel data alone needs {expected:,})"
        )


def _dicom_image(path: str, include_for_processing: bool) -> _Found:
    """Classify one DICOM file from its header; raise ImageReadError with the reason when unusable."""
    ds = read_dicom_header(path)
    modality = str(ds.get("Modality", "") or "").upper().strip()
    body = str(ds.get("BodyPartExamined", "") or "").upper()
    if modality in ("CR", "DX") and "BREAST" in body:
        modality = "MG"  # computed/digital radiography of the breast is a mammogram
    if not modality:
        raise ImageReadError(f"{path}: DICOM without Modality")
    if modality not in BREAST_MODALITIES:
        raise ImageReadError(f"{path}: non-breast modality {modality}")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: non-image DICOM (no pixel data; SOP class {ds.get('SOPClassUID', '?')})")
    _check_size(path, int(ds.Rows), int(ds.Columns))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_not_truncated(path, ds, n_frames)
    if n_frames > 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({n_frames} frames, e.g. tomosynthesis or cine); "
            "list the frame you want in a --mapping CSV (column frame)"
        )
    intent = str(ds.get("PresentationIntentType", "") or "").upper()
    if intent == "FOR PROCESSING" and not include_for_processing:
        raise ImageReadError(
            f"{path}: FOR PROCESSING (raw detector) image skipped; use --include-for-processing to keep it"
        )

    side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper().strip() or None
    text_side, text_view = _side_from_text(
        ds.get("SeriesDescription"), ds.get("ProtocolName"), ds.get("AcquisitionDeviceProcessingDescription"),
        ds.get("ImageComments"),
    )
    side_source = "ImageLaterality" if ds.get("ImageLaterality") else ("Laterality" if ds.get("Laterality") else None)
    if side not in ("L", "R"):
        if text_side:
            side, side_source = text_side, "series/protocol description"
        else:
            side = None

    meta: dict[str, Any] = {
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) or None,
    }
    if modality == "MG":
        vp = str(ds.get("ViewPosition", "") or "").upper().strip()
        angle = VIEW_POSITION_MAP.get(vp)
        if angle:
            meta["view_position"] = vp
        else:
            angle, code = _view_from_code_sequence(ds)
            if angle:
                meta["view_code"] = code
            elif text_view:
                angle = text_view
                meta["view_from"] = "series/protocol description"
        if side is None:
            raise ImageReadError(f"{path}: unknown laterality (no ImageLaterality/Laterality or L/R in descriptions)")
        if angle is None:
            shown = vp or "none"
            raise ImageReadError(
                f"{path}: unknown view (ViewPosition {shown}; no CC/MLO code in ViewCodeSequence or descriptions)"
            )
        view = f"{side}-{angle}"
        mod = Modality.MG
    else:
        view = f"{side}-US" if side in ("L", "R") else "U-US"
        mod = Modality.US
    if side_source and side_source != "ImageLaterality":
        meta["laterality_from"] = side_source
    if intent:
        meta["presentation_intent"] = intent
    spacing, tag = dicom_pixel_spacing(ds)
    if tag:
        meta["spacing_tag"] = tag
    meta = {k: v for k, v in meta.items() if v is not None}

    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    accession = str(ds.get("AccessionNumber", "") or "").strip()
    patient = str(ds.get("PatientID", "") or "").strip() or None
    date = _iso_date(ds.get("StudyDate"))
    if not study_uid:
        if accession:
            study_uid = f"accession:{accession}"
        elif patient and date:
            study_uid = f"patient-date:{patient}:{date}"
        else:
            raise ImageReadError(f"{path}: no StudyInstanceUID, AccessionNumber or PatientID+StudyDate to group by")
    fields = {
        "patient_id": patient,
        "study_date": date,
        "age": _age_years(ds.get("PatientAge")),
        "accession": accession or None,
        "study_instance_uid": study_uid,
    }
    return _Found(path, study_uid, view, mod, ImageRef(path=path, pixel_spacing=spacing, meta=meta), fields)


# --------------------------------------------------------------------------- mapping CSV rows and file names


def _mapped_image(path: str, entry: dict[str, Any], suffix: str) -> _Found:
    frame = entry.get("frame")
    spacing = entry.get("pixel_spacing")
    if suffix in RASTER_SUFFIXES:
        rows, cols, png_spacing = raster_header(path)  # header-only check that it is an image
        _check_size(path, rows, cols)
        spacing = spacing or png_spacing
    elif is_dicom_file(path):
        ds = read_dicom_header(path)
        if "Rows" not in ds:
            raise ImageReadError(f"{path}: non-image DICOM (no pixel data)")
        if spacing is None:
            spacing, _ = dicom_pixel_spacing(ds)
    else:
        raise ImageReadError(f"{path}: not an image file ({suffix or 'no suffix'})")
    view = entry["view"]
    modality = Modality.US if view.endswith("-US") else Modality.MG
    fields = {k: entry.get(k) for k in ("patient_id", "study_date", "age")}
    image = ImageRef(path=path, frame=frame, pixel_spacing=spacing, meta={"from": "mapping"})
    return _Found(path, f"name:{entry['exam_id']}", view, modality, image, fields)


def _raster_image(path: str, stem: str) -> _Found:
    m = _IMAGE_RE.match(stem)
    if not m:
        raise ImageReadError(
            f"{path}: cannot tell exam and view from the file name (expected <exam>_L-CC.png, <exam>_R_MLO.png, "
            "<exam>_L-US.png ... or a --mapping CSV row)"
        )
    side, angle = m.group("side").upper(), m.group("view").upper()
    if angle != "US" and side == "U":
        raise ImageReadError(f"{path}: unknown laterality 'U' for a mammography view")
    rows, cols, spacing = raster_header(path)  # header-only: corrupt or truncated headers are reported here
    _check_size(path, rows, cols)
    view = f"{side}-{angle}"
    modality = Modality.US if angle == "US" else Modality.MG
    image = ImageRef(path=path, pixel_spacing=spacing)
    return _Found(path, f"name:{m.group('exam')}", view, modality, image, {})
