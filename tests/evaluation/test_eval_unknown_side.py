"""Unknown-laterality ultrasound bags (U-US) are evaluated as a third breast "U"."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import BreastLabel, Exam, ImageRef, Modality
from breastscreen.evaluation.evaluate import EvalConfig, build_units, evaluate
from breastscreen.evaluation.io import EvaluationInputError, read_labels, read_predictions, validate_labels

HEAD = "exam_id,left_benign,left_malignant,right_benign,right_malignant"


def _files(tmp_path):
    p = tmp_path / "pred.csv"
    # u1..u4: U bags only; m1: a known-side exam (left/right) without a U bag.
    p.write_text(HEAD + ",unknown_benign,unknown_malignant\n"
                 "u1,,,,,0.2,0.9\nu2,,,,,0.7,0.3\nu3,,,,,0.1,0.6\nu4,,,,,0.4,0.1\n"
                 "m1,0.1,0.8,0.2,0.2,,\n")
    lab = tmp_path / "lab.csv"
    lab.write_text(HEAD + ",unknown_benign,unknown_malignant\n"
                   "u1,,,,,0,1\nu2,,,,,1,0\nu3,,,,,0,1\nu4,,,,,0,0\nm1,0,1,0,0,,\n")
    return read_predictions(p), read_labels(lab)


def test_u_units_at_breast_and_exam_level(tmp_path):
    pred, lab = _files(tmp_path)
    units = build_units(pred, lab, "breast")
    u = units[units["side"] == "U"].set_index("exam_id")
    assert sorted(u.index) == ["u1", "u2", "u3", "u4"]  # m1 has no U bag -> no U unit
    assert u.loc["u1", "s_malignant"] == pytest.approx(0.9) and u.loc["u1", "y_malignant"] == 1
    assert u.loc["u2", "y_benign"] == 1 and u.loc["u4", "y_malignant"] == 0
    # empty left/right rows of U-only exams are dropped; m1 keeps both breasts
    assert sorted(units.loc[units["exam_id"] == "m1", "side"]) == ["L", "R"]
    assert set(units.loc[units["exam_id"].str.startswith("u"), "side"]) == {"U"}

    exam = build_units(pred, lab, "exam").set_index("exam_id")
    assert exam.loc["u4", "y_malignant"] == 0 and exam.loc["u1", "y_malignant"] == 1
    assert exam.loc["u3", "s_malignant"] == pytest.approx(0.6)

    res = evaluate(pred, lab, config=EvalConfig(n_bootstrap=0, n_permutations=0))
    m = res.metrics["breast"]["malignant"]
    assert m["n"] == 6 and m["n_positive"] == 3  # 4 U units + m1's two breasts


def test_manifest_labels_take_u_label_and_plain_tables_are_unchanged(tmp_path):
    img = ImageRef(path=str(tmp_path / "a.png"))
    exams = [Exam(exam_id="b1", modality=Modality.US, views={"U-US": [img]},
                  labels={"U": BreastLabel(0, 1)}),
             Exam(exam_id="b2", modality=Modality.US, views={"L-US": [img]}, labels={"L": BreastLabel(1, 0)})]
    write_manifest(exams, tmp_path / "m.jsonl")
    lab = read_labels(tmp_path / "m.jsonl")
    assert lab.set_index("exam_id").loc["b1", "unknown_malignant"] == 1
    assert np.isnan(lab.set_index("exam_id").loc["b2", "unknown_malignant"])
    assert "label_U" not in lab.columns

    # a manifest without any U-US bag gives the same columns as before
    write_manifest(exams[1:], tmp_path / "m2.jsonl")
    assert "unknown_malignant" not in read_labels(tmp_path / "m2.jsonl").columns


def test_legacy_manifest_with_meta_label_u_gives_the_same_labels(tmp_path):
    old = {"exam_id": "b1", "modality": "US", "views": {"U-US": [{"path": "a.png"}]},
           "meta": {"dataset": "BUSI", "label_U": {"benign": 0, "malignant": 1}}}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    write_manifest([Exam(exam_id="b1", modality=Modality.US, views={"U-US": [ImageRef(str(tmp_path / "a.png"))]},
                         labels={"U": BreastLabel(0, 1)}, meta={"dataset": "BUSI"})], tmp_path / "new.jsonl")
    pd.testing.assert_frame_equal(read_labels(tmp_path / "old.jsonl"), read_labels(tmp_path / "new.jsonl"))
    assert read_labels(tmp_path / "old.jsonl").loc[0, "unknown_malignant"] == 1


def test_unknown_columns_come_in_pairs(tmp_path):
    p = tmp_path / "pred.csv"
    p.write_text(HEAD + ",unknown_malignant\nu1,,,,,0.5\n")
    with pytest.raises(EvaluationInputError, match="need both unknown_benign, unknown_malignant"):
        read_predictions(p)
    df = pd.DataFrame({"exam_id": ["u1"], "left_benign": [""], "left_malignant": [""], "right_benign": [""],
                       "right_malignant": [""], "unknown_benign": ["0"], "unknown_malignant": ["2"]})
    with pytest.raises(EvaluationInputError, match="label 'unknown_malignant' must be 0, 1 or empty"):
        validate_labels(df)
