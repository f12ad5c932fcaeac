"""Exam manifests: JSON Lines, one exam per line, validated against a shipped JSON Schema.

Paths in a manifest file are relative to the manifest's folder (absolute paths are accepted
on read). In memory they are absolute, so exams can be moved between manifests; the writer
makes them relative to the folder of the file it writes. Keys of an image's
``preprocessing`` record that end in ``_path`` are paths too and are treated the same way.

Older manifests kept the label of an ultrasound ``U-US`` bag in ``meta.label_U``; the reader
moves it to ``labels.U`` (see :func:`exam_from_dict`), and the writer only writes ``labels.U``.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from breastscreen.data.types import (
    ROI,
    BreastLabel,
    Exam,
    ImageRef,
    LesionMask,
    Modality,
)
from breastscreen.errors import ManifestError

SCHEMA_NAME = "exam.schema.json"
# Exam meta key of the U-US bag label in manifests written before labels.U existed.
LEGACY_LABEL_U = "label_U"


@lru_cache(maxsize=1)
def exam_schema() -> dict[str, Any]:
    """The JSON Schema of one manifest line, as shipped in the package."""
    text = resources.files("breastscreen.schemas").joinpath(SCHEMA_NAME).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = exam_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _abs(path: str, base: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve())


def _rel(path: str, base: Path) -> str:
    return os.path.relpath(path, base)


def _map_preprocessing(record: dict[str, Any] | None, fn) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: (fn(v) if k.endswith("_path") and isinstance(v, str) else v) for k, v in record.items()}


def image_from_dict(d: dict[str, Any], base: Path) -> ImageRef:
    """Build an :class:`ImageRef` from its manifest form, resolving paths against ``base``."""
    spacing = d.get("pixel_spacing")
    return ImageRef(
        path=_abs(d["path"], base),
        frame=d.get("frame"),
        pixel_spacing=tuple(float(s) for s in spacing) if spacing else None,
        masks=[LesionMask(_abs(m["path"], base), m["label"], m.get("kind")) for m in d.get("masks", [])],
        rois=[ROI(tuple(r["box"]), r["label"], r.get("kind")) for r in d.get("rois", [])],
        preprocessing=_map_preprocessing(d.get("preprocessing"), lambda p: _abs(p, base)),
        meta=dict(d.get("meta", {})),
    )


def image_to_dict(image: ImageRef, base: Path) -> dict[str, Any]:
    """Manifest form of an image, with paths relative to ``base``; empty fields are omitted."""
    out: dict[str, Any] = {"path": _rel(image.path, base)}
    if image.frame is not None:
        out["frame"] = image.frame
    if image.pixel_spacing is not None:
        out["pixel_spacing"] = [float(s) for s in image.pixel_spacing]
    if image.masks:
        out["masks"] = [
            {"path": _rel(m.path, base), "label": m.label, **({"kind": m.kind} if m.kind else {})}
            for m in image.masks
        ]
    if image.rois:
        out["rois"] = [
            {"box": list(r.box), "label": r.label, **({"kind": r.kind} if r.kind else {})} for r in image.rois
        ]
    if image.preprocessing is not None:
        out["preprocessing"] = _map_preprocessing(image.preprocessing, lambda p: _rel(p, base))
    if image.meta:
        out["meta"] = image.meta
    return out


def _migrate_label_u(labels: dict[str, BreastLabel], meta: dict[str, Any]) -> None:
    """Move a legacy ``meta["label_U"]`` into ``labels["U"]`` (both dictionaries are changed)."""
    if LEGACY_LABEL_U not in meta:
        return
    raw = meta.pop(LEGACY_LABEL_U)
    if raw is None:
        return  # older readers read null as "no label"; an absent U label means the same
    if not isinstance(raw, dict):
        raise ValueError(f"meta.{LEGACY_LABEL_U} must be an object, got {raw!r}")
    if "U" in labels:
        raise ValueError(f"both labels.U and the legacy meta.{LEGACY_LABEL_U} are given; keep labels.U only")
    # Only benign/malignant were ever read from it, as by older readers.
    labels["U"] = BreastLabel(raw.get("benign"), raw.get("malignant"))


def exam_from_dict(d: dict[str, Any], base: Path) -> Exam:
    """Build an :class:`Exam` from one (already validated) manifest line.

    A legacy ``meta.label_U`` (label of the ``U-US`` bag in older manifests) becomes ``labels.U``
    and is dropped from ``meta``.
    """
    labels = {side: BreastLabel(v.get("benign"), v.get("malignant")) for side, v in d.get("labels", {}).items()}
    meta = dict(d.get("meta", {}))
    _migrate_label_u(labels, meta)
    views = {view: [image_from_dict(i, base) for i in images] for view, images in d["views"].items()}
    return Exam(
        exam_id=d["exam_id"],
        modality=Modality(d["modality"]),
        views=views,
        patient_id=d.get("patient_id"),
        study_date=d.get("study_date"),
        age=d.get("age"),
        density=d.get("density"),
        birads=d.get("birads"),
        labels=labels,
        meta=meta,
    )


def exam_to_dict(exam: Exam, base: Path) -> dict[str, Any]:
    """Manifest form of an exam with paths relative to ``base``."""
    out: dict[str, Any] = {"exam_id": exam.exam_id, "modality": exam.modality.value}
    for key in ("patient_id", "study_date", "age", "density", "birads"):
        value = getattr(exam, key)
        if value is not None:
            out[key] = value
    if exam.labels:
        out["labels"] = {
            side: {"benign": lab.benign, "malignant": lab.malignant} for side, lab in sorted(exam.labels.items())
        }
    out["views"] = {view: [image_to_dict(i, base) for i in images] for view, images in exam.views.items()}
    if exam.meta:
        out["meta"] = exam.meta
    return out


def validate_exam_dict(d: Any, where: str) -> None:
    """Validate one manifest line; raise :class:`ManifestError` naming ``where`` and the field."""
    errors = sorted(_validator().iter_errors(d), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        field_path = "/".join(str(p) for p in err.absolute_path) or "(line)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ManifestError(f"{where}: field '{field_path}': {err.message}{more}")


def read_manifest(path: str | os.PathLike[str]) -> list[Exam]:
    """Read and validate a manifest; raise :class:`ManifestError` naming the line and field."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    base = path.resolve().parent
    exams: list[Exam] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            validate_exam_dict(d, where)
            if d["exam_id"] in seen:
                raise ManifestError(f"{where}: exam_id {d['exam_id']!r} repeats line {seen[d['exam_id']]}")
            seen[d["exam_id"]] = lineno
            try:
                exams.append(exam_from_dict(d, base))
            except ValueError as exc:
                raise ManifestError(f"{where}: {exc}") from None
    return exams


def write_manifest(exams: Iterable[Exam], path: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Write exams as JSON Lines atomically (temp file + rename); paths become relative to the file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ManifestError(f"{path}: exists; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    lines = []
    for exam in exams:
        d = exam_to_dict(exam, base)
        validate_exam_dict(d, f"exam {exam.exam_id}")
        lines.append(json.dumps(d, sort_keys=False, ensure_ascii=False))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + ("\n" if lines else ""))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
