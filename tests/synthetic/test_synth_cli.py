"""``breastscreen synth`` commands."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from breastscreen.data.manifest import read_manifest
from breastscreen.synthetic.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """test root"""

    return app


def test_synth_mammo_and_us_write_cohorts(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(_app(), ["synth", "mammo", "--n-exams", "2", "--out", str(tmp_path / "mg"), "--seed", "1", "--scale", "0.05"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 exams, 8 images" in res.output and str(tmp_path / "mg") in res.output
    assert len(read_manifest(tmp_path / "mg" / "manifest.jsonl")) == 2
    res = runner.invoke(_app(), ["synth", "us", "--n-exams", "2", "--out", str(tmp_path / "us"), "--max-images", "2"])
    assert res.exit_code == 0, res.output
    exams = read_manifest(tmp_path / "us" / "manifest.jsonl")
    assert len(exams) == 2 and all(e.modality.value == "US" for e in exams)


def test_synth_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    res = CliRunner().invoke(_app(), ["synth", "mammo", "--n-exams", "1", "--out", str(tmp_path), "--scale", "0.05"])
    assert res.exit_code != 0
    assert "not empty" in str(res.exception)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "manifest.jsonl").exists()
