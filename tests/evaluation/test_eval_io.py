"""Reading labels from a manifest and CSV validation messages."""

from __future__ import annotations

import time

import numpy as np
import pytest

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import BreastLabel, Exam, ImageRef
from breastscreen.evaluation.evaluate import EvalConfig, evaluate
from breastscreen.evaluation.io import EvaluationInputError, read_labels, read_predictions
from breastscreen.evaluation.simulate import simulate_cohort


def test_labels_from_manifest(tmp_path):
    exams = []
    for i in range(6):
        img = ImageRef(path=str(tmp_path / f"e{i}_L-CC.png"), meta={"device": "VendorA" if i % 2 else "VendorB"})
        exams.append(Exam(exam_id=f"e{i}", patient_id=f"p{i // 2}", age=40 + 5 * i, density="ABCD"[i % 4],
                          birads=str(i % 3), views={"L-CC": [img]},
                          labels={"L": BreastLabel(0, i % 2), "R": BreastLabel(int(i % 3 == 0), None)},
                          meta={"site": "s1"}))
    write_manifest(exams, tmp_path / "m.jsonl")
    lab = read_labels(tmp_path / "m.jsonl")
    assert lab["left_malignant"].tolist() == [0, 1, 0, 1, 0, 1]
    assert lab["right_malignant"].isna().all()
    assert lab["right_benign"].tolist() == [1, 0, 0, 1, 0, 0]
    assert lab["device"].tolist()[:2] == ["VendorB", "VendorA"]
    assert lab["site"].tolist() == ["s1"] * 6 and lab["patient_id"].tolist()[0] == "p0"


def test_csv_validation_messages(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant\ne1,0.1,0.2,0.3,abc\n")
    with pytest.raises(EvaluationInputError, match=r"line 2: prediction column 'right_malignant' must be a finite number"):
        read_predictions(p)
    p.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant\ne1,0.1,0.2,0.3,0.4\ne1,0,0,0,0\n")
    with pytest.raises(EvaluationInputError, match="line 3: predictions repeats"):
        read_predictions(p)
    q = tmp_path / "l.csv"
    q.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant\ne1,0,2,,1\n")
    with pytest.raises(EvaluationInputError, match=r"line 2: label 'left_malignant' must be 0, 1 or empty, got '2'"):
        read_labels(q)
    with pytest.raises(EvaluationInputError, match="not found"):
        read_labels(tmp_path / "nope.csv")
    # empty = unknown breast: it is left out of that task
    p.write_text("exam_id,left_benign,left_malignant,right_benign,right_malignant\ne1,0.1,0.2,0.3,\n")
    assert np.isnan(read_predictions(p)["right_malignant"].iloc[0])


@pytest.mark.slow
def test_bootstrap_speed_10000_breasts():
    d = simulate_cohort(5000, seed=1, n_readers=0)
    t = time.perf_counter()
    res = evaluate(d["predictions"], d["labels"], None, EvalConfig(n_bootstrap=1000))
    elapsed = time.perf_counter() - t
    assert res.metrics["breast"]["malignant"]["n"] == 10_000
    assert elapsed < 60, f"1000 resamples over all metrics took {elapsed:.1f} s"
