"""Manifest builder: DICOM tags, PNG names, masks, mapping/labels CSVs, problem reports, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.build import build_manifest
from breastscreen.data.manifest import read_manifest
from breastscreen.errors import ManifestError
from data_dicom_factory import CT_SOP_CLASS, code_item, make_dicom

PIX = np.zeros((16, 12), np.uint16)


def _mg_study(folder: Path, exam: str, **extra) -> str:
    uid = generate_uid()
    for side in "LR":
        for view in ("CC", "MLO"):
            make_dicom(
                folder / f"{exam}_{side}{view}.dcm", PIX, StudyInstanceUID=uid, AccessionNumber=exam,
                ImageLaterality=side, ViewPosition=view, PatientID=f"pat-{exam}", StudyDate="20200131",
                PatientAge="054Y", ImagerPixelSpacing=[0.1, 0.1], PresentationIntentType="FOR PRESENTATION",
                **extra,
            )
    return uid


def _png(path: Path, value: int = 0) -> Path:
    Image.fromarray(np.full((10, 8), value, np.uint8)).save(path)
    return path


def test_dicom_study_grouped_with_tags(tmp_path: Path) -> None:
    uid = _mg_study(tmp_path / "a", "ACC1")
    res = build_manifest(tmp_path)
    assert res.problems == []
    (exam,) = res.exams
    assert exam.exam_id == "ACC1"
    assert exam.meta["study_instance_uid"] == uid
    assert exam.present_views() == ["L-CC", "R-CC", "L-MLO", "R-MLO"]
    assert exam.patient_id == "pat-ACC1" and exam.study_date == "2020-01-31" and exam.age == 54.0
    img = exam.views["L-MLO"][0]
    assert img.pixel_spacing == (0.1, 0.1) and img.meta["view_position"] == "MLO"


def test_view_code_sequence_laterality_and_text_fallbacks(tmp_path: Path) -> None:
    uid = generate_uid()
    make_dicom(tmp_path / "1.dcm", PIX, StudyInstanceUID=uid, Laterality="R",
               ViewCodeSequence=[code_item("399368009", "SCT", "medio-lateral oblique")])
    make_dicom(tmp_path / "2.dcm", PIX, StudyInstanceUID=uid, ImageLaterality="L",
               ViewCodeSequence=[code_item("R-10242", "SRT", "cranio-caudal")])
    make_dicom(tmp_path / "3.dcm", PIX, StudyInstanceUID=uid, SeriesDescription="R CC tomo-synthesized 2D")
    make_dicom(tmp_path / "4.dcm", PIX, StudyInstanceUID=uid, ImageLaterality="L", ViewPosition="XCCL")
    make_dicom(tmp_path / "5.dcm", PIX, StudyInstanceUID=uid, ImageLaterality="L", ViewPosition="ML")
    res = build_manifest(tmp_path)
    assert res.problems == []
    (exam,) = res.exams
    assert exam.exam_id == uid  # no AccessionNumber → StudyInstanceUID
    assert [Path(i.path).name for i in exam.views["R-MLO"]] == ["1.dcm"]
    assert [Path(i.path).name for i in exam.views["L-CC"]] == ["2.dcm", "4.dcm"]  # several images per view
    assert [Path(i.path).name for i in exam.views["R-CC"]] == ["3.dcm"]
    assert exam.views["R-CC"][0].meta["laterality_from"] == "SeriesDescription"
    assert exam.views["R-CC"][0].meta["view_from"] == "SeriesDescription"
    assert exam.views["R-MLO"][0].meta["view_from"] == "ViewCodeSequence"
    assert exam.views["L-MLO"][0].meta["view_position"] == "ML"


def test_bad_files_are_reported_and_good_exams_kept(tmp_path: Path) -> None:
    _mg_study(tmp_path, "E1")
    (tmp_path / "broken.dcm").write_bytes(b"DICM" + b"\0" * 300)
    (tmp_path / "notes.txt").write_text("not an image\n")
    make_dicom(tmp_path / "ct.dcm", PIX, modality="CT", sop_class=CT_SOP_CLASS)
    make_dicom(tmp_path / "nolat.dcm", PIX, ViewPosition="CC")
    make_dicom(tmp_path / "noview.dcm", PIX, ImageLaterality="L")
    make_dicom(tmp_path / "raw.dcm", PIX, ImageLaterality="L", ViewPosition="CC",
               PresentationIntentType="FOR PROCESSING")
    make_dicom(tmp_path / "sr.dcm", None, modality="MG")
    make_dicom(tmp_path / "tomo.dcm", np.zeros((3, 4, 4), np.uint16), ImageLaterality="L", ViewPosition="CC")
    _png(tmp_path / "holiday.png")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    res = build_manifest(tmp_path)
    assert [e.exam_id for e in res.exams] == ["E1"]
    reasons = {Path(p).name: r for p, r in res.problems}
    assert set(reasons) == {"broken.dcm", "notes.txt", "ct.dcm", "nolat.dcm", "noview.dcm", "raw.dcm",
                            "sr.dcm", "tomo.dcm", "holiday.png"}
    assert "not a valid DICOM" in reasons["broken.dcm"]
    assert reasons["ct.dcm"] == "non-breast modality CT"
    assert "not an image file" in reasons["notes.txt"]
    assert "unknown laterality" in reasons["nolat.dcm"]
    assert "unknown view" in reasons["noview.dcm"]
    assert "FOR PROCESSING" in reasons["raw.dcm"]
    assert "non-image" in reasons["sr.dcm"]
    assert "multi-frame" in reasons["tomo.dcm"]
    assert "file name" in reasons["holiday.png"]
    # the raw image is kept on request
    res2 = build_manifest(tmp_path, include_for_processing=True)
    assert "raw.dcm" not in {Path(p).name for p, _ in res2.problems}


def test_ultrasound_dicom_views(tmp_path: Path) -> None:
    uid = generate_uid()
    make_dicom(tmp_path / "a.dcm", PIX.astype(np.uint8), modality="US", StudyInstanceUID=uid, ImageLaterality="L")
    make_dicom(tmp_path / "b.dcm", PIX.astype(np.uint8), modality="US", StudyInstanceUID=uid)
    (exam,) = build_manifest(tmp_path).exams
    assert exam.modality.value == "US"
    assert exam.present_views() == ["L-US", "U-US"]


def test_png_names_masks_and_multiple_images(tmp_path: Path) -> None:
    for name in ("0_L-CC", "0_R_CC", "0_L-MLO", "0_R-MLO", "0_R-MLO_2", "e2_L-CC"):
        _png(tmp_path / f"{name}.png")
    _png(tmp_path / "0_L-CC_mask_malignant_1.png", 255)
    _png(tmp_path / "0_L-CC_mask_benign_2.png", 255)
    _png(tmp_path / "gone_L-CC_mask_benign_1.png", 255)
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    res = build_manifest(tmp_path)
    by_id = {e.exam_id: e for e in res.exams}
    assert sorted(by_id) == ["0", "e2"]
    e0 = by_id["0"]
    assert not e0.missing_views()
    assert [Path(i.path).name for i in e0.views["R-MLO"]] == ["0_R-MLO.png", "0_R-MLO_2.png"]
    masks = e0.views["L-CC"][0].masks
    assert [(Path(m.path).name, m.label) for m in masks] == [
        ("0_L-CC_mask_malignant_1.png", "malignant"), ("0_L-CC_mask_benign_2.png", "benign")]
    assert by_id["e2"].missing_views() == ["R-CC", "L-MLO", "R-MLO"]
    reasons = {Path(p).name: r for p, r in res.problems}
    assert set(reasons) == {"gone_L-CC_mask_benign_1.png", "manifest.jsonl"}
    assert "without its image" in reasons["gone_L-CC_mask_benign_1.png"]


def test_mapping_and_labels_csv(tmp_path: Path) -> None:
    img = tmp_path / "imgs"
    img.mkdir()
    _png(img / "scan001.png")
    _png(img / "scan002.png")
    mapping = tmp_path / "map.csv"
    mapping.write_text("path,exam_id,view,patient_id,pixel_spacing,age\n"
                       "imgs/scan001.png,X1,L-CC,p9,0.07,61\nimgs/scan002.png,X1,r_mlo,p9,0.07;0.08,61\n"
                       "imgs/missing.png,X1,R-CC,,,\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant,density\n"
                      "X1,0,1,,0,C\nNOPE,0,0,0,0,\n")
    # mapping paths are relative to the scanned folder: from imgs/ they point at imgs/imgs/...
    res = build_manifest(img, mapping_csv=mapping)
    assert res.exams == []
    assert "file name" in dict((Path(p).name, r) for p, r in res.problems)["scan001.png"]
    res = build_manifest(tmp_path, mapping_csv=mapping, labels_csv=labels)
    (exam,) = res.exams
    assert exam.exam_id == "X1" and exam.patient_id == "p9" and exam.age == 61.0 and exam.density == "C"
    assert exam.views["L-CC"][0].pixel_spacing == (0.07, 0.07)
    assert exam.views["R-MLO"][0].pixel_spacing == (0.07, 0.08)
    assert exam.labels["L"].malignant == 1 and exam.labels["R"].benign is None
    reasons = {Path(p).name: r for p, r in res.problems}
    assert "not found" in reasons["missing.png"]
    assert "NOPE" in reasons["labels.csv"]


def test_bad_csv_values_name_the_line(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    bad = tmp_path / "map.csv"
    bad.write_text("path,exam_id,view\na.png,X,L-XX\n")
    with pytest.raises(ManifestError, match=r"map.csv:2: view must be one of"):
        build_manifest(tmp_path, mapping_csv=bad)
    labels = tmp_path / "l.csv"
    labels.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant\nX,2,0,0,0\n")
    with pytest.raises(ManifestError, match=r"l.csv:2: left_benign must be 0, 1 or empty"):
        build_manifest(tmp_path, labels_csv=labels)


def test_ordering_is_deterministic(tmp_path: Path) -> None:
    for e in ("b", "a", "c"):
        for v in ("R-CC", "L-CC"):
            _png(tmp_path / f"{e}_{v}.png")
    r1, r2 = build_manifest(tmp_path), build_manifest(tmp_path)
    assert [e.exam_id for e in r1.exams] == ["a", "b", "c"]
    assert r1.exams == r2.exams


def test_cli_build_writes_manifest_report_and_refuses_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    _mg_study(data, "E1")
    (data / "notes.txt").write_text("x")
    out = tmp_path / "m.jsonl"
    runner = CliRunner()
    r = runner.invoke(app, ["manifest", "build", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "notes.txt" in r.output  # problems are printed (stderr is mixed in by CliRunner)
    (exam,) = read_manifest(out)
    assert exam.exam_id == "E1"
    rows = list(csv.DictReader((tmp_path / "m.problems.csv").open()))
    assert rows == [{"path": "notes.txt", "reason": "not an image file (.txt)"}]
    before = out.read_text()
    r = runner.invoke(app, ["manifest", "build", str(data), "--out", str(out)])
    assert r.exit_code != 0 and "refusing to overwrite" in str(r.exception)
    assert out.read_text() == before
    r = runner.invoke(app, ["manifest", "build", str(data), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    # check command
    r = runner.invoke(app, ["manifest", "check", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 exams" in r.output and "L-CC" in r.output


def test_cli_build_fails_when_nothing_usable(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    r = CliRunner().invoke(app, ["manifest", "build", str(tmp_path / "in"), "--out", str(tmp_path / "m.jsonl")])
    assert r.exit_code == 1
    assert not (tmp_path / "m.jsonl").exists()
    assert (tmp_path / "m.problems.csv").exists()


def test_cli_check_reports_invalid_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"exam_id": "a", "modality": "MG", "views": {"L-XX": []}}) + "\n")
    r = CliRunner().invoke(app, ["manifest", "check", str(bad)])
    assert r.exit_code != 0
    assert isinstance(r.exception, ManifestError) and "bad.jsonl:1" in str(r.exception)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"exam_id": "a", "modality": "MG", "views": {"L-CC": [{"path": "nope.png"}]}}) + "\n")
    r = CliRunner().invoke(app, ["manifest", "check", str(good)])
    assert r.exit_code == 1 and "do not exist" in r.output
    assert CliRunner().invoke(app, ["manifest", "check", str(good), "--no-files"]).exit_code == 0


def test_truncated_dicom_is_reported(tmp_path: Path) -> None:
    big = np.arange(200 * 150, dtype=np.uint16).reshape(200, 150)
    make_dicom(tmp_path / "a" / "L_CC.dcm", big, ImageLaterality="L", ViewPosition="CC", StudyInstanceUID="1.2.3")
    whole = (tmp_path / "a" / "L_CC.dcm").read_bytes()
    (tmp_path / "a" / "L_CC_cut.dcm").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut off
    res = build_manifest(tmp_path / "a")
    reasons = {Path(p).name: r for p, r in res.problems}
    assert set(reasons) == {"L_CC_cut.dcm"} and "truncated DICOM" in reasons["L_CC_cut.dcm"]
    assert [len(e.views["L-CC"]) for e in res.exams] == [1]
