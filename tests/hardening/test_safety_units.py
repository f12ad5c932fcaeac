"""Unit tests of the guards: safe names, confinement, regular files, JSON limits, output folders, the CLI handler."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from breastscreen.errors import BreastscreenError
from breastscreen.outdir import (
    MARKER_NAME,
    OutputDirError,
    check_output_owner,
    claim_output_dir,
    error_log_path,
    remove_stale_temp_files,
)
from breastscreen.safety import (
    PathOutsideError,
    UnsafeNameError,
    assign_names,
    check_regular_file,
    confine,
    decode_text,
    json_depth,
    loads_json,
    safe_name,
    unique_names,
)

SAFE = re.compile(r"^[A-Za-z0-9_\-.~]+$")


def test_safe_names_are_single_components_and_distinct() -> None:
    rng = random.Random(0)
    alphabet = "ab_-./\\~%:é\u0000 \n*?<>|"
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)}
    ids |= {"..", ".", "../../x", "/etc/passwd", "p_1", "p-1", "x" * 500, "x" * 501}
    names = {i: safe_name(i) for i in ids}
    assert len(set(names.values())) == len(ids)  # reversible encoding: no two ids share a name
    for i, n in names.items():
        assert SAFE.match(n) and not n.startswith(".") and not n.endswith(".") and len(n) <= 120, (i, n)
    assert safe_name("p_1") == "p_1" and safe_name("ACC-12.3") == "ACC-12.3"
    assert "/" not in safe_name("../../x") and safe_name("~") == "~7E"
    with pytest.raises(ValueError):
        safe_name("")


def test_heatmap_files_of_p_1_and_p_dash_1_differ() -> None:
    from breastscreen.data.heatmaps import heatmap_filename

    assert heatmap_filename("p_1", "L-CC", 0) != heatmap_filename("p-1", "L-CC", 0)
    assert "/" not in heatmap_filename("../../x", "L-CC", 0)


def test_names_differing_in_case_collide_and_name_both() -> None:
    names, errors = assign_names(["A1", "b", "a1"])
    assert names == {"A1": "A1", "b": "b"}
    assert "'A1' and 'a1'" in errors["a1"]
    with pytest.raises(UnsafeNameError, match="'A1' and 'a1'"):
        unique_names(["A1", "a1"])


def test_confine_follows_links(tmp_path: Path) -> None:
    inside = tmp_path / "root"
    inside.mkdir()
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", inside / "link.txt")
    assert confine(inside / "a.png", [inside], "p") == str(inside / "a.png")
    for bad in (inside / "link.txt", inside / ".." / "secret.txt", Path("/etc/passwd")):
        with pytest.raises(PathOutsideError, match="outside the allowed folder"):
            confine(bad, [inside], "line 1: path", "pass --allow-outside-paths")


def test_only_regular_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    os.symlink("/dev/zero", tmp_path / "zero")
    assert check_regular_file(tmp_path / "file").st_size == 1
    for name, what in (("fifo", "FIFO"), ("dir", "folder"), ("zero", "character device"), ("missing", "not found")):
        with pytest.raises(BreastscreenError, match=what):
            check_regular_file(tmp_path / name)
    with pytest.raises(BreastscreenError, match="outside the folder"):
        check_regular_file(tmp_path / "zero", root=tmp_path)


def test_json_limits() -> None:
    assert loads_json('{"a": [1, 2.5, "x["]}', "t") == {"a": [1, 2.5, "x["]}
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3
    for text, msg in (("[" * 65 + "]" * 65, "nested 65 levels"), ('{"a": NaN}', "NaN is not allowed"),
                      ('{"a": -Infinity}', "Infinity is not allowed"), ("[1e999]", "too large"),
                      ('{"a": ', "not valid JSON"), ('"' + "x" * 200 + '"', "above the limit")):
        with pytest.raises(ValueError, match=msg):
            loads_json(text, "t", max_bytes=150)


def test_decode_text() -> None:
    assert decode_text("é\n".encode("utf-16"), "f") == "é\n"
    assert decode_text(b"\xef\xbb\xbfab", "f") == "ab"
    with pytest.raises(ValueError, match="byte 0xE9 on line 2"):
        decode_text(b"ok\ncaf\xe9\n", "f")


def test_output_folder_owner_and_stale_temp_files(tmp_path: Path) -> None:
    out = claim_output_dir(tmp_path / "o", "preprocess", source="x")
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["command"] == "preprocess" and marker["source"] == "x"
    assert claim_output_dir(out, "preprocess") == out  # the same command may come back
    with pytest.raises(OutputDirError, match="holds the output of `breastscreen preprocess`"):
        check_output_owner(out, "heatmaps")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        claim_output_dir(tmp_path / "f", "predict")
    (out / "images").mkdir()
    (out / "sub").mkdir()
    (out / "sub" / MARKER_NAME).write_text('{"command": "heatmaps"}')
    dead = out / "images" / ".bstmp-999999999-a.png"
    live = out / "images" / f".bstmp-{os.getpid()}-b.png"
    other_owner = out / "sub" / ".bstmp-999999999-c.npz"
    for p in (dead, live, other_owner):
        p.write_bytes(b"")
    assert remove_stale_temp_files(out) == [dead]
    assert live.exists() and other_owner.exists()
    (out / MARKER_NAME).write_text("[1]")
    with pytest.raises(OutputDirError, match="malformed output-folder marker"):
        check_output_owner(out, "preprocess")


def test_error_log_location(tmp_path: Path) -> None:
    assert error_log_path(tmp_path / "out") == tmp_path / "out" / "breastscreen-error.log"
    assert error_log_path(tmp_path / "m.jsonl") == tmp_path / "m.error.log"
    assert error_log_path(None) is None


def test_cli_handler(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from breastscreen import cli

    assert cli._out_argument(["predict", "x", "--out", "o"]) == "o"
    assert cli._out_argument(["train", "-o", "r"]) == "r" and cli._out_argument(["x", "--out=z"]) == "z"
    assert cli.run(["preprocess", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.jsonl: manifest file not found" in err

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyError("deep bug")

    monkeypatch.setattr("breastscreen.data.manifest.read_manifest", boom)
    (tmp_path / "m.jsonl").write_text("{}\n")
    assert cli.run(["preprocess", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "KeyError: 'deep bug'" in err and str(tmp_path / "o" / "breastscreen-error.log") in err
    assert "Traceback" in (tmp_path / "o" / "breastscreen-error.log").read_text()

    def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr("breastscreen.data.manifest.read_manifest", interrupted)
    assert cli.run(["preprocess", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o")]) == 130
