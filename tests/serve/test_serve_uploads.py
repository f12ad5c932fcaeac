"""Upload checks on their own: zip confinement and bombs, file names, mappings, pixel limits."""

from __future__ import annotations

import asyncio
import io
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastscreen.serve.uploads import (
    ReceivedFile,
    UploadError,
    UploadLimits,
    check_pixels,
    extract_zip,
    find_exams,
    parse_mapping,
    receive_form,
    safe_file_name,
    write_mapping_csv,
)
from serve_helpers import image_files, zip_bytes

LIMITS = UploadLimits(max_upload_bytes=10_000_000, max_files=10, max_unzipped_bytes=5_000_000, max_pixels=10**8)


def _zip(tmp_path: Path, entries: dict[str, bytes], name: str = "exam.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(zip_bytes(entries))
    return path


def _refused(status: int, fn, *args) -> str:
    with pytest.raises(UploadError) as err:
        fn(*args)
    assert err.value.status == status, str(err.value)
    return str(err.value)


@pytest.mark.parametrize("entry", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_entries_cannot_leave_the_upload_folder(tmp_path: Path, entry: str) -> None:
    archive = _zip(tmp_path, {entry: b"x"})
    dest = tmp_path / "dest"
    message = _refused(422, extract_zip, archive, dest, LIMITS, "exam.zip")
    assert "outside the upload folder" in message and "exam.zip" in message
    assert not (tmp_path / "evil.png").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


def test_zip_symlink_entries_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    archive = tmp_path / "exam.zip"
    archive.write_bytes(buf.getvalue())
    assert "symbolic link" in _refused(422, extract_zip, archive, tmp_path / "dest", LIMITS, "exam.zip")


def test_zip_bomb_refused_from_its_directory_before_extracting(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {"a_L-CC.png": b"\0" * 6_000_000})
    assert archive.stat().st_size < 100_000
    dest = tmp_path / "dest"
    assert "unpacks to" in _refused(413, extract_zip, archive, dest, LIMITS, "exam.zip")
    assert not dest.exists() or not any(dest.iterdir())


def test_zip_with_too_many_entries_is_413(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {f"f{i}_L-CC.png": b"x" for i in range(11)})
    assert "more than the limit of 10" in _refused(413, extract_zip, archive, tmp_path / "d", LIMITS, "exam.zip")


def test_zip_that_understates_its_sizes_is_stopped(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {"a_L-CC.png": b"\0" * 200_000})
    data = bytearray(archive.read_bytes())
    # Forge both size fields (local header offset 22, central directory offset 24) to 1 KB.
    data[22:26] = struct.pack("<I", 1000)
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24: cd + 28] = struct.pack("<I", 1000)
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(UploadError) as err:
        extract_zip(archive, dest, LIMITS, "exam.zip")
    assert err.value.status in (413, 422)
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) if dest.exists() else 0
    assert written <= 1000


def test_zip_folders_kept_and_archiver_litter_skipped(tmp_path: Path) -> None:
    archive = _zip(tmp_path, {"exam/a_L-CC.png": b"1", "__MACOSX/exam/._a_L-CC.png": b"2", "exam/.DS_Store": b"3"})
    files = extract_zip(archive, tmp_path / "dest", LIMITS, "exam.zip")
    assert [f.name for f in files] == ["exam/a_L-CC.png"]
    assert (tmp_path / "dest" / "exam" / "a_L-CC.png").read_bytes() == b"1"


def test_not_a_zip_is_422(tmp_path: Path) -> None:
    bad = tmp_path / "exam.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    assert "not a readable zip" in _refused(422, extract_zip, bad, tmp_path / "d", LIMITS, "exam.zip")


@pytest.mark.parametrize("raw,expected", [("a_L-CC.png", "a_L-CC.png"), ("C:\\scans\\a_L-CC.png", "a_L-CC.png"),
                                          ("../../a_R-CC.png", "a_R-CC.png")])
def test_file_names_lose_their_folders(raw: str, expected: str) -> None:
    assert safe_file_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "..", ".hidden.png", "a\x01.png", "dir/"])
def test_unusable_file_names_are_422(raw: str) -> None:
    _refused(422, safe_file_name, raw)


def _body(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _receive(body: bytes, dest: Path, limits: UploadLimits = LIMITS, declared: bool = True):
    async def chunks():
        for i in range(0, len(body), 1000):
            yield body[i: i + 1000]

    return asyncio.run(receive_form("multipart/form-data; boundary=XyZ", str(len(body)) if declared else None,
                                    chunks(), dest, limits))


def test_multipart_body_streams_files_to_disk_with_hashes(tmp_path: Path) -> None:
    form = _receive(_body([("files", "a_L-CC.png", b"abc" * 1000), ("mapping", None, b"{}")]), tmp_path / "up")
    assert [(f.name, f.size) for f in form.files] == [("a_L-CC.png", 3000)]
    assert (tmp_path / "up" / "a_L-CC.png").read_bytes() == b"abc" * 1000
    assert len(form.files[0].sha256) == 64 and form.fields == {"mapping": "{}"}


def test_multipart_limits_are_413_even_without_content_length(tmp_path: Path) -> None:
    small = UploadLimits(max_upload_bytes=1000, max_files=2, max_unzipped_bytes=1000, max_pixels=100)
    big = _body([("files", "a_L-CC.png", b"x" * 200_000)])
    with pytest.raises(UploadError) as err:
        _receive(big, tmp_path / "a", small, declared=False)
    assert err.value.status == 413
    many = _body([("files", f"{i}_L-CC.png", b"x") for i in range(3)])
    with pytest.raises(UploadError) as err:
        _receive(many, tmp_path / "b", small)
    assert err.value.status == 413 and "more than 2 files" in str(err.value)


def test_multipart_unknown_field_and_wrong_file_field_are_422(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="unknown form field 'evil'") as err:
        _receive(_body([("evil", None, b"1")]), tmp_path / "a")
    assert err.value.status == 422
    with pytest.raises(UploadError, match="send files as 'files'"):
        _receive(_body([("image", "a.png", b"1")]), tmp_path / "b")


def test_pixel_limit_is_read_from_the_header(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((300, 200), np.uint8)).save(tmp_path / "a_L-CC.png")
    check_pixels(tmp_path, [ReceivedFile("a_L-CC.png", 1, "")], 60_000)
    message = _refused(413, check_pixels, tmp_path, [ReceivedFile("a_L-CC.png", 1, "")], 59_999)
    assert "a_L-CC.png" in message and "300x200" in message and str(tmp_path) not in message


def test_mapping_assigns_views_to_any_file_names(tmp_path: Path, mammo_folder: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    files = []
    mapping = {}
    for i, src in enumerate(image_files(mammo_folder)):
        name = f"image{i}.png"
        (upload / name).write_bytes(src.read_bytes())
        files.append(ReceivedFile(name, 0, ""))
        mapping[name] = src.stem.rsplit("_", 1)[1].lower().replace("-", "_")
    parsed = parse_mapping(__import__("json").dumps(mapping))
    write_mapping_csv(parsed, files, "study-7", tmp_path / "mapping.csv")
    exams = find_exams(upload, tmp_path / "mapping.csv")
    assert [e.exam_id for e in exams] == ["study-7"]
    assert sorted(exams[0].views) == ["L-CC", "L-MLO", "R-CC", "R-MLO"]


@pytest.mark.parametrize("text,problem", [("not json", "not valid JSON"), ("[]", "JSON object"),
                                          ('{"a.png": "X-CC"}', "view must be one of"),
                                          ('{"a.png": {"view": "L-CC", "side": "L"}}', "a.png")])
def test_bad_mappings_are_422(text: str, problem: str) -> None:
    assert problem in _refused(422, parse_mapping, text)


def test_mapping_of_a_file_not_sent_is_422(tmp_path: Path) -> None:
    parsed = parse_mapping('{"missing.png": "L-CC"}')
    assert "missing.png" in _refused(422, write_mapping_csv, parsed, [ReceivedFile("a.png", 1, "")], "e",
                                     tmp_path / "m.csv")
