"""`breastscreen manifest select`: subsets that read like the original, wherever they are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import read_manifest, roots_file, write_manifest
from breastscreen.data.select import Condition, read_ids, select_exams
from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality
from breastscreen.errors import ManifestError


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """Six one-image ultrasound exams whose images lie outside the manifest's folder (as after `adapt`)."""
    images = tmp_path / "dataset" / "Images"
    images.mkdir(parents=True)
    exams = []
    for k in range(6):
        path = images / f"img_{k}.png"
        Image.fromarray(np.full((8, 8), 10 * k, np.uint8)).save(path)
        exams.append(Exam(exam_id=f"case{k}", modality=Modality.US, views={"U-US": [ImageRef(path=str(path))]},
                          labels={"U": BreastLabel(benign=int(k % 2 == 0), malignant=int(k % 2))},
                          meta={"fold": 1 + k % 3, "device": "A" if k < 3 else "B"}))
    manifest = tmp_path / "lists" / "all.jsonl"
    write_manifest(exams, manifest, roots=[tmp_path / "dataset"])
    return manifest


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["exam_id"] for line in path.read_text().splitlines()]


def test_select_a_fold_into_another_folder_keeps_every_file_readable(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "deeper" / "fold2.jsonl"
    result = CliRunner().invoke(app, ["manifest", "select", str(dataset), "--where", "meta.fold=2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "2 of 6 exams, 2 images" in result.output
    assert _ids(out) == ["case1", "case4"]  # folds 1 + k % 3 == 2, original order
    assert roots_file(out).is_file()  # without it read_manifest would refuse the dataset's paths
    original = {e.exam_id: e for e in read_manifest(dataset)}
    for exam in read_manifest(out):  # default reader: no --allow-outside-paths needed
        src = original[exam.exam_id]
        assert Path(exam.views["U-US"][0].path).resolve() == Path(src.views["U-US"][0].path).resolve()
        assert exam.labels == src.labels and exam.meta == src.meta


def test_conditions_alternatives_exclude_and_ids(dataset: Path, tmp_path: Path) -> None:
    exams = read_manifest(dataset)
    base = dataset.parent
    pick = lambda *w, **kw: [e.exam_id for e in select_exams(exams, base, [Condition.parse(x) for x in w], **kw).exams]
    assert pick("meta.fold=1,3") == ["case0", "case2", "case3", "case5"]
    assert pick("meta.fold=1,3", "meta.device=B") == ["case3", "case5"]  # all conditions hold
    assert pick("labels.U.malignant=1") == ["case1", "case3", "case5"]
    assert pick("modality=US", "meta.device=A", exclude=True) == ["case3", "case4", "case5"]
    assert pick(ids=["case4", "case0"]) == ["case0", "case4"]  # manifest order, not list order
    sel = select_exams(exams, base, [], ids=["case2", "missing"])
    assert [e.exam_id for e in sel.exams] == ["case2"] and sel.unknown_ids == ["missing"]
    ids = tmp_path / "ids.txt"
    ids.write_text("# held-out cases\ncase5\n\n case1  \n")
    assert read_ids(ids) == ["case5", "case1"]


def test_bad_selections_are_one_line_errors_and_write_nothing(dataset: Path, tmp_path: Path, capsys) -> None:
    from breastscreen import cli

    exams, base = read_manifest(dataset), dataset.parent
    with pytest.raises(ManifestError, match="no exam has the field 'meta.fodl'"):
        select_exams(exams, base, [Condition.parse("meta.fodl=2")])
    with pytest.raises(ManifestError, match="no exam was selected"):
        select_exams(exams, base, [Condition.parse("meta.fold=7")])
    with pytest.raises(ManifestError, match="expected FIELD=VALUE"):
        Condition.parse("meta.fold")
    out = tmp_path / "sub.jsonl"

    def select(*args: str) -> tuple[int, str]:
        code = cli.run(["manifest", "select", str(dataset), *args])
        return code, capsys.readouterr().err

    for args in (["--where", "meta.fold=7"], [], ["--where", "=3"]):
        code, err = select("--out", str(out), *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert not out.exists()
    code, err = select("--out", str(dataset), "--where", "meta.fold=1")
    assert code == 2 and "is the input manifest" in err
    assert len(_ids(dataset)) == 6  # the input is never touched
    out.write_text("mine\n")
    code, err = select("--out", str(out), "--where", "meta.fold=1")
    assert code == 2 and "refusing to overwrite" in err and out.read_text() == "mine\n"


def test_values_compare_as_users_type_them() -> None:
    line = {"meta": {"score": 4.0, "flag": True, "tags": ["a", "b"], "none": None, "name": "x,y"}}
    assert Condition.parse("meta.score=4").matches(line) and Condition.parse("meta.score=4.0").matches(line)
    assert not Condition.parse("meta.score=5,four").matches(line)
    assert Condition.parse("meta.flag=True").matches(line) and not Condition.parse("meta.flag=1").matches(line)
    assert Condition.parse("meta.tags=b").matches(line) and not Condition.parse("meta.tags=c").matches(line)
    assert Condition.parse("meta.none=null").matches(line)
    assert not Condition.parse("meta.name=x,y").matches(line)  # commas separate alternatives (documented)


def test_ids_file_encodings_and_comments(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\ufeff# held-out cases\r\ncase#5\r\n\r\n  case1  \r\n".encode("utf-8"))
    assert read_ids(ids) == ["case#5", "case1"]  # BOM dropped, '#' inside an id kept
    ids.write_bytes("case2\ncase3\n".encode("utf-16"))
    assert read_ids(ids) == ["case2", "case3"]
    with pytest.raises(ManifestError, match="ids.txt"):
        read_ids(tmp_path / "nope" / "ids.txt")


def test_cli_ids_exclude_and_sidecars(dataset: Path, tmp_path: Path, capsys) -> None:
    from breastscreen import cli

    ids = tmp_path / "ids.txt"
    ids.write_text("case2\ncase9\n")
    beside = dataset.with_name("two.jsonl")  # beside the input: same folder, same relative paths
    assert cli.run(["manifest", "select", str(dataset), "--ids", str(ids), "--out", str(beside)]) == 0
    captured = capsys.readouterr()
    assert "1 listed id(s) not in" in captured.err and "case9" in captured.err
    assert _ids(beside) == ["case2"] and read_manifest(beside)[0].exam_id == "case2"
    # --exclude keeps the exams a condition does not hold for, those lacking the field included
    assert cli.run(["manifest", "select", str(dataset), "--where", "meta.device=A", "--exclude",
                    "--out", str(tmp_path / "b.jsonl")]) == 0
    assert _ids(tmp_path / "b.jsonl") == ["case3", "case4", "case5"]
    # ids that are all unknown: the error says so
    ids.write_text("case9\n")
    assert cli.run(["manifest", "select", str(dataset), "--ids", str(ids), "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "1 listed id(s) are not in the manifest, e.g. 'case9'" in capsys.readouterr().err
    # images inside the output's folder: no sidecar is needed or written
    inside = tmp_path / "dataset" / "sub.jsonl"
    assert cli.run(["manifest", "select", str(dataset), "--where", "meta.fold=3", "--out", str(inside)]) == 0
    assert not roots_file(inside).exists() and [e.exam_id for e in read_manifest(inside)] == ["case2", "case5"]
    # a user's file named like the sidecar is not replaced without --overwrite
    out = tmp_path / "d.jsonl"
    roots_file(out).write_text("mine")
    assert cli.run(["manifest", "select", str(dataset), "--where", "meta.fold=1", "--out", str(out)]) == 2
    assert roots_file(out).read_text() == "mine" and not out.exists()
    capsys.readouterr()
    assert cli.run(["manifest", "select", str(dataset), "--where", "meta.fold=1", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
