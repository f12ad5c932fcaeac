"""Exam manifests: JSON Lines, one exam per line, validated against a shipped JSON Schema.

Paths in a manifest file are relative to the manifest's folder (absolute paths are accepted
on read). In memory they are absolute, so exams can be moved between manifests; the writer
makes them relative to the folder of the file it writes. Keys of an image's
``preprocessing`` record that end in ``_path`` are paths too and are treated the same way.

A manifest can only send a reader to files inside its own folder, unless it has a
``<stem>.roots.json`` sidecar (which breastscreen writes when it records files it was pointed
at elsewhere) or the reader allows other folders (``--root``, ``--allow-outside-paths``); see
:func:`read_manifest`.

Older manifests kept the label of an ultrasound ``U-US`` bag in ``meta.label_U``; the reader
moves it to ``labels.U`` (see :func:`exam_from_dict`), and the writer only writes ``labels.U``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

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
from breastscreen.safety import loads_json

SCHEMA_NAME = "exam.schema.json"
# Limits of one manifest line and of the whole file (a line is one exam; real ones are a few KB).
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024 * 1024
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
        masks=[LesionMask(_abs(m["path"], base), m.get("label"), m.get("kind"), m.get("lesion_id"))
               for m in d.get("masks", [])],
        rois=[ROI(tuple(r["box"]), r.get("label"), r.get("kind"), r.get("lesion_id"),
                  tuple(r["circle"]) if r.get("circle") is not None else None) for r in d.get("rois", [])],
        preprocessing=_map_preprocessing(d.get("preprocessing"), lambda p: _abs(p, base)),
        meta=dict(d.get("meta", {})),
    )


def _lesion_part(out: dict[str, Any], kind: str | None, lesion_id: str | None,
                 circle: list[float] | None = None) -> dict[str, Any]:
    """Manifest form of a mask/ROI: optional keys only when set, so older manifests round-trip unchanged."""
    if kind:
        out["kind"] = kind
    if lesion_id is not None:
        out["lesion_id"] = lesion_id
    if circle is not None:
        out["circle"] = circle
    return out


def image_to_dict(image: ImageRef, base: Path) -> dict[str, Any]:
    """Manifest form of an image, with paths relative to ``base``; empty fields are omitted."""
    out: dict[str, Any] = {"path": _rel(image.path, base)}
    if image.frame is not None:
        out["frame"] = image.frame
    if image.pixel_spacing is not None:
        out["pixel_spacing"] = [float(s) for s in image.pixel_spacing]
    if image.masks:
        out["masks"] = [_lesion_part({"path": _rel(m.path, base), "label": m.label}, m.kind, m.lesion_id)
                        for m in image.masks]
    if image.rois:
        out["rois"] = [
            _lesion_part({"box": list(r.box), "label": r.label}, r.kind, r.lesion_id,
                         circle=[float(v) for v in r.circle] if r.circle is not None else None)
            for r in image.rois
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


def roots_file(path: str | os.PathLike[str]) -> Path:
    """The sidecar listing the folders outside its own that a manifest may use: ``<stem>.roots.json``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.roots.json")


def _sidecar_roots(path: Path) -> list[str]:
    side = roots_file(path)
    if not side.is_file():
        return []
    try:
        data = loads_json(side.read_bytes()[:MAX_LINE_BYTES], str(side))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{side}: unreadable roots file ({exc}); delete it to use only the manifest's folder") from None
    roots = data.get("roots") if isinstance(data, dict) else None
    if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots):
        raise ManifestError(f"{side}: 'roots' must be a list of absolute folder paths")
    return roots


def _checked_paths(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, path) of every file a later stage may open: images, masks, preprocessing outputs."""
    out: list[tuple[str, str]] = []
    for view, images in d.get("views", {}).items():
        for k, img in enumerate(images):
            out.append((f"views/{view}/{k}/path", img["path"]))
            out.extend((f"views/{view}/{k}/masks/{j}/path", m["path"]) for j, m in enumerate(img.get("masks", [])))
            rec = img.get("preprocessing") or {}
            # source_path is provenance (the raw image the output was made from), never opened from here.
            out.extend((f"views/{view}/{k}/preprocessing/{key}", v) for key, v in rec.items()
                       if key.endswith("_path") and key != "source_path" and isinstance(v, str))
    return out


def _check_line(d: dict[str, Any], where: str, base: Path, roots: list[str] | None) -> None:
    """Checks beyond the schema: real calendar dates and paths inside the allowed roots."""
    import datetime

    from breastscreen.safety import PathOutsideError, confine

    date = d.get("study_date")
    if date is not None:
        try:
            datetime.date.fromisoformat(date)
        except ValueError:
            raise ManifestError(f"{where}: field 'study_date': {date!r} is not a calendar date") from None
    if roots is None:
        return
    for field_name, p in _checked_paths(d):
        full = _abs(p, base)
        try:
            confine(full, roots, f"{where}: field '{field_name}': path",
                    ("pass --allow-outside-paths, or list the folder in the manifest's <stem>.roots.json "
                     "sidecar (docs/data.md), to use files elsewhere"))
        except PathOutsideError as exc:
            raise ManifestError(str(exc)) from None


def read_manifest(
    path: str | os.PathLike[str],
    *,
    roots: Sequence[str | os.PathLike[str]] = (),
    allow_outside_paths: bool = False,
    use_roots_file: bool = True,
    problems: list[tuple[str, str]] | None = None,
) -> list[Exam]:
    """Read and validate a manifest; raise :class:`ManifestError` naming the line and field.

    Text must be UTF-8 (a UTF-8/16/32 byte-order mark is honoured); each line is parsed with a
    size and nesting limit (:func:`breastscreen.safety.loads_json`) and checked against the
    schema. Every file a line names (images, masks, preprocessing outputs) must resolve inside
    the manifest's folder, one of ``roots``, or a folder listed in the manifest's
    ``<stem>.roots.json`` (written by breastscreen for manifests that reference files it was
    pointed at elsewhere; ignored when ``use_roots_file`` is False), unless
    ``allow_outside_paths``. With a ``problems`` list, a bad line is appended there as
    ``(where, reason)`` and skipped instead of failing the whole file.
    """
    from breastscreen.safety import read_user_text

    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest file not found")
    text = read_user_text(path, "manifest", MAX_MANIFEST_BYTES, ManifestError)
    base = path.resolve().parent
    allowed: list[str] | None = None
    if not allow_outside_paths:
        allowed = [str(base), *(str(Path(r).resolve()) for r in roots)]
        if use_roots_file:
            allowed += _sidecar_roots(path)
    exams: list[Exam] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            exams.append(_read_line(line, where, base, allowed, seen, lineno))
        except ManifestError as exc:
            if problems is None:
                raise
            problems.append((where, str(exc)[len(where) + 2:] if str(exc).startswith(where + ": ") else str(exc)))
    return exams


def _read_line(line: str, where: str, base: Path, allowed: list[str] | None, seen: dict[str, int],
               lineno: int) -> Exam:
    try:
        d = loads_json(line, where, max_bytes=MAX_LINE_BYTES)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    validate_exam_dict(d, where)
    _check_line(d, where, base, allowed)
    if d["exam_id"] in seen:
        raise ManifestError(f"{where}: exam_id {d['exam_id']!r} repeats line {seen[d['exam_id']]}")
    seen[d["exam_id"]] = lineno
    try:
        return exam_from_dict(d, base)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _outside_roots(lines: Sequence[dict[str, Any]], base: Path) -> list[str]:
    """Folders of the files manifest lines reference outside ``base``, nested ones folded into their parents."""
    from breastscreen.safety import is_within, real

    folders = set()
    for d in lines:
        for _, p in _checked_paths(d):
            full = _abs(p, base)
            if not is_within(full, base):
                folders.add(os.path.dirname(real(full)))
    kept: list[str] = []
    for f in sorted(folders, key=len):
        if not any(is_within(f, k) for k in kept):
            kept.append(f)
    return sorted(kept)


def write_manifest(exams: Iterable[Exam], path: str | os.PathLike[str], overwrite: bool = True,
                   roots: Sequence[str | os.PathLike[str]] | None = None) -> Path:
    """Write exams as JSON Lines atomically (temp file + rename); paths become relative to the file.

    When some referenced file lies outside the manifest's folder, ``<stem>.roots.json`` is written
    beside it listing ``roots`` (the folders the command was pointed at) and the folders of any
    other such files, so that :func:`read_manifest` accepts what breastscreen itself wrote;
    otherwise a stale one is removed.
    """
    from breastscreen.utils import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise ManifestError(f"{path}: exists; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    dicts = []
    for exam in exams:
        d = exam_to_dict(exam, base)
        validate_exam_dict(d, f"exam {exam.exam_id}")
        dicts.append(d)
    lines = []
    for d in dicts:
        try:
            lines.append(json.dumps(d, sort_keys=False, ensure_ascii=False, allow_nan=False))
        except ValueError:
            # read_manifest refuses NaN/Infinity, so never write a line it could not read back.
            raise ManifestError(f"exam {d['exam_id']}: a value is NaN or infinite; manifests hold finite "
                                "numbers only") from None
    outside = _outside_roots(dicts, base)
    side = roots_file(path)
    if outside:
        from breastscreen.safety import is_within

        named = sorted({str(Path(r).resolve()) for r in roots or ()})
        listed = named + [f for f in outside if not any(is_within(f, r) for r in named)]
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps({
                "manifest": path.name, "roots": listed,
                "note": "folders outside its own that this manifest may use; written by breastscreen, "
                        "delete it to allow only the manifest's folder",
            }, indent=1) + "\n", encoding="utf-8")
    else:
        side.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + ("\n" if lines else ""))
    return path
