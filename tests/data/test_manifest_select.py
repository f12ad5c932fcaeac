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
    ids.write_text("# held-out cases\ncase5\n\n case1  # trailing comment\n")
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
