"""Uploads: a multipart body streamed straight into the job folder, zips unpacked safely, exams found.

Every check answers with an :class:`UploadError` carrying the HTTP status the client gets:

* **413** — the body is larger than ``max_upload_bytes`` (checked from ``Content-Length`` and
  again while streaming), more than ``max_files`` files (zip entries included), a zip whose
  entries add up to more than ``max_unzipped_bytes`` (checked from the zip directory before
  anything is extracted, and again while extracting, so a zip that lies about its sizes is
  stopped too), or an image larger than ``max_pixels`` per frame (checked from its header);
* **422** — everything the client must fix: not a multipart form, a file that is not an image
  or cannot be parsed, a zip entry that would land outside the job folder (absolute path,
  ``..``, drive letter, symbolic link), an encrypted zip, a zip next to other files, a mapping
  that names a file not sent, an exam of the wrong modality for the loaded model, no exam at all.

Messages name the file as the client sent it (never the server's path). Exams are found as
``breastscreen predict FOLDER`` finds them (:func:`breastscreen.inference.predict.load_inputs`:
DICOM tags, ``<exam>_<VIEW>.png`` names) or, with a mapping, by
:func:`breastscreen.data.build.build_manifest` with the mapping written as its CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from breastscreen.data.types import ALL_VIEWS, Exam, Modality
from breastscreen.errors import BreastscreenError

UPLOAD_DIR = "upload"
MAPPING_CSV = "mapping.csv"
FILE_FIELD = "files"
TEXT_FIELDS = ("mapping", "exam_id")
MAX_FIELD_BYTES = 1024 * 1024
# Room for the multipart boundaries and part headers on top of the files themselves.
FORM_OVERHEAD_BYTES = 64 * 1024
_CHUNK = 1024 * 1024


class UploadError(BreastscreenError):
    """An upload the service refuses; ``status`` is the HTTP status code (413 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Limits of one upload (see the module docstring)."""

    max_upload_bytes: int
    max_files: int
    max_unzipped_bytes: int
    max_pixels: int


@dataclass
class ReceivedFile:
    """One file of an upload: its name relative to the upload folder, size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass
class ReceivedForm:
    """What the multipart body held: the files (written to disk) and the text fields."""

    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    body_bytes: int = 0


# --------------------------------------------------------------------------- names


def safe_file_name(raw: str) -> str:
    """The base name of an uploaded file, refused (422) when empty, hidden or with control characters."""
    name = re.split(r"[\\/]", raw)[-1].strip()
    if not name or name in (".", ".."):
        raise UploadError(422, f"file name {raw!r}: empty after removing folders")
    if name.startswith("."):
        raise UploadError(422, f"{name}: hidden file names (starting with '.') are not accepted")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UploadError(422, f"{name!r}: control characters in the file name")
    if len(name.encode("utf-8")) > 255:
        raise UploadError(422, f"{name[:40]}...: file name longer than 255 bytes")
    return name


def client_message(text: str, upload_dir: Path) -> str:
    """``text`` with the server's upload folder removed from paths, so it names files as the client sent them."""
    out = str(text)
    for root in {str(upload_dir), str(upload_dir.resolve())}:
        out = out.replace(root + os.sep, "").replace(root, ".")
    return out


# --------------------------------------------------------------------------- multipart


class _FormWriter:
    """Callbacks of the streaming multipart parser: files go straight to disk, fields to memory."""

    def __init__(self, dest: Path, limits: UploadLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.form = ReceivedForm()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._fh: Any = None
        self._hash: Any = None
        self._size = 0
        self._field: str | None = None
        self._value = bytearray()
        self._name = ""

    def on_part_begin(self) -> None:
        """A new part starts: forget the previous part's headers."""
        self._headers = {}
        self._fh = None
        self._field = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        """Collect a header name (it may arrive in pieces)."""
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        """Collect a header value (it may arrive in pieces)."""
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        """Store the completed header."""
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        """Decide from Content-Disposition whether the part is a file (opened on disk) or a text field."""
        from python_multipart.multipart import parse_options_header

        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise UploadError(422, "every part of the multipart body needs Content-Disposition: form-data")
        try:
            name = options.get(b"name", b"").decode("utf-8")
            filename = options.get(b"filename")
            raw_filename = filename.decode("utf-8") if filename is not None else None
        except UnicodeDecodeError:
            raise UploadError(422, "form field and file names must be UTF-8") from None
        if raw_filename is not None:
            if name != FILE_FIELD:
                raise UploadError(422, f"file {raw_filename!r} sent as field {name!r}; send files as {FILE_FIELD!r}")
            if len(self.form.files) >= self.limits.max_files:
                raise UploadError(413, f"more than {self.limits.max_files} files in one upload")
            self._name = safe_file_name(raw_filename)
            if any(f.name == self._name for f in self.form.files):
                raise UploadError(422, f"{self._name}: sent twice")
            self._fh = open(self.dest / self._name, "xb")
            self._hash = hashlib.sha256()
            self._size = 0
        else:
            if name not in TEXT_FIELDS:
                raise UploadError(422, f"unknown form field {name!r}; expected {FILE_FIELD!r}, " +
                                  ", ".join(repr(f) for f in TEXT_FIELDS))
            if name in self.form.fields:
                raise UploadError(422, f"form field {name!r} sent twice")
            self._field = name
            self._value = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        """Write file bytes (hashing them) or collect field bytes (bounded)."""
        chunk = data[start:end]
        if self._fh is not None:
            self._fh.write(chunk)
            self._hash.update(chunk)
            self._size += len(chunk)
        elif self._field is not None:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {self._field!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        """Close the part's file or decode its text field."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.form.files.append(ReceivedFile(self._name, self._size, self._hash.hexdigest()))
        elif self._field is not None:
            try:
                self.form.fields[self._field] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(422, f"form field {self._field!r} is not UTF-8 text") from None
            self._field = None

    @property
    def in_part(self) -> bool:
        """True while a part has started and not ended (a truncated body)."""
        return self._fh is not None or self._field is not None

    def close(self) -> None:
        """Close a file left open by a body that ended early."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_form(content_type: str | None, content_length: str | None, body: AsyncIterator[bytes],
                       dest: Path, limits: UploadLimits) -> ReceivedForm:
    """Stream a ``multipart/form-data`` body into ``dest`` (files) and memory (text fields)."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    from python_multipart.exceptions import MultipartParseError

    max_body = limits.max_upload_bytes + FORM_OVERHEAD_BYTES
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(422, f"Content-Length is not a number: {content_length!r}") from None
        if declared > max_body:
            raise UploadError(413, f"upload of {declared:,} bytes is larger than the limit of "
                                   f"{limits.max_upload_bytes:,} bytes")
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(422, "send the exam as multipart/form-data with one or more 'files' fields")
    dest.mkdir(parents=True, exist_ok=True)
    writer = _FormWriter(dest, limits)
    callbacks = {name: getattr(writer, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > max_body:
                raise UploadError(413, f"upload is larger than the limit of {limits.max_upload_bytes:,} bytes")
            parser.write(chunk)
        parser.finalize()
        if writer.in_part:
            raise UploadError(422, "multipart body ended in the middle of a part")
    except MultipartParseError as exc:
        raise UploadError(422, f"malformed multipart body ({exc})") from None
    finally:
        writer.close()
    writer.form.body_bytes = total
    if sum(f.size for f in writer.form.files) > limits.max_upload_bytes:
        raise UploadError(413, f"files add up to more than {limits.max_upload_bytes:,} bytes")
    return writer.form


# --------------------------------------------------------------------------- zips


def is_zip(path: Path) -> bool:
    """True for a file that starts with a zip signature (whatever its suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False


def _skipped_member(name: str) -> bool:
    """Folders and files that archivers add (macOS resource forks, hidden files): not extracted."""
    parts = [p for p in name.split("/") if p]
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def extract_zip(archive: Path, dest: Path, limits: UploadLimits, label: str) -> list[ReceivedFile]:
    """Unpack ``archive`` into ``dest`` after checking every entry (see the module docstring)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(422, f"{label}: not a readable zip file ({exc})") from None
    root = dest.resolve()
    with zf:
        members = []
        seen: set[str] = set()
        for info in zf.infolist():
            name = info.filename.replace("\\", "/")
            if "\x00" in name or any(ord(c) < 32 for c in name):
                raise UploadError(422, f"{label}: entry {name!r} has control characters in its name")
            if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
                raise UploadError(422, f"{label}: entry {name!r} would be written outside the upload folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(422, f"{label}: entry {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise UploadError(422, f"{label}: entry {name!r} is encrypted")
            if info.is_dir() or _skipped_member(name):
                continue
            target = (root / name).resolve()
            if not target.is_relative_to(root) or target == root:
                raise UploadError(422, f"{label}: entry {name!r} would be written outside the upload folder")
            key = str(target).lower()  # case-insensitive file systems would merge these
            if key in seen:
                raise UploadError(422, f"{label}: entry {name!r} appears twice")
            seen.add(key)
            members.append((info, name, target))
        if len(members) > limits.max_files:
            raise UploadError(413, f"{label}: {len(members)} files, more than the limit of {limits.max_files}")
        declared = sum(i.file_size for i, _, _ in members)
        if declared > limits.max_unzipped_bytes:
            raise UploadError(413, f"{label}: unpacks to {declared:,} bytes, more than the limit of "
                                   f"{limits.max_unzipped_bytes:,} bytes")
        out: list[ReceivedFile] = []
        written_total = 0
        for info, name, target in members:
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            written = 0
            try:
                with zf.open(info) as src, open(target, "xb") as dst:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        written_total += len(chunk)
                        # A forged directory can understate sizes; the stream is the truth.
                        if written > info.file_size or written_total > limits.max_unzipped_bytes:
                            raise UploadError(413, f"{label}: entry {name!r} unpacks to more bytes than declared "
                                                   "(zip bomb?)")
                        dst.write(chunk)
                        digest.update(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
                raise UploadError(422, f"{label}: entry {name!r} cannot be unpacked ({exc})") from None
            except RuntimeError as exc:  # zipfile raises it for passwords and unsupported features
                raise UploadError(422, f"{label}: entry {name!r} cannot be unpacked ({exc})") from None
            out.append(ReceivedFile(name, written, digest.hexdigest()))
    return out


# --------------------------------------------------------------------------- mapping


class MappingEntry(BaseModel):
    """Where one uploaded file belongs: its view and (optionally) its exam."""

    model_config = ConfigDict(extra="forbid")

    view: str
    exam_id: Optional[str] = None

    @field_validator("view")
    @classmethod
    def _view(cls, value: str) -> str:
        v = value.strip().upper().replace("_", "-")
        if v not in ALL_VIEWS:
            raise ValueError(f"view must be one of {', '.join(ALL_VIEWS)}, got {value!r}")
        return v


class UploadMapping(BaseModel):
    """The optional ``mapping`` form field: ``{"file name": "L-CC" | {"view": "L-CC", "exam_id": "A1"}}``."""

    files: dict[str, Union[MappingEntry, str]]

    @field_validator("files")
    @classmethod
    def _entries(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: MappingEntry(view=v) if isinstance(v, str) else v for k, v in value.items()}


def parse_mapping(text: str) -> dict[str, MappingEntry]:
    """Validate the JSON ``mapping`` field (422 naming the problem)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UploadError(422, f"mapping: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise UploadError(422, 'mapping: expected a JSON object {"file name": "L-CC", ...}')
    try:
        return UploadMapping(files=raw).files  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "/".join(str(p) for p in err.get("loc", ())[1:2])
        raise UploadError(422, f"mapping: {where}: {err.get('msg')}") from None


def write_mapping_csv(mapping: dict[str, MappingEntry], files: list[ReceivedFile], default_exam: str,
                      path: Path) -> None:
    """Write ``mapping`` as the CSV :func:`build_manifest` reads (names checked against the upload)."""
    names = {f.name for f in files}
    by_base: dict[str, list[str]] = {}
    for n in names:
        by_base.setdefault(n.rsplit("/", 1)[-1], []).append(n)
    rows = []
    for key, entry in mapping.items():
        if key in names:
            name = key
        elif len(by_base.get(key, [])) == 1:
            name = by_base[key][0]
        else:
            raise UploadError(422, f"mapping names {key!r}, which is not among the uploaded files")
        rows.append((name, entry.exam_id or default_exam, entry.view))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "exam_id", "view"])
        w.writerows(rows)


# --------------------------------------------------------------------------- images and exams


def check_pixels(upload_dir: Path, files: list[ReceivedFile], max_pixels: int) -> None:
    """413 for an image whose header declares more than ``max_pixels`` pixels per frame."""
    from breastscreen.data.readers import RASTER_SUFFIXES, is_dicom_file, raster_header, read_dicom_header

    for f in files:
        path = upload_dir / f.name
        try:
            if path.suffix.lower() in RASTER_SUFFIXES:
                rows, cols, _ = raster_header(path)
            elif is_dicom_file(path):
                ds = read_dicom_header(path)
                rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            else:
                continue
        except BreastscreenError as exc:
            if "decompression" in str(exc).lower():
                raise UploadError(413, f"{f.name}: image larger than the pixel limit ({max_pixels:,})") from None
            continue  # unreadable headers are reported by the exam builder with their reason
        if rows * cols > max_pixels:
            raise UploadError(413, f"{f.name}: image is {rows}x{cols} = {rows * cols:,} pixels, above the limit "
                                   f"of {max_pixels:,}")


def find_exams(upload_dir: Path, mapping_csv: Path | None) -> list[Exam]:
    """Exams in the upload folder, exactly as ``breastscreen predict`` finds them; 422 for any unusable file."""
    from breastscreen.data.build import build_manifest
    from breastscreen.inference.predict import load_inputs

    try:
        if mapping_csv is None:
            exams, exam_errors, unassigned = load_inputs(upload_dir)
            problems = [(f"exam {eid}", why) for eid, why in exam_errors] + list(unassigned)
        else:
            result = build_manifest(upload_dir, mapping_csv=mapping_csv)
            exams, problems = result.exams, list(result.problems)
    except BreastscreenError as exc:
        raise UploadError(422, client_message(str(exc), upload_dir)) from None
    if problems:
        text = "; ".join(f"{client_message(p, upload_dir)}: {client_message(why, upload_dir)}" for p, why in problems)
        raise UploadError(422, text)
    if not exams:
        raise UploadError(422, "no image in the upload (send DICOM or PNG/TIFF files, or one zip of them)")
    return exams


def check_modality(exams: list[Exam], modality: Modality, model_name: str, upload_dir: Path) -> None:
    """422 when an exam is of another modality than the loaded model reads."""
    what = {Modality.MG: "mammograms", Modality.US: "ultrasound images"}
    for exam in exams:
        if exam.modality is not modality:
            view, image = next(iter(exam.iter_images()))
            name = client_message(image.path, upload_dir)
            raise UploadError(422, f"{name}: {view} is {what.get(exam.modality, exam.modality.value)}, but the "
                                   f"model {model_name} reads {what.get(modality, modality.value)}")


def discard(path: Path) -> None:
    """Remove a job folder (upload refused or job deleted), ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)
