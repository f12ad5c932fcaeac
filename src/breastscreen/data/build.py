"""Build exam manifests from a folder of DICOM and/or PNG/TIFF files.

Every file under the folder ends up either in an exam or in the problem list with a reason;
nothing is skipped silently (except hidden files such as ``.DS_Store`` and the builder's own
output files). See ``docs/data.md`` for the exact rules; in short:

* DICOM (``DICM`` marker or a ``.dcm``/``.dicom`` suffix): header-only read; exam =
  StudyInstanceUID (shown as its AccessionNumber when that is present and unambiguous);
  laterality from ImageLaterality → Laterality → series/protocol text; view from
  ViewPosition → ViewCodeSequence → series/protocol text; modality MG (or CR/DX with
  BodyPartExamined BREAST) and US; everything else is a problem.
* PNG/TIFF/JPEG: ``<exam>_L-CC.png`` / ``<exam>_L_CC.png`` (optionally ``_<k>`` for more images
  of a view), ``<exam>_R-US.png`` for ultrasound, or a row of the ``mapping`` CSV.
* Lesion masks ``<image stem>_mask_<benign|malignant>_<k>.png`` attach to their image.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from breastscreen.data.readers import (
    DEFAULT_MAX_PIXELS,
    DICOM_SUFFIXES,
    RASTER_SUFFIXES,
    dicom_pixel_spacing,
    is_dicom_file,
    raster_header,
    read_dicom_header,
)
from breastscreen.data.types import ALL_VIEWS, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import ImageReadError, ManifestError

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
class BuildResult:
    """Exams built from a folder and the files that could not be used, with reasons."""

    exams: list[Exam]
    problems: list[tuple[str, str]] = field(default_factory=list)
    n_files: int = 0
    n_images: int = 0


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


def _parse_spacing(text: str, where: str) -> tuple[float, float] | None:
    text = text.strip()
    if not text:
        return None
    parts = [p for p in re.split(r"[;,x\s\\/]+", text) if p]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ManifestError(f"{where}: pixel_spacing must be a number or 'row;col' in mm, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise ManifestError(f"{where}: pixel_spacing must be one or two positive numbers (mm), got {text!r}")
    return (vals[0], vals[1])


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


# --------------------------------------------------------------------------- mapping / labels CSVs


def read_mapping_csv(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a mapping CSV (path, exam_id, view[, patient_id, study_date, age, frame, pixel_spacing]).

    Relative paths are relative to ``root`` (the scanned folder). Returns ``{absolute path: row}``.
    """
    path = Path(path)
    root = Path(root).resolve()
    if not path.is_file():
        raise ManifestError(f"{path}: mapping CSV not found")
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower() for c in (reader.fieldnames or [])}
        missing = {"path", "exam_id", "view"} - cols
        if missing:
            raise ManifestError(f"{path}: mapping CSV needs columns path, exam_id, view; missing {sorted(missing)}")
        for lineno, raw in enumerate(reader, start=2):
            row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}:{lineno}"
            if not row["path"]:
                raise ManifestError(f"{where}: empty path")
            view = row["view"].upper().replace("_", "-")
            if view not in ALL_VIEWS:
                raise ManifestError(f"{where}: view must be one of {', '.join(ALL_VIEWS)}, got {row['view']!r}")
            if not row["exam_id"]:
                raise ManifestError(f"{where}: empty exam_id")
            p = Path(row["path"])
            full = str((p if p.is_absolute() else root / p).resolve())
            entry: dict[str, Any] = {"exam_id": row["exam_id"], "view": view, "where": where}
            for key in ("patient_id", "study_date"):
                if row.get(key):
                    entry[key] = row[key]
            if row.get("study_date") and _iso_date(row["study_date"]) is None:
                raise ManifestError(f"{where}: study_date must be YYYY-MM-DD or YYYYMMDD, got {row['study_date']!r}")
            if row.get("study_date"):
                entry["study_date"] = _iso_date(row["study_date"])
            if row.get("age"):
                try:
                    entry["age"] = float(row["age"])
                except ValueError:
                    raise ManifestError(f"{where}: age must be a number, got {row['age']!r}") from None
            if row.get("frame"):
                if not row["frame"].isdigit():
                    raise ManifestError(f"{where}: frame must be a non-negative integer, got {row['frame']!r}")
                entry["frame"] = int(row["frame"])
            spacing = _parse_spacing(row.get("pixel_spacing", ""), where)
            if spacing:
                entry["pixel_spacing"] = spacing
            if full in out:
                raise ManifestError(f"{where}: path {row['path']!r} repeats {out[full]['where']}")
            out[full] = entry
    return out


def _label_value(text: str, where: str, col: str) -> int | None:
    t = text.strip().lower()
    if t in ("", "na", "nan", "none", "unknown", "?"):
        return None
    if t in ("0", "1", "0.0", "1.0"):
        return int(float(t))
    raise ManifestError(f"{where}: {col} must be 0, 1 or empty (unknown), got {text!r}")


def read_labels_csv(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a labels CSV: exam_id, left_benign, left_malignant, right_benign, right_malignant
    (each 0, 1 or empty = unknown), optional density (A-D) and birads.

    Returns ``{exam_id: {"labels": {"L": BreastLabel, "R": BreastLabel}, "density":..., "birads":...}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: labels CSV not found")
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower() for c in (reader.fieldnames or [])}
        need = {"exam_id", "left_benign", "left_malignant", "right_benign", "right_malignant"}
        if need - cols:
            raise ManifestError(f"{path}: labels CSV needs columns {sorted(need)}; missing {sorted(need - cols)}")
        for lineno, raw in enumerate(reader, start=2):
            row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}:{lineno}"
            eid = row["exam_id"]
            if not eid:
                raise ManifestError(f"{where}: empty exam_id")
            if eid in out:
                raise ManifestError(f"{where}: exam_id {eid!r} appears twice")
            vals = {c: _label_value(row[c], where, c) for c in sorted(need - {"exam_id"})}
            entry: dict[str, Any] = {
                "labels": {
                    "L": BreastLabel(vals["left_benign"], vals["left_malignant"]),
                    "R": BreastLabel(vals["right_benign"], vals["right_malignant"]),
                }
            }
            density = row.get("density", "").upper()
            if density:
                if density not in ("A", "B", "C", "D"):
                    raise ManifestError(f"{where}: density must be A, B, C or D, got {row['density']!r}")
                entry["density"] = density
            if row.get("birads"):
                entry["birads"] = row["birads"].upper()
            out[eid] = entry
    return out


# --------------------------------------------------------------------------- scanning


def _walk(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def build_manifest(
    root: str | os.PathLike[str],
    mapping_csv: str | os.PathLike[str] | None = None,
    labels_csv: str | os.PathLike[str] | None = None,
    include_for_processing: bool = False,
    ignore: Iterable[str | os.PathLike[str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Scan ``root`` recursively and group its images into exams (see the module doc).

    ``mapping_csv`` assigns exam/view (and optional patient_id, study_date, age, frame,
    pixel_spacing) to listed files, overriding names and headers; ``labels_csv`` adds per-breast
    labels; ``include_for_processing`` keeps raw FOR PROCESSING mammograms; ``ignore`` lists files
    to pass over without a report (e.g. the output manifest). ``progress(done, total)`` is called
    per file. Exams and images are sorted, so the result is deterministic.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    root = root.resolve()
    mapping = read_mapping_csv(mapping_csv, root) if mapping_csv else {}
    labels = read_labels_csv(labels_csv) if labels_csv else {}
    skip = {str(Path(p).resolve()) for p in ignore}
    for extra in (mapping_csv, labels_csv):
        if extra:
            skip.add(str(Path(extra).resolve()))

    files = [f for f in _walk(root) if str(f) not in skip]
    problems: list[tuple[str, str]] = []
    found: list[_Found] = []
    masks: dict[tuple[str, str], list[tuple[str, LesionMask]]] = defaultdict(list)  # (folder, stem) → masks
    seen_mapped: set[str] = set()

    for i, f in enumerate(files):
        if progress:
            progress(i, len(files))
        path = str(f)
        suffix = f.suffix.lower()
        stem = f.stem
        try:
            if path in mapping:
                seen_mapped.add(path)
                found.append(_mapped_image(path, mapping[path], suffix))
                continue
            mask_m = _MASK_RE.match(stem) if suffix in RASTER_SUFFIXES else None
            if mask_m:
                k = mask_m.group("k")
                masks[(str(f.parent), mask_m.group("image"))].append(
                    (f"{int(k):06d}" if k else "", LesionMask(path, mask_m.group("label").lower()))
                )
                continue
            if suffix in RASTER_SUFFIXES:
                found.append(_raster_image(path, stem))
            elif suffix in DICOM_SUFFIXES or is_dicom_file(f):
                found.append(_dicom_image(path, include_for_processing))
            else:
                problems.append((path, f"not an image file ({suffix or 'no suffix'})"))
        except ImageReadError as exc:
            problems.append((path, _reason(exc, path)))
    if progress:
        progress(len(files), len(files))

    for path, entry in mapping.items():
        if path not in seen_mapped and path not in skip:
            problems.append((path, f"listed in mapping CSV ({entry['where']}) but not found"))

    # attach masks to images in the same folder with the matching stem
    used_masks: set[tuple[str, str]] = set()
    for item in found:
        key = (str(Path(item.path).parent), Path(item.path).stem)
        if key in masks:
            item.image.masks = [m for _, m in sorted(masks[key], key=lambda t: (t[0], t[1].path))]
            used_masks.add(key)
    for key, items in masks.items():
        if key not in used_masks:
            for _, m in items:
                problems.append((m.path, f"lesion mask without its image ({key[1]}.*)"))

    exams = _group(found, problems)
    for exam in exams:
        extra = labels.get(exam.exam_id)
        if extra:
            exam.labels = dict(extra["labels"])
            exam.density = extra.get("density", exam.density)
            exam.birads = extra.get("birads", exam.birads)
    known = {e.exam_id for e in exams}
    for eid in sorted(set(labels) - known):
        problems.append((str(labels_csv), f"labels given for exam {eid!r}, which has no usable image"))
    problems.sort(key=lambda t: t[0])
    n_images = sum(1 for e in exams for _ in e.iter_images())
    return BuildResult(exams=exams, problems=problems, n_files=len(files), n_images=n_images)


def _reason(exc: ImageReadError, path: str) -> str:
    msg = str(exc)
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


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


def _group(found: list[_Found], problems: list[tuple[str, str]]) -> list[Exam]:
    groups: dict[str, list[_Found]] = defaultdict(list)
    for item in found:
        groups[item.group].append(item)

    # DICOM studies are shown by AccessionNumber when it is unique to the study and not a file-name id.
    accession_users: dict[str, set[str]] = defaultdict(set)
    for key, items in groups.items():
        if not key.startswith("name:"):
            for it in items:
                if it.exam_fields.get("accession"):
                    accession_users[it.exam_fields["accession"]].add(key)
    name_ids = {k[5:] for k in groups if k.startswith("name:")}

    exams: dict[str, Exam] = {}
    for key in sorted(groups):
        items = sorted(groups[key], key=lambda it: (it.view, it.path))
        modalities = {it.modality for it in items}
        if len(modalities) > 1:
            # Mixed MG + US under one study: split into two exams with a modality suffix.
            parts = [(f"{key}#{m.value}", [it for it in items if it.modality is m]) for m in sorted(modalities)]
        else:
            parts = [(key, items)]
        for part_key, part in parts:
            exam_id = _exam_id(part_key, part, accession_users, name_ids)
            if exam_id in exams:
                for it in part:
                    problems.append((it.path, f"exam id {exam_id!r} is already used by another study"))
                continue
            exam = Exam(exam_id=exam_id, modality=part[0].modality)
            for field_name in ("patient_id", "study_date", "age"):
                values = sorted({str(it.exam_fields.get(field_name)) for it in part if it.exam_fields.get(field_name)})
                if values:
                    value = values[0]
                    setattr(exam, field_name, float(value) if field_name == "age" else value)
                    if len(values) > 1:
                        exam.meta[f"{field_name}_conflict"] = values
            uid = part[0].exam_fields.get("study_instance_uid")
            if uid and not uid.startswith(("accession:", "patient-date:")):
                exam.meta["study_instance_uid"] = uid
            if part[0].exam_fields.get("accession"):
                exam.meta["accession_number"] = part[0].exam_fields["accession"]
            for it in part:
                exam.views.setdefault(it.view, []).append(it.image)
            exams[exam_id] = exam
    return [exams[k] for k in sorted(exams)]


def _exam_id(key: str, items: list[_Found], accession_users: dict[str, set[str]], name_ids: set[str]) -> str:
    if key.startswith("name:"):
        return key[5:]
    base, _, suffix = key.partition("#")
    accessions = {it.exam_fields.get("accession") for it in items}
    if len(accessions) == 1:
        acc = next(iter(accessions))
        if acc and len(accession_users[acc]) == 1 and acc not in name_ids:
            return f"{acc}-{suffix}" if suffix else acc
    if base.startswith(("accession:", "patient-date:")):
        base = base.split(":", 1)[1].replace(":", "-")
    return f"{base}-{suffix}" if suffix else base


def write_problems_csv(problems: list[tuple[str, str]], path: str | os.PathLike[str]) -> Path:
    """Write the problem report (columns path, reason) atomically."""
    from breastscreen.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "reason"])
            w.writerows(problems)
    return path
