"""Build exam manifests from a folder of DICOM and/or PNG/TIFF files.

Every file under the folder ends up either in an exam or in the problem list with a reason;
nothing is skipped silently (except hidden files such as ``.DS_Store`` and the builder's own
output files). See ``docs/data.md`` for the exact rules; in short:

* DICOM (``DICM`` marker or a ``.dcm``/``.dicom`` suffix): header-only read; exam =
  StudyInstanceUID (shown as its AccessionNumber when that is present and unambiguous), or
  PatientID + StudyDate when every image is its own study (``group_by``); view and laterality
  from ViewCodeSequence → ViewPosition → ImageLaterality/Laterality → PatientOrientation →
  descriptions → ProtocolName → PatientID → file name (see ``_build_views``); modality MG (or
  CR/DX with BodyPartExamined BREAST) and US; everything else is a problem.
* PNG/TIFF/JPEG: ``<exam>_L-CC.png`` / ``<exam>_L_CC.png`` (optionally ``_<k>`` for more images
  of a view), ``<exam>_R-US.png`` for ultrasound, names with side/view words such as
  ``<exam>_LEFT_CC.png`` or ``<exam>_RMLO.png``, or a row of the ``mapping`` CSV.
* Lesion masks ``<image stem>_mask_<benign|malignant>_<k>.png`` attach to their image.

This module walks the folder, reads the mapping and labels CSVs and assembles the result;
classifying one file (header or name → modality, side, view, exam key) is in ``_build_views``
and grouping the classified files into exams in ``_build_group``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from breastscreen.data._build_group import _group
from breastscreen.data._build_views import (
    _MASK_RE,
    BREAST_MODALITIES,
    VIEW_CODE_MAP,
    VIEW_POSITION_MAP,
    _dicom_image,
    _Found,
    _iso_date,
    _mapped_image,
    _raster_image,
)
from breastscreen.data.readers import DICOM_SUFFIXES, PLAUSIBLE_SPACING_MM, RASTER_SUFFIXES, is_dicom_file
from breastscreen.data.types import ALL_VIEWS, BIRADS_VALUES, BreastLabel, Exam, LesionMask
from breastscreen.errors import ImageReadError, ManifestError

logger = logging.getLogger("breastscreen")

__all__ = [
    "BREAST_MODALITIES",
    "VIEW_CODE_MAP",
    "VIEW_POSITION_MAP",
    "BuildResult",
    "build_manifest",
    "read_labels_csv",
    "read_mapping_csv",
    "write_problems_csv",
]


# Largest mapping / labels CSV read (a million rows is far below it).
MAX_CSV_BYTES = 256 * 1024 * 1024


@dataclass
class BuildResult:
    """Exams built from a folder and the files that could not be used, with reasons."""

    exams: list[Exam]
    problems: list[tuple[str, str]] = field(default_factory=list)
    n_files: int = 0
    n_images: int = 0


# --------------------------------------------------------------------------- mapping / labels CSVs


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
    lo, hi = PLAUSIBLE_SPACING_MM
    if len(vals) != 2 or not all(lo <= v <= hi for v in vals):  # also refuses inf and nan
        raise ManifestError(f"{where}: pixel_spacing must be one or two numbers in [{lo}, {hi}] mm, got {text!r}")
    return (vals[0], vals[1])


def _csv_rows(path: Path, what: str) -> csv.DictReader:
    """A DictReader over a user CSV: regular file, size limit, UTF-8/UTF-16 text (clear errors otherwise)."""
    import io

    from breastscreen.safety import read_user_text

    return csv.DictReader(io.StringIO(read_user_text(path, what, MAX_CSV_BYTES, ManifestError), newline=""))


def read_mapping_csv(path: str | os.PathLike[str], root: str | os.PathLike[str],
                     allow_outside_paths: bool = False) -> dict[str, dict[str, Any]]:
    """Read a mapping CSV (path, exam_id, view[, patient_id, study_date, age, frame, pixel_spacing]).

    Relative paths are relative to ``root`` (the scanned folder); a path leaving ``root`` is an
    error unless ``allow_outside_paths``. Returns ``{absolute path: row}``.
    """
    from breastscreen.safety import PathOutsideError, confine

    path = Path(path)
    root = Path(root).resolve()
    if not path.is_file():
        raise ManifestError(f"{path}: mapping CSV not found")
    out: dict[str, dict[str, Any]] = {}
    reader = _csv_rows(path, "mapping CSV")
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
        if not allow_outside_paths:
            try:
                confine(full, [root], f"{where}: path", "pass --allow-outside-paths to use files elsewhere")
            except PathOutsideError as exc:
                raise ManifestError(str(exc)) from None
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
    reader = _csv_rows(path, "labels CSV")
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
            if row["birads"].upper() not in BIRADS_VALUES:
                raise ManifestError(f"{where}: birads must be one of {', '.join(BIRADS_VALUES)}, got {row['birads']!r}")
            entry["birads"] = row["birads"].upper()
        out[eid] = entry
    return out


# --------------------------------------------------------------------------- scanning


def _walk(root: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """Regular files under ``root`` (hidden names skipped), sorted; anything else goes to ``problems``.

    Symbolic links are followed only when they point inside ``root`` (file links) and never into
    folders (no loops, no escape); FIFOs, devices and sockets are reported without being opened.
    """
    from breastscreen.safety import check_regular_file

    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                problems.append((os.path.join(dirpath, d), "symbolic link to a folder (not followed)"))
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            try:
                check_regular_file(path, ImageReadError, root=root)
            except ImageReadError as exc:
                problems.append((path, _reason(exc, path)))
                continue
            files.append(Path(path))
    return sorted(files)


def _classify(path: str, suffix: str, stem: str, mapping: dict[str, dict[str, Any]], include_for_processing: bool,
              masks: dict[tuple[str, str], list[tuple[str, LesionMask]]], seen_mapped: set[str]) -> _Found | None:
    """One file: a usable image (returned), a lesion mask (recorded in ``masks``) or an ImageReadError."""
    if path in mapping:
        seen_mapped.add(path)
        return _mapped_image(path, mapping[path], suffix)
    mask_m = _MASK_RE.match(stem) if suffix in RASTER_SUFFIXES else None
    if mask_m:
        k = mask_m.group("k")
        masks[(str(Path(path).parent), mask_m.group("image"))].append(
            (f"{int(k):06d}" if k else "", LesionMask(path, mask_m.group("label").lower()))
        )
        return None
    if suffix in RASTER_SUFFIXES:
        return _raster_image(path, stem)
    if suffix in DICOM_SUFFIXES or is_dicom_file(path):
        return _dicom_image(path, include_for_processing)
    raise ImageReadError(f"{path}: not an image file ({suffix or 'no suffix'})")


def build_manifest(
    root: str | os.PathLike[str],
    mapping_csv: str | os.PathLike[str] | None = None,
    labels_csv: str | os.PathLike[str] | None = None,
    include_for_processing: bool = False,
    ignore: Iterable[str | os.PathLike[str]] = (),
    progress: Callable[[int, int], None] | None = None,
    group_by: str = "auto",
    allow_outside_paths: bool = False,
) -> BuildResult:
    """Scan ``root`` recursively and group its images into exams (see the module doc).

    ``mapping_csv`` assigns exam/view (and optional patient_id, study_date, age, frame,
    pixel_spacing) to listed files, overriding names and headers; ``labels_csv`` adds per-breast
    labels; ``include_for_processing`` keeps raw FOR PROCESSING mammograms; ``ignore`` lists files
    to pass over without a report (e.g. the output manifest). ``progress(done, total)`` is called
    per file. ``group_by``: ``study`` (StudyInstanceUID), ``patient-date`` (PatientID without its
    view words + StudyDate) or ``auto`` (``patient-date`` when every DICOM image is its own study
    and some share a patient, else ``study``). Exams and images are sorted, so the result is
    deterministic. Only regular files are read; FIFOs, devices and symbolic links leaving
    ``root`` are reported, never opened; mapping-CSV paths must stay inside ``root`` unless
    ``allow_outside_paths``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    root = root.resolve()
    mapping = read_mapping_csv(mapping_csv, root, allow_outside_paths) if mapping_csv else {}
    labels = read_labels_csv(labels_csv) if labels_csv else {}
    skip = {str(Path(p).resolve()) for p in ignore}
    for extra in (mapping_csv, labels_csv):
        if extra:
            skip.add(str(Path(extra).resolve()))

    problems: list[tuple[str, str]] = []
    files = [f for f in _walk(root, problems) if str(f) not in skip]
    found: list[_Found] = []
    masks: dict[tuple[str, str], list[tuple[str, LesionMask]]] = defaultdict(list)  # (folder, stem) → masks
    seen_mapped: set[str] = set()

    for i, f in enumerate(files):
        if progress:
            progress(i, len(files))
        path = str(f)
        try:
            item = _classify(path, f.suffix.lower(), f.stem, mapping, include_for_processing, masks, seen_mapped)
            if item is not None:
                found.append(item)
        except ImageReadError as exc:
            problems.append((path, _reason(exc, path)))
        except Exception as exc:  # noqa: BLE001 - one unreadable file never stops the scan
            logger.error("unexpected error while reading %s", path, exc_info=exc)
            problems.append((path, f"unreadable ({type(exc).__name__}: {exc}); details in the error log"))
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

    try:
        exams = _group(found, problems, group_by)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
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
