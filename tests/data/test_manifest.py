"""Manifest schema validation and lossless round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breastscreen.data.manifest import read_manifest, validate_exam_dict, write_manifest
from breastscreen.data.types import ROI, BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.errors import ManifestError


def _exam(root: Path) -> Exam:
    return Exam(
        exam_id="e1",
        patient_id="p1",
        study_date="2020-01-31",
        age=54.0,
        density="C",
        birads="4A",
        labels={"L": BreastLabel(1, 0), "R": BreastLabel(0, None)},
        views={
            "L-CC": [
                ImageRef(
                    str(root / "img" / "e1_L-CC.png"),
                    pixel_spacing=(0.1, 0.1),
                    masks=[LesionMask(str(root / "img" / "m.png"), "benign", "mass")],
                    rois=[ROI((1, 2, 30, 40), "benign")],
                    preprocessing={"source_path": str(root / "src.png"), "flipped": True, "crop_box": [0, 0, 5, 5]},
                    meta={"sop": "1.2.3"},
                ),
                ImageRef(str(root / "img" / "e1_L-CC_2.dcm"), frame=3),
            ],
            "R-MLO": [ImageRef(str(root / "img" / "e1_R-MLO.png"))],
        },
    )


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    exam = _exam(tmp_path)
    path = write_manifest([exam], tmp_path / "m.jsonl")
    text = path.read_text()
    assert '"path": "img/e1_L-CC.png"' in text  # relative to the manifest folder
    (back,) = read_manifest(path)
    assert back == exam
    write_manifest([back], tmp_path / "m2.jsonl")
    assert (tmp_path / "m2.jsonl").read_text() == text
    assert back.missing_views() == ["R-CC", "L-MLO"]


def test_missing_views_are_visible(tmp_path: Path) -> None:
    write_manifest([_exam(tmp_path)], tmp_path / "m.jsonl")
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert line["views"]["R-CC"] == []


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"exam_id": "x", "modality": "CT", "views": {}}, "modality"),
        ({"exam_id": "x", "modality": "MG", "views": {"L-XX": []}}, "views"),
        ({"exam_id": "x", "modality": "MG", "views": {}, "labels": {"L": {"malignant": 2}}}, "labels/L/malignant"),
        ({"exam_id": "x", "modality": "MG", "views": {"L-CC": [{"frame": 1}]}}, "views/L-CC/0"),
        ({"modality": "MG", "views": {}}, "(line)"),
    ],
)
def test_invalid_line_names_line_and_field(tmp_path: Path, bad: dict, field: str) -> None:
    good = {"exam_id": "ok", "modality": "US", "views": {"L-US": [{"path": "a.png"}]}}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(p)
    assert f"{p}:2" in str(info.value) and f"'{field}'" in str(info.value)


def test_duplicate_exam_id_and_bad_json(tmp_path: Path) -> None:
    line = json.dumps({"exam_id": "a", "modality": "MG", "views": {}})
    p = tmp_path / "m.jsonl"
    p.write_text(line + "\n" + line + "\n")
    with pytest.raises(ManifestError, match="repeats line 1"):
        read_manifest(p)
    p.write_text("{not json\n")
    with pytest.raises(ManifestError, match=":1: not valid JSON"):
        read_manifest(p)


def test_ultrasound_exam(tmp_path: Path) -> None:
    exam = Exam("u1", modality=Modality.US, views={"R-US": [ImageRef(str(tmp_path / "a.png"))]})
    write_manifest([exam], tmp_path / "u.jsonl")
    (back,) = read_manifest(tmp_path / "u.jsonl")
    assert back == exam and back.missing_views() == [] and back.present_views() == ["R-US"]


def _us_u_exam(root: Path) -> Exam:
    return Exam(
        "bb1",
        modality=Modality.US,
        views={"U-US": [ImageRef(str(root / "a.png")), ImageRef(str(root / "b.png"))],
               "L-US": [ImageRef(str(root / "c.png"))]},
        labels={"L": BreastLabel(1, 0), "U": BreastLabel(0, 1)},
        meta={"dataset": "BUS-BRA"},
    )


def test_unknown_side_label_round_trips_as_labels_u(tmp_path: Path) -> None:
    exam = _us_u_exam(tmp_path)
    path = write_manifest([exam], tmp_path / "m.jsonl")
    line = json.loads(path.read_text())
    assert line["labels"] == {"L": {"benign": 1, "malignant": 0}, "U": {"benign": 0, "malignant": 1}}
    assert "label_U" not in line["meta"]
    (back,) = read_manifest(path)
    assert back == exam and back.label("U") == BreastLabel(0, 1)


def test_legacy_meta_label_u_is_read_as_labels_u(tmp_path: Path) -> None:
    old = {"exam_id": "busi-malignant-1", "modality": "US", "views": {"U-US": [{"path": "a.png"}]},
           "meta": {"dataset": "BUSI", "label_U": {"benign": 0, "malignant": 1}}}
    nolabel = {"exam_id": "x2", "modality": "US", "views": {"U-US": [{"path": "b.png"}]}, "meta": {"label_U": None}}
    p = tmp_path / "old.jsonl"
    p.write_text(json.dumps(old) + "\n" + json.dumps(nolabel) + "\n")
    e, e2 = read_manifest(p)
    assert e.labels == {"U": BreastLabel(0, 1)} and e.meta == {"dataset": "BUSI"}
    assert e2.labels == {} and e2.meta == {} and e2.label("U") == BreastLabel()
    # rewriting stores the new form only
    write_manifest([e], tmp_path / "new.jsonl")
    line = json.loads((tmp_path / "new.jsonl").read_text())
    assert line["labels"] == {"U": {"benign": 0, "malignant": 1}} and line["meta"] == {"dataset": "BUSI"}


@pytest.mark.parametrize(
    "meta, labels, message",
    [
        ({"label_U": "malignant"}, None, "meta.label_U must be an object"),
        ({"label_U": {"malignant": 2}}, None, "malignant label must be 0, 1 or None"),
        ({"label_U": {"malignant": 1}}, {"U": {"malignant": 1}}, "both labels.U and the legacy meta.label_U"),
    ],
)
def test_bad_legacy_label_u_names_the_line(tmp_path: Path, meta: dict, labels: dict | None, message: str) -> None:
    line = {"exam_id": "u", "modality": "US", "views": {"U-US": [{"path": "a.png"}]}, "meta": meta}
    if labels is not None:
        line["labels"] = labels
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(line) + "\n")
    with pytest.raises(ManifestError, match=f"{p}:1: .*{message}"):
        read_manifest(p)


def test_schema_accepts_label_side_u_and_checks_its_values(tmp_path: Path) -> None:
    validate_exam_dict({"exam_id": "u", "modality": "US", "views": {"U-US": [{"path": "a.png"}]},
                        "labels": {"U": {"benign": 0, "malignant": None}}}, "here")
    with pytest.raises(ManifestError, match="'labels/U/malignant'"):
        validate_exam_dict({"exam_id": "u", "modality": "US", "views": {}, "labels": {"U": {"malignant": 2}}}, "here")
    with pytest.raises(ManifestError, match="'labels'"):
        validate_exam_dict({"exam_id": "u", "modality": "US", "views": {}, "labels": {"X": {}}}, "here")


def test_label_side_u_is_ultrasound_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="side U .* ultrasound exams only"):
        Exam("m", modality=Modality.MG, labels={"U": BreastLabel(0, 1)})
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"exam_id": "m", "modality": "MG", "views": {}, "labels": {"U": {"malignant": 1}}}) + "\n")
    with pytest.raises(ManifestError, match=":1: .*ultrasound exams only"):
        read_manifest(p)
