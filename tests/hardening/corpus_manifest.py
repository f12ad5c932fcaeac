"""Corpus family "manifest": hand-written manifest lines through `preprocess` (and `manifest check`).

A bad line is refused with its line number and field and listed in errors.csv while the good
lines of the same manifest are preprocessed (exit 1); a manifest with no usable line exits 2
naming the first refusal; whole-file problems (encoding, a malformed roots file) exit 2. Exam
ids never place a file outside the output folder, and paths never leave the manifest's folder
unless allowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from breastscreen.data.manifest import read_manifest
from breastscreen.safety import safe_name
from hardening_helpers import Case, bs, expect, phantom, png

CASES: list[Case] = []


def _image(folder: Path, name: str = "img_L-CC.png") -> str:
    png(folder / name, phantom(bits=16), dpi=(254, 254))
    return name


def good_line(exam_id: str = "good", path: str = "img_L-CC.png", **extra: Any) -> dict[str, Any]:
    line = {"exam_id": exam_id, "modality": "MG", "views": {"L-CC": [{"path": path}]}}
    line.update(extra)
    return line


def _write(folder: Path, lines: list[Any], raw: bytes | None = None) -> Path:
    path = folder / "m.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def _bad_line_run(box: Path, line: Any, pattern: str, with_good: bool) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(folder)
    lines = [good_line()] if with_good else []
    lines.append(line)
    m = _write(folder, lines)
    res = bs("preprocess", m, "--out", box / "pre", "--scale", "0.5")
    where = f"m.jsonl:{len(lines)}"
    if with_good:
        expect(res, 1, pattern)
        assert where in (box / "pre" / "errors.csv").read_text()
        assert [e.exam_id for e in read_manifest(box / "pre" / "manifest.jsonl")] == ["good"]
    else:
        expect(res, 2, f"no usable exam .*{where}.*{pattern}")
    res = bs("manifest", "check", m, "--no-files")
    expect(res, 2, f"{where}.*{pattern}")


def bad_line(name: str, line: Any, pattern: str, alone: bool = True) -> None:
    """A manifest line that must be refused with ``pattern``: alone (exit 2) and next to a good line (exit 1)."""
    if alone:
        CASES.append(Case("manifest", f"{name}-alone", "error", lambda box: _bad_line_run(box, line, pattern, False)))
    CASES.append(Case("manifest", f"{name}-with-good", "error", lambda box: _bad_line_run(box, line, pattern, True)))


bad_line("not-json", "{exam_id: 1", "not valid JSON")
bad_line("json-array", [1, 2, 3], "is not of type 'object'")
bad_line("json-string", "\"just text\"", "is not of type 'object'")
bad_line("nan-literal", '{"exam_id": "n", "modality": "MG", "views": {}, "age": NaN}', "NaN is not allowed")
bad_line("infinity-literal", '{"exam_id": "n", "modality": "MG", "views": {}, "age": Infinity}', "Infinity is not allowed")
bad_line("overflow-number", '{"exam_id": "n", "modality": "MG", "views": {}, "age": 1e400}', "too large")
bad_line("meta-nested-100000", '{"exam_id": "n", "modality": "MG", "views": {}, "meta": ' + "[" * 100000 + "]" * 100000 + "}",
         "nested 100001 levels deep")
bad_line("line-9mb", json.dumps(good_line("big", meta={"x": "a" * (9 * 1024 * 1024)})), "above the limit")
bad_line("empty-exam-id", good_line(""), "field 'exam_id'")
bad_line("exam-id-newline", good_line("a\nb"), "field 'exam_id'")
bad_line("exam-id-nul", good_line("a\u0000b"), "field 'exam_id'")
bad_line("exam-id-too-long", good_line("x" * 2000), "field 'exam_id'")
bad_line("unknown-view", {"exam_id": "v", "modality": "MG", "views": {"L-XX": [{"path": "img_L-CC.png"}]}},
         "field 'views'")
bad_line("modality-ct", good_line("c", modality="CT"), "field 'modality'")
bad_line("extra-field", good_line("e", colour="red"), "Additional properties")
bad_line("path-escapes", good_line("esc", path="../outside.png"), "outside the allowed folder")
bad_line("path-absolute", good_line("abs", path="/etc/passwd"), "outside the allowed folder")
bad_line("mask-escapes", {"exam_id": "mk", "modality": "MG", "views": {"L-CC": [
    {"path": "img_L-CC.png", "masks": [{"path": "../../secret.png", "label": "benign"}]}]}}, "masks/0/path")
bad_line("breast-mask-path-escapes", {"exam_id": "bm", "modality": "MG", "views": {"L-CC": [
    {"path": "img_L-CC.png", "preprocessing": {"breast_mask_path": "/etc/shadow"}}]}}, "breast_mask_path")
for label, sp in [("inf-as-1e400", None), ("1e308", [1e308, 1e308]), ("1e-9", [1e-9, 1e-9]), ("100mm", [100, 100]),
                  ("negative", [-0.1, -0.1]), ("one-value", [0.1]), ("text", ["a", "b"])]:
    if sp is None:
        bad_line(f"pixel-spacing-{label}", '{"exam_id": "s", "modality": "MG", "views": {"L-CC": [{"path": '
                 '"img_L-CC.png", "pixel_spacing": [1e400, 1e400]}]}}', "too large")
    else:
        bad_line(f"pixel-spacing-{label}", {"exam_id": "s", "modality": "MG",
                                            "views": {"L-CC": [{"path": "img_L-CC.png", "pixel_spacing": sp}]}},
                 "pixel_spacing")
for label, age in [("negative", -1), ("200", 200), ("text", "old")]:
    bad_line(f"age-{label}", good_line("a", age=age), "field 'age'")
bad_line("study-date-month-13", good_line("d", study_date="2020-13-01"), "not a calendar date")
bad_line("study-date-feb-30", good_line("d", study_date="2021-02-30"), "not a calendar date")
bad_line("study-date-format", good_line("d", study_date="01/02/2020"), "field 'study_date'")
bad_line("birads-7", good_line("b", birads="7"), "field 'birads'")
bad_line("label-2", good_line("l", labels={"L": {"benign": 2}}), "field 'labels")
bad_line("label-u-on-mammo", good_line("u", labels={"U": {"benign": 1}}), "ultrasound exams only")
for label, rec, field in [("scale-text", {"scale": "abc"}, "scale"), ("scale-zero", {"scale": 0}, "scale"),
                          ("scale-negative", {"scale": -1}, "scale"), ("window-text", {"window": ["a", "b", "c", "d"]},
                                                                       "window"),
                          ("crop-box-3", {"crop_box": [1, 2, 3]}, "crop_box"),
                          ("output-shape-zero", {"output_shape": [0, 0]}, "output_shape"),
                          ("output-shape-huge", {"output_shape": [10 ** 9, 10 ** 9]}, "output_shape"),
                          ("flipped-text", {"flipped": "yes"}, "flipped"), ("as-list", [1, 2], "preprocessing")]:
    bad_line(f"preprocessing-{label}", {"exam_id": "p", "modality": "MG",
                                        "views": {"L-CC": [{"path": "img_L-CC.png", "preprocessing": rec}]}}, field)
bad_line("frame-negative", {"exam_id": "f", "modality": "MG", "views": {"L-CC": [{"path": "img_L-CC.png", "frame": -1}]}},
         "frame")
bad_line("frame-text", {"exam_id": "f", "modality": "MG", "views": {"L-CC": [{"path": "img_L-CC.png", "frame": "a"}]}},
         "frame")
bad_line("roi-negative", {"exam_id": "r", "modality": "MG", "views": {"L-CC": [
    {"path": "img_L-CC.png", "rois": [{"box": [-5, 0, 10, 10], "label": "benign"}]}]}}, "rois")
bad_line("duplicate-id", good_line("good"), "repeats line 1", alone=False)


def _file_run(box: Path, raw: Callable[[Path], bytes], code: int, pattern: str) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(folder)
    m = folder / "m.jsonl"
    m.write_bytes(raw(folder))
    res = bs("preprocess", m, "--out", box / "pre", "--scale", "0.5")
    expect(res, code, pattern)


def whole_file(name: str, raw: Callable[[Path], bytes], code: int, pattern: str, kind: str = "error") -> None:
    """A manifest file as a whole (encoding, emptiness ...) with the expected exit status and message."""
    CASES.append(Case("manifest", name, kind, lambda box: _file_run(box, raw, code, pattern)))


GOOD = (json.dumps(good_line()) + "\n").encode()
whole_file("utf16-bom", lambda f: GOOD.decode().encode("utf-16"), 0, "preprocessed 1/1", kind="accepted")
whole_file("utf8-bom", lambda f: b"\xef\xbb\xbf" + GOOD, 0, "preprocessed 1/1", kind="accepted")
whole_file("crlf", lambda f: GOOD.replace(b"\n", b"\r\n"), 0, "preprocessed 1/1", kind="accepted")
whole_file("latin1", lambda f: json.dumps(good_line("caf\u00e9"), ensure_ascii=False).encode("latin-1") + b"\n", 2,
           "not UTF-8 text")
whole_file("utf16-no-bom", lambda f: GOOD.decode().encode("utf-16-le"), 2, "NUL bytes .*UTF-16 text without a byte-order mark")
whole_file("empty", lambda f: b"", 2, "no usable exam .*empty")
whole_file("blank-lines", lambda f: b"\n\n   \n", 2, "no usable exam .*empty")
whole_file("binary", lambda f: np.random.default_rng(4).bytes(3000), 2, "not UTF-8|no usable exam")
whole_file("roots-file-malformed", lambda f: (f / "m.roots.json").write_text("[") and GOOD, 2, "unreadable roots file")
whole_file("roots-file-relative", lambda f: (f / "m.roots.json").write_text('{"roots": ["rel"]}') and GOOD, 2,
           "must be a list of absolute folder paths")


def _fifo_manifest(box: Path) -> None:
    os.mkfifo(box / "m.jsonl")
    expect(bs("preprocess", box / "m.jsonl", "--out", box / "pre"), 2, r"not a regular file \(a FIFO")


def _folder_manifest(box: Path) -> None:
    (box / "m.jsonl").mkdir()
    expect(bs("preprocess", box / "m.jsonl", "--out", box / "pre"), 2, r"not a regular file \(a folder")


CASES.append(Case("manifest", "manifest-is-fifo", "error", _fifo_manifest))
CASES.append(Case("manifest", "manifest-is-folder", "error", _folder_manifest))
CASES.append(Case("manifest", "manifest-missing", "error",
                  lambda box: expect(bs("preprocess", box / "nope.jsonl", "--out", box / "pre"), 2, "not found")))


# --------------------------------------------------------------------------- paths and exam ids


def _outside_allowed(box: Path) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(box, "outside_L-CC.png")
    m = _write(folder, [good_line("o", path="../outside_L-CC.png")])
    expect(bs("preprocess", m, "--out", box / "pre", "--scale", "0.5"), 2, "outside the allowed folder")
    expect(bs("preprocess", m, "--out", box / "pre2", "--scale", "0.5", "--allow-outside-paths"), 0)


def _symlink_escape(box: Path) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(box, "outside_L-CC.png")
    os.symlink(box / "outside_L-CC.png", folder / "link_L-CC.png")
    m = _write(folder, [good_line("o", path="link_L-CC.png")])
    expect(bs("preprocess", m, "--out", box / "pre", "--scale", "0.5"), 2, "outside the allowed folder")


def _roots_file_allows(box: Path) -> None:
    folder = box / "data"
    folder.mkdir()
    (box / "imgs").mkdir()
    _image(box / "imgs")
    (folder / "m.roots.json").write_text(json.dumps({"roots": [str(box / "imgs")]}))
    m = _write(folder, [good_line("o", path="../imgs/img_L-CC.png")])
    expect(bs("preprocess", m, "--out", box / "pre", "--scale", "0.5"), 0)


def _build_writes_roots(box: Path) -> None:
    (box / "scan").mkdir()
    _image(box / "scan", "e1_L-CC.png")
    expect(bs("manifest", "build", box / "scan", "--out", box / "elsewhere" / "m.jsonl"), 0)
    roots = json.loads((box / "elsewhere" / "m.roots.json").read_text())["roots"]
    assert roots == [str((box / "scan").resolve())]
    expect(bs("preprocess", box / "elsewhere" / "m.jsonl", "--out", box / "pre", "--scale", "0.5"), 0)


def _check_names(box: Path, ids: list[str]) -> None:
    images = sorted(p.name for p in (box / "pre" / "images").glob("*.png") if "mask" not in p.name)
    assert images == sorted(f"{safe_name(i)}_L-CC.png" for i in ids), images


def _id_run(box: Path, exam_id: str) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(folder)
    m = _write(folder, [good_line(exam_id)])
    cwd = box / "cwd" / "a" / "b"
    expect(bs("preprocess", m, "--out", "out", "--scale", "0.5", cwd=cwd), 0)
    # Everything the command wrote is inside OUT; nothing appeared next to the inputs or at the id's path.
    assert not [p for p in box.rglob("*") if p.is_file() and (cwd / "out") not in p.parents
                and p.parent != folder], list(box.rglob("*"))
    assert not Path("/tmp/bs-corpus-escape_L-CC.png").exists() and not Path("/tmp/bs-corpus-escape").exists()
    written = [p for p in (cwd / "out").rglob("*") if p.is_file()]
    assert all((cwd / "out") in p.resolve().parents for p in written)
    assert read_manifest(cwd / "out" / "manifest.jsonl")[0].exam_id == exam_id
    images = [p.name for p in (cwd / "out" / "images").glob("*_L-CC.png")]
    assert images == [f"{safe_name(exam_id)}_L-CC.png"], images


for label, exam_id in [("dotdot", "../../ESCAPED"), ("absolute", "/tmp/bs-corpus-escape"), ("slash", "a/b"),
                       ("backslash", "..\\..\\x"), ("dot", "."), ("dotdot-only", ".."), ("tilde", "~root"),
                       ("unicode", "Zoë-ß"), ("spaces", "exam one"), ("long", "x" * 600), ("percent", "%2e%2e%2f"),
                       ("windows-device", "CON"), ("dash-start", "-rf")]:
    CASES.append(Case("manifest", f"exam-id-{label}", "accepted", lambda box, i=exam_id: _id_run(box, i)))


def _collision(box: Path, ids: list[str], clash: bool) -> None:
    folder = box / "data"
    folder.mkdir()
    _image(folder)
    m = _write(folder, [good_line(i) for i in ids])
    res = bs("preprocess", m, "--out", box / "pre", "--scale", "0.5")
    if clash:
        expect(res, 1, f"exam ids '{ids[0]}' and '{ids[1]}' would share the file name")
        assert [e.exam_id for e in read_manifest(box / "pre" / "manifest.jsonl")] == [ids[0]]
    else:
        expect(res, 0)
        _check_names(box, ids)


CASES.append(Case("manifest", "ids-p_1-p-1", "accepted", lambda box: _collision(box, ["p_1", "p-1"], False)))
CASES.append(Case("manifest", "ids-a-b-slash", "accepted", lambda box: _collision(box, ["a/b", "a_b", "a-b"], False)))
CASES.append(Case("manifest", "ids-case-only", "error", lambda box: _collision(box, ["Exam1", "exam1"], True)))
CASES.append(Case("manifest", "paths-outside-allowed-by-flag", "accepted", _outside_allowed))
CASES.append(Case("manifest", "path-symlink-escapes", "error", _symlink_escape))
CASES.append(Case("manifest", "roots-file-allows", "accepted", _roots_file_allows))
CASES.append(Case("manifest", "build-writes-roots-file", "accepted", _build_writes_roots))


def _image_is(kind: str) -> Callable[[Path], None]:
    def run(box: Path) -> None:
        folder = box / "data"
        folder.mkdir()
        target = folder / "img_L-CC.png"
        if kind == "fifo":
            os.mkfifo(target)
        else:
            target.mkdir()
        m = _write(folder, [good_line()])
        expect(bs("preprocess", m, "--out", box / "pre", "--scale", "0.5"), 2, "not a regular file")
    return run


CASES.append(Case("manifest", "image-is-fifo", "error", _image_is("fifo")))
CASES.append(Case("manifest", "image-is-folder", "error", _image_is("folder")))
CASES.append(Case("manifest", "image-missing", "error", lambda box: _missing_image(box)))


def _missing_image(box: Path) -> None:
    folder = box / "data"
    folder.mkdir()
    m = _write(folder, [good_line()])
    expect(bs("preprocess", m, "--out", box / "pre", "--scale", "0.5"), 2, "file not found")
    expect(bs("manifest", "check", m), 1, "do not exist")
