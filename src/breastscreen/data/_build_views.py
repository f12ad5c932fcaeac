"""What one file of a scanned folder is: modality, breast side, view and exam key.

Used by :func:`breastscreen.data.build.build_manifest`. A DICOM file is classified from its
header alone; a PNG/TIFF/JPEG from its file name; a file listed in the mapping CSV from its row.
Unusable files raise :class:`ImageReadError` with the reason that goes into the problem list.

DICOM view and laterality come from the first of these sources that gives one (each decided
separately; the deciding source is recorded in the image meta as ``view_from`` and
``laterality_from``):

1. ``ViewCodeSequence`` (view), 2. ``ViewPosition`` (view), 3. ``ImageLaterality`` then
``Laterality`` (side), 4. ``PatientOrientation`` when it holds a view name such as ``CC`` or
``L MLO`` (CBIS-DDSM does this), 5. ``SeriesDescription``, ``ImageComments``,
``AcquisitionDeviceProcessingDescription``, 6. ``ProtocolName``, 7. tokens in ``PatientID``
(``..._LEFT_CC``), 8. tokens in the file name (``1-LCC.dcm``, ``R-MLO``).

Tokens: ``LEFT``/``RIGHT`` anywhere as a word, ``L``/``R`` only next to a view word, view words
``CC``, ``MLO``, ``XCCL``, ``XCCM``, ``LMO`` (``ML``/``LM`` only next to a side), and compact
forms ``LCC``, ``RMLO`` ... A text naming two different sides or views decides nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breastscreen.data.dicom_checks import header_text
from breastscreen.data.readers import (
    DEFAULT_MAX_PIXELS,
    RASTER_SUFFIXES,
    dicom_pixel_spacing,
    is_dicom_file,
    raster_header,
    read_dicom_header,
    rejected_spacing,
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
_SIDE_WORDS = {"LEFT": "L", "RIGHT": "R", "LT": "L", "RT": "R"}
_SHORT_SIDES = {"L": "L", "R": "R"}
_VIEW_WORDS = {"CC": "CC", "MLO": "MLO", "XCCL": "CC", "XCCM": "CC", "LMO": "MLO"}
_ADJACENT_VIEW_WORDS = {"ML": "MLO", "LM": "MLO"}
_COMPACT_RE = re.compile(r"^(?P<side>L|R)(?P<view>CC|MLO|XCCL|XCCM|ML|LM|LMO)$")
_WORD_SPLIT = re.compile(r"[^A-Z0-9]+")


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
    """``YYYYMMDD`` or ``YYYY-MM-DD`` as ISO text when it is a real calendar date, else None."""
    import datetime

    s = str(value or "").strip()
    m = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", s)
    if not m:
        return None
    try:
        return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3))).isoformat()
    except ValueError:  # month 13, 30 February ...
        return None


def _age_years(value: Any) -> float | None:
    """DICOM AS (``054Y``, ``006M``, ``010W``, ``003D``) → years."""
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(value or "").strip().upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    years = {"Y": n, "M": n / 12, "W": n / 52.1775, "D": n / 365.25}[unit]
    return round(float(years), 3) if 0 <= years <= 130 else None


def side_view_tokens(text: Any) -> tuple[str | None, str | None]:
    """(side ``L``/``R`` or None, view ``CC``/``MLO`` or None) named by the words of ``text``.

    See the module doc for the tokens; a text naming two different sides (or views) gives None
    for that part.
    """
    words = [w for w in _WORD_SPLIT.split(str(text or "").upper()) if w]
    sides: set[str] = set()
    views: set[str] = set()
    for i, w in enumerate(words):
        near = {words[j] for j in (i - 1, i + 1) if 0 <= j < len(words)}
        compact = _COMPACT_RE.match(w)
        if compact:
            sides.add(compact.group("side"))
            views.add(VIEW_POSITION_MAP.get(compact.group("view"), "MLO"))
        elif w in _SIDE_WORDS:
            sides.add(_SIDE_WORDS[w])
        elif w in _SHORT_SIDES and near & (set(_VIEW_WORDS) | set(_ADJACENT_VIEW_WORDS)):
            sides.add(_SHORT_SIDES[w])
        elif w in _VIEW_WORDS:
            views.add(_VIEW_WORDS[w])
        elif w in _ADJACENT_VIEW_WORDS and near & (set(_SIDE_WORDS) | set(_SHORT_SIDES)):
            views.add(_ADJACENT_VIEW_WORDS[w])
    return (sides.pop() if len(sides) == 1 else None), (views.pop() if len(views) == 1 else None)


def strip_view_tokens(text: str) -> str:
    """``text`` without its side/view words (``Mass-Test_P_00173_LEFT_CC`` -> ``Mass-Test_P_00173``)."""
    tokens = {*(_SIDE_WORDS), *(_VIEW_WORDS), *(_ADJACENT_VIEW_WORDS), *_SHORT_SIDES}
    parts = re.split(r"([^A-Za-z0-9]+)", str(text))
    kept = [p for p in parts if not (p.upper() in tokens or _COMPACT_RE.match(p.upper()))]
    out = "".join(kept)
    out = re.sub(r"([^A-Za-z0-9])[^A-Za-z0-9]+", r"\1", out)
    return out.strip("_-. ") or str(text)


def _view_from_code_sequence(ds: Any) -> tuple[str | None, str | None]:
    try:
        seq = ds.get("ViewCodeSequence")
        item = seq[0] if seq else None
        if item is None:
            return None, None
        value = str(item.get("CodeValue", "") or item.get("ConceptCodeValue", "")).strip()
        meaning = str(item.get("CodeMeaning", "")).lower().replace("-", "").replace(" ", "")
    except Exception:  # noqa: BLE001 - a malformed sequence gives no view; later sources may
        return None, None
    if value in VIEW_CODE_MAP:
        return VIEW_CODE_MAP[value], value
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


def _check_not_truncated(path: str, ds: Any, module: Any) -> None:
    """Refuse a native-syntax DICOM whose file is smaller than its pixel data alone (a cut-off copy).

    Only the header is read while scanning, so this size test is what catches truncated files
    before preprocessing; compressed and deflated pixel data have no fixed size and are checked
    when they are decoded.
    """
    from breastscreen.data.dicom_checks import DEFLATED_SYNTAX, NATIVE_SYNTAXES, native_bytes_needed, transfer_syntax

    syntax = transfer_syntax(ds, path)
    if syntax not in NATIVE_SYNTAXES or syntax == DEFLATED_SYNTAX:
        return
    expected = native_bytes_needed(module)
    size = os.path.getsize(path)
    if size < expected:
        raise ImageReadError(
            f"{path}: truncated DICOM (file has {size:,} bytes, its {module.rows}x{module.columns} "
            f"{module.bits_allocated}-bit pixel data alone needs {expected:,})"
        )


def _laterality(ds: Any, path: str) -> tuple[str | None, str | None]:
    """(side, source) from the header and file name in the documented order (module doc)."""
    for tag in ("ImageLaterality", "Laterality"):
        value = header_text(ds, tag).upper()
        if value in ("L", "R"):
            return value, tag
    return _from_text(ds, path, 0)


def _from_text(ds: Any, path: str, part: int) -> tuple[str | None, str | None]:
    """Side (``part`` 0) or view (1) from PatientOrientation, descriptions, ProtocolName, PatientID, file name."""
    for tag in ("PatientOrientation", "SeriesDescription", "ImageComments", "AcquisitionDeviceProcessingDescription",
                "ProtocolName", "PatientID"):
        found = side_view_tokens(header_text(ds, tag))[part]
        if found:
            return found, tag
    found = side_view_tokens(Path(path).stem)[part]
    return (found, "file name") if found else (None, None)


def _view(ds: Any, path: str, meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """(CC/MLO, source) in the documented order; the raw code or ViewPosition goes into ``meta``."""
    angle, code = _view_from_code_sequence(ds)
    if angle:
        meta["view_code"] = code
        return angle, "ViewCodeSequence"
    vp = header_text(ds, "ViewPosition").upper()
    if vp in VIEW_POSITION_MAP:
        meta["view_position"] = vp
        return VIEW_POSITION_MAP[vp], "ViewPosition"
    return _from_text(ds, path, 1)


def _dicom_image(path: str, include_for_processing: bool) -> _Found:
    """Classify one DICOM file from its header; raise ImageReadError with the reason when unusable."""
    from breastscreen.data.dicom_checks import pixel_module

    ds = read_dicom_header(path)
    modality = header_text(ds, "Modality").upper()
    body = header_text(ds, "BodyPartExamined").upper()
    if modality in ("CR", "DX") and "BREAST" in body:
        modality = "MG"  # computed/digital radiography of the breast is a mammogram
    if not modality:
        raise ImageReadError(f"{path}: DICOM without Modality")
    if modality not in BREAST_MODALITIES:
        raise ImageReadError(f"{path}: non-breast modality {modality[:20]}")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: non-image DICOM (no pixel data; SOP class {header_text(ds, 'SOPClassUID') or '?'})")
    module = pixel_module(ds, path, DEFAULT_MAX_PIXELS)
    _check_not_truncated(path, ds, module)
    if module.frames > 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({module.frames} frames, e.g. tomosynthesis or cine); "
            "list the frame you want in a --mapping CSV (column frame)"
        )
    intent = header_text(ds, "PresentationIntentType").upper()
    if intent == "FOR PROCESSING" and not include_for_processing:
        raise ImageReadError(
            f"{path}: FOR PROCESSING (raw detector) image skipped; use --include-for-processing to keep it"
        )

    meta: dict[str, Any] = {
        "sop_instance_uid": header_text(ds, "SOPInstanceUID") or None,
        "series_instance_uid": header_text(ds, "SeriesInstanceUID") or None,
    }
    side, side_source = _laterality(ds, path)
    if modality == "MG":
        angle, view_source = _view(ds, path, meta)
        if side is None:
            raise ImageReadError(
                f"{path}: unknown laterality (no ImageLaterality/Laterality, and no L/R in PatientOrientation, "
                "descriptions, ProtocolName, PatientID or the file name)"
            )
        if angle is None:
            shown = header_text(ds, "ViewPosition")[:20] or "none"
            raise ImageReadError(
                f"{path}: unknown view (ViewPosition {shown}; no CC/MLO in ViewCodeSequence, PatientOrientation, "
                "descriptions, ProtocolName, PatientID or the file name)"
            )
        view = f"{side}-{angle}"
        meta["view_from"] = view_source
        mod = Modality.MG
    else:
        view = f"{side}-US" if side in ("L", "R") else "U-US"
        mod = Modality.US
    if side_source:
        meta["laterality_from"] = side_source
    if intent:
        meta["presentation_intent"] = intent
    spacing, tag = dicom_pixel_spacing(ds)
    if tag:
        meta["spacing_tag"] = tag
    elif rejected_spacing(ds):
        meta["spacing_rejected"] = rejected_spacing(ds)
    meta = {k: v for k, v in meta.items() if v is not None}

    study_uid = header_text(ds, "StudyInstanceUID")
    accession = header_text(ds, "AccessionNumber")
    patient = header_text(ds, "PatientID") or None
    raw_date = header_text(ds, "StudyDate")
    date = _iso_date(raw_date)
    if raw_date and date is None:
        meta["study_date_invalid"] = raw_date[:20]
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
        "age": _age_years(header_text(ds, "PatientAge")),
        "accession": accession or None,
        "study_instance_uid": study_uid,
        # Grouping key when every image of an archive is its own study (CBIS-DDSM): the patient
        # with the view words removed from PatientID, and the study date.
        "patient_key": (strip_view_tokens(patient) if patient else None, date),
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
    meta: dict[str, Any] = {}
    if m:
        exam, side, angle = m.group("exam"), m.group("side").upper(), m.group("view").upper()
    else:
        # Archive names such as Mass-Test_P_00099_LEFT_CC.png or patient7_RCC.png
        side, angle = side_view_tokens(stem)
        exam = strip_view_tokens(stem)
        if side is None or angle is None or exam == stem:
            raise ImageReadError(
                f"{path}: cannot tell exam and view from the file name (expected <exam>_L-CC.png, <exam>_R_MLO.png, "
                "<exam>_LEFT_CC.png, <exam>_L-US.png ... or a --mapping CSV row)"
            )
        meta = {"view_from": "file name", "laterality_from": "file name"}
    if angle != "US" and side == "U":
        raise ImageReadError(f"{path}: unknown laterality 'U' for a mammography view")
    rows, cols, spacing = raster_header(path)  # header-only: corrupt or truncated headers are reported here
    _check_size(path, rows, cols)
    view = f"{side}-{angle}"
    modality = Modality.US if angle == "US" else Modality.MG
    image = ImageRef(path=path, pixel_spacing=spacing, meta=meta)
    return _Found(path, f"name:{exam}", view, modality, image, {})
