"""Lesion-level evaluation (`evaluate --level lesion`): hand-worked values, clustered bootstrap, DeLong, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import Exam, ImageRef
from breastscreen.errors import BreastscreenError
from breastscreen.evaluation.io import EvaluationInputError
from breastscreen.evaluation.lesion import evaluate_lesions, read_lesion_predictions

COLUMNS = ["exam_id", "patient_id", "view", "image", "lesion_id", "outcome", "kind", "malignant", "benign"]


def _frame(outcomes, scores, patients=None, exams=None, kinds=None, lesion_ids=None) -> pd.DataFrame:
    n = len(outcomes)
    return pd.DataFrame({
        "exam_id": exams if exams is not None else [f"e{i}" for i in range(n)],
        "patient_id": patients if patients is not None else [f"p{i}" for i in range(n)],
        "view": ["L-CC"] * n,
        "image": [0] * n,
        "lesion_id": lesion_ids if lesion_ids is not None else ["1"] * n,
        "outcome": outcomes,
        "kind": kinds if kinds is not None else [""] * n,
        "malignant": scores,
        "benign": [round(1.0 - s, 10) for s in scores],
    }, columns=COLUMNS)


def _write(path, df: pd.DataFrame):
    df.to_csv(path, index=False)
    return path


def _read(tmp_path, df: pd.DataFrame, name: str = "lesions.csv") -> pd.DataFrame:
    return read_lesion_predictions(_write(tmp_path / name, df))


def _synthetic(n: int, seed: int, separation: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2], y[2:4] = 1, 0  # both classes always present
    s = np.clip(0.5 + separation * (2 * y - 1) + rng.normal(0, noise, n), 0.0, 1.0)
    return y, np.round(s, 6)


# --------------------------------------------------------------------------- values by hand
def test_auroc_auprc_and_counts_by_hand(tmp_path):
    # 3 malignant (0.9, 0.7, 0.4) vs 3 benign (0.8, 0.3, 0.2): 3 + 2 + 2 of 9 pairs ranked right.
    out = ["malignant", "malignant", "malignant", "benign", "benign", "benign", ""]
    s = [0.9, 0.7, 0.4, 0.8, 0.3, 0.2, 0.5]
    m = evaluate_lesions(_read(tmp_path, _frame(out, s)), n_bootstrap=0, seed=0)
    le = m["lesion"]
    assert le["auroc"]["value"] == pytest.approx(7 / 9)
    # Ranked 0.9 M, 0.8 B, 0.7 M, 0.4 M: precisions 1, 2/3, 3/4 at the three cancers.
    assert le["auprc"]["value"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    y = [1, 1, 1, 0, 0, 0]
    assert le["auroc"]["value"] == pytest.approx(roc_auc_score(y, s[:6]))
    assert le["auprc"]["value"] == pytest.approx(average_precision_score(y, s[:6]))
    assert (le["n_lesions"], le["n"], le["n_malignant"], le["n_benign"], le["n_unknown"], le["n_patients"]) == \
        (7, 6, 3, 3, 1, 6)
    assert "ci_low" not in le["auroc"] and "delong" in le["auroc"]
    assert m["meta"]["level"] == "lesion" and any("unknown outcome" in w for w in m["meta"]["warnings"])


def test_tnr_at_fnr_by_hand(tmp_path):
    # 20 cancers: 19 at 0.95 and one at 0.2; 5 benign at 0.1, 0.3, 0.5, 0.6, 0.97.
    mal = [0.95] * 19 + [0.2]
    ben = [0.1, 0.3, 0.5, 0.6, 0.97]
    df = _frame(["malignant"] * 20 + ["benign"] * 5, mal + ben)
    tnr = evaluate_lesions(_read(tmp_path, df), n_bootstrap=0, seed=0)["lesion"]["tnr_at_fnr"]
    assert set(tnr) == {"0", "0.01", "0.02", "0.03", "0.05"}
    # FNR 0: every cancer kept, threshold 0.2, only the benign 0.1 lies below it.
    assert tnr["0"]["threshold"] == 0.2 and tnr["0"]["tnr"]["value"] == pytest.approx(1 / 5)
    assert tnr["0"]["fn"] == 0 and tnr["0"]["fnr"]["value"] == 0
    # 1 %, 2 %, 3 % of 20 cancers is < 1 lesion: still no miss allowed.
    for f in ("0.01", "0.02", "0.03"):
        assert tnr[f]["tnr"]["value"] == pytest.approx(1 / 5)
    # 5 % of 20 = one cancer may be missed: threshold 0.95, four benign below.
    assert tnr["0.05"]["threshold"] == 0.95 and tnr["0.05"]["tnr"]["value"] == pytest.approx(4 / 5)
    assert tnr["0.05"]["fn"] == 1 and tnr["0.05"]["fnr"]["value"] == pytest.approx(0.05)


def test_auroc_per_kind(tmp_path):
    out = ["malignant", "benign", "malignant", "benign", "malignant"]
    df = _frame(out + ["benign"], [0.9, 0.2, 0.3, 0.6, 0.8, 0.1],
                kinds=["mass", "mass", "calcification", "calcification", "other", "Cyst"])
    kinds = evaluate_lesions(_read(tmp_path, df), n_bootstrap=20, seed=0)["lesion"]["by_kind"]
    assert list(kinds) == ["mass", "calcification", "other", "cyst"]  # usual kinds first, others kept
    assert kinds["mass"]["auroc"]["value"] == 1.0 and kinds["calcification"]["auroc"]["value"] == 0.0
    # One class only: counted, no AUROC.
    assert kinds["other"]["n_malignant"] == 1 and kinds["other"]["auroc"]["value"] is None
    assert kinds["cyst"]["n_benign"] == 1 and "(missing)" not in kinds


# --------------------------------------------------------------------------- clustered bootstrap
def test_bootstrap_is_deterministic_and_resamples_patients(tmp_path):
    y, s = _synthetic(30, seed=3, separation=0.15, noise=0.2)
    out = ["malignant" if v else "benign" for v in y]
    base = _read(tmp_path, _frame(out, list(s)), "base.csv")
    a = evaluate_lesions(base, n_bootstrap=300, seed=1)["lesion"]["auroc"]
    assert a == evaluate_lesions(base, n_bootstrap=300, seed=1)["lesion"]["auroc"]
    assert a != evaluate_lesions(base, n_bootstrap=300, seed=2)["lesion"]["auroc"]

    # Every patient gets three identical lesions: resampling patients must give the same CI as
    # before (the copies move together), resampling lesions a falsely narrow one.
    idx = np.repeat(np.arange(30), 3)
    dup = _frame([out[i] for i in idx], [float(s[i]) for i in idx], patients=[f"p{i}" for i in idx],
                 exams=[f"e{i}" for i in idx], lesion_ids=["a", "b", "c"] * 30)
    m = evaluate_lesions(_read(tmp_path, dup, "dup.csv"), n_bootstrap=300, seed=1)
    assert m["meta"]["bootstrap"]["n_clusters"] == 30 and m["meta"]["bootstrap"]["cluster"] == "patient_id"
    d = m["lesion"]["auroc"]
    assert d["value"] == pytest.approx(a["value"])
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((a["ci_low"], a["ci_high"]), abs=1e-12)
    # No patient ids and one exam per lesion: each lesion is its own cluster (fallback to exam_id).
    flat = dup.assign(patient_id="", exam_id=[f"x{i}" for i in range(90)])
    f = evaluate_lesions(_read(tmp_path, flat, "flat.csv"), n_bootstrap=300, seed=1)
    assert f["meta"]["bootstrap"]["n_clusters"] == 90 and f["meta"]["bootstrap"]["cluster"] == "exam_id"
    width = lambda e: e["ci_high"] - e["ci_low"]  # noqa: E731
    assert width(f["lesion"]["auroc"]) < 0.8 * width(d)
    # TNR at FNR gets a clustered CI too.
    assert m["lesion"]["tnr_at_fnr"]["0"]["tnr"]["ci_low"] is not None


# --------------------------------------------------------------------------- compare / DeLong
def test_compare_identical_file_gives_zero_difference_and_p_one(tmp_path):
    y, s = _synthetic(40, seed=0, separation=0.1, noise=0.2)
    df = _frame(["malignant" if v else "benign" for v in y], list(s))
    a, b = _read(tmp_path, df, "a.csv"), _read(tmp_path, df.iloc[::-1], "b.csv")  # row order does not matter
    c = evaluate_lesions(a, n_bootstrap=100, seed=0, compare=b)["lesion"]["compare"]
    assert c["delong"]["difference"] == 0 and c["delong"]["p_value"] == 1.0
    assert c["auroc_difference"]["value"] == 0 and (c["auroc_difference"]["ci_low"], c["auroc_difference"]["ci_high"]) == (0, 0)
    assert c["n_matched"] == 40 and c["source"].endswith("b.csv")


def test_compare_strictly_better_model_is_significant(tmp_path):
    y, good = _synthetic(200, seed=7, separation=0.3, noise=0.15)
    _, weak = _synthetic(200, seed=7, separation=0.05, noise=0.25)
    out = ["malignant" if v else "benign" for v in y]
    a = _read(tmp_path, _frame(out, list(good)), "good.csv")
    b = _read(tmp_path, _frame(out, list(weak)), "weak.csv")
    m = evaluate_lesions(a, n_bootstrap=200, seed=0, compare=b)
    c = m["lesion"]["compare"]
    assert c["delong"]["auc1"] == pytest.approx(roc_auc_score(y, good))
    assert c["delong"]["auc2"] == pytest.approx(roc_auc_score(y, weak))
    assert c["delong"]["difference"] > 0.1 and c["delong"]["p_value"] < 0.05
    assert c["auroc_difference"]["value"] == pytest.approx(c["delong"]["difference"])
    assert c["auroc_difference"]["ci_low"] > 0
    assert c["auroc"]["value"] == pytest.approx(roc_auc_score(y, weak))


# --------------------------------------------------------------------------- input errors
def test_input_errors_name_file_line_and_problem(tmp_path):
    good = _frame(["malignant", "benign", "benign"], [0.9, 0.2, 0.4])
    p = _write(tmp_path / "bad.csv", good.drop(columns=["lesion_id"]))
    with pytest.raises(EvaluationInputError, match=r"bad\.csv: a lesion predictions table is missing column\(s\) lesion_id"):
        read_lesion_predictions(p)
    dup = pd.concat([good, good.iloc[[1]]], ignore_index=True)
    with pytest.raises(EvaluationInputError, match=r"bad\.csv line 5: lesion predictions repeats exam_id/view/image/lesion_id \('e1', 'L-CC', 0, '1'\)"):
        read_lesion_predictions(_write(p, dup))
    with pytest.raises(EvaluationInputError, match=r"bad\.csv line 3: malignant must be a probability in \[0.0, 1.0\], got 1.5"):
        read_lesion_predictions(_write(p, good.assign(malignant=[0.9, 1.5, 0.4])))
    with pytest.raises(EvaluationInputError, match=r"line 2: malignant \+ benign must sum to 1"):
        read_lesion_predictions(_write(p, good.assign(benign=[0.5, 0.8, 0.6])))
    with pytest.raises(EvaluationInputError, match=r"line 4: outcome must be benign, malignant or empty .* got 'cancer'"):
        read_lesion_predictions(_write(p, good.assign(outcome=["malignant", "benign", "cancer"])))
    with pytest.raises(EvaluationInputError, match=r"line 2: image must be the image's index"):
        read_lesion_predictions(_write(p, good.assign(image=["-1", "0", "0"])))
    with pytest.raises(EvaluationInputError, match=r"line 3: view must be one of L-CC.* got 'L-XX'"):
        read_lesion_predictions(_write(p, good.assign(view=["L-CC", "L-XX", "L-CC"])))
    with pytest.raises(EvaluationInputError, match=r"line 4: score column 'benign' is empty"):
        read_lesion_predictions(_write(p, good.assign(benign=["0.1", "0.8", ""])))


def test_compare_file_must_match(tmp_path):
    good = _frame(["malignant", "benign", "benign"], [0.9, 0.2, 0.4])
    a = _read(tmp_path, good, "a.csv")
    other = _read(tmp_path, good.assign(lesion_id=["1", "1", "2"]), "other.csv")
    with pytest.raises(EvaluationInputError, match=r"other\.csv: the compare file does not match .*a\.csv: 1 of 3 "
                                                   r"lesion\(s\) .* missing from it and 1 of its 3"):
        evaluate_lesions(a, n_bootstrap=0, seed=0, compare=other)
    clash = _read(tmp_path, good.assign(outcome=["benign", "benign", "benign"]), "clash.csv")
    with pytest.raises(EvaluationInputError, match=r"clash\.csv: 1 lesion\(s\) have a different outcome"):
        evaluate_lesions(a, n_bootstrap=0, seed=0, compare=clash)


def test_manifest_labels_fill_patient_and_check_exams(tmp_path):
    exams = [Exam(exam_id=f"e{i}", patient_id=f"P{i // 2}", views={"L-CC": [ImageRef(path=str(tmp_path / f"{i}.png"))]})
             for i in range(4)]
    write_manifest(exams, tmp_path / "m.jsonl")
    df = _frame(["malignant", "benign", "benign", "malignant"], [0.9, 0.2, 0.4, 0.6], patients=[""] * 4)
    p = _write(tmp_path / "l.csv", df)
    got = read_lesion_predictions(p, tmp_path / "m.jsonl")
    assert got["patient_id"].tolist() == ["P0", "P0", "P1", "P1"]
    assert evaluate_lesions(got, n_bootstrap=10, seed=0)["meta"]["bootstrap"]["n_clusters"] == 2
    with pytest.raises(EvaluationInputError, match=r"l\.csv: 1 of 5 exam ids are not in the manifest"):
        read_lesion_predictions(_write(p, pd.concat([df, _frame(["benign"], [0.1], exams=["zz"])])), tmp_path / "m.jsonl")
    with pytest.raises(EvaluationInputError, match=r"line 2: exam 'e0' has 1 L-CC image\(s\)"):
        read_lesion_predictions(_write(p, df.assign(image=[1, 0, 0, 0])), tmp_path / "m.jsonl")


def test_manifest_lesions_fill_unknown_outcomes(tmp_path):
    pytest.importorskip("breastscreen.data.lesions")
    from breastscreen.data.types import ROI

    img = ImageRef(path=str(tmp_path / "0.png"), rois=[ROI((0, 0, 5, 5), "malignant", "mass", lesion_id="1"),
                                                       ROI((6, 6, 9, 9), "benign", None, lesion_id="2")])
    write_manifest([Exam(exam_id="e0", patient_id="P", views={"L-CC": [img]})], tmp_path / "m.jsonl")
    df = _frame(["", "benign"], [0.7, 0.3], exams=["e0", "e0"], lesion_ids=["1", "2"], patients=["", ""])
    got = read_lesion_predictions(_write(tmp_path / "l.csv", df), tmp_path / "m.jsonl")
    assert got["outcome"].tolist() == ["malignant", "benign"] and got["patient_id"].tolist() == ["P", "P"]
    with pytest.raises(EvaluationInputError, match=r"line 3: outcome 'malignant' contradicts the manifest's 'benign'"):
        read_lesion_predictions(_write(tmp_path / "l.csv", df.assign(outcome=["", "malignant"])), tmp_path / "m.jsonl")


# --------------------------------------------------------------------------- CLI
def test_cli_lesion_level_end_to_end(tmp_path):
    y, good = _synthetic(60, seed=2, separation=0.2, noise=0.2)
    _, weak = _synthetic(60, seed=2, separation=0.05, noise=0.25)
    out = ["malignant" if v else "benign" for v in y]
    kinds = ["mass", "calcification"] * 30
    _write(tmp_path / "lesions.csv", _frame(out, list(good), kinds=kinds))
    _write(tmp_path / "local.csv", _frame(out, list(weak), kinds=kinds))
    args = ["evaluate", "--level", "lesion", "-p", str(tmp_path / "lesions.csv"), "--compare",
            str(tmp_path / "local.csv"), "--bootstrap", "50", "--seed", "1", "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["lesion"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, good))
    assert m["lesion"]["compare"]["delong"]["p_value"] is not None and m["meta"]["bootstrap"]["n_resamples"] == 50
    assert "lesion-level malignant AUROC" in r.output and "(n=60 lesions" in r.output and "DeLong" in r.output
    html = (tmp_path / "out" / "report.html").read_text()
    assert "TNR at FNR" in html and "By lesion kind" in html and "data:image/png;base64," in html
    assert (tmp_path / "out" / "roc_pr.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_labels_required_except_for_lesions(tmp_path):
    _write(tmp_path / "lesions.csv", _frame(["malignant", "benign"], [0.9, 0.1]))
    base = ["evaluate", "-p", str(tmp_path / "lesions.csv"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, base)
    assert isinstance(r.exception, BreastscreenError) and "--labels is required for --level breast" in str(r.exception)
    r = CliRunner().invoke(app, base + ["--level", "lesion", "--readers", str(tmp_path / "lesions.csv")])
    assert isinstance(r.exception, BreastscreenError) and "--readers" in str(r.exception)
    r = CliRunner().invoke(app, base + ["--level", "lesions"])
    assert isinstance(r.exception, BreastscreenError) and "lesion" in str(r.exception)
