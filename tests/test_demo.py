"""The built-in demo runs end to end on a tiny cohort and never deletes a user's folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from breastscreen.demo import MARKER, run_demo
from breastscreen.errors import BreastscreenError


def test_demo_runs_and_reruns(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = run_demo(out, n_exams=2, seed=3, synth_scale=0.1, bootstrap=20, log=lambda _s: None)
    assert summary["exams"] == 2 and not summary["failed"]
    sheet = Image.open(summary["contact_sheet"])
    assert sheet.size[0] > 100 and sheet.size[1] > 100
    assert json.loads((out / "summary.json").read_text())["exams"] == 2
    rows = (out / "predictions" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("exam_id,left_benign,left_malignant,right_benign,right_malignant") and len(rows) == 3
    assert (out / "evaluation" / "metrics.json").is_file() and (out / "index.html").is_file()
    # A second run replaces the folder the first one made.
    run_demo(out, n_exams=2, seed=3, synth_scale=0.1, bootstrap=20, log=lambda _s: None)
    assert (out / MARKER).is_file()


def test_demo_refuses_user_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BreastscreenError, match="not made by"):
        run_demo(out, n_exams=1, seed=3, synth_scale=0.1, log=lambda _s: None)
    assert (out / "precious.txt").read_text() == "keep me"
