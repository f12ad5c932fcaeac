"""evaluate_predictions end to end on small synthetic tables, checked against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from breastscreen.evaluation.evaluate import evaluate_predictions
from breastscreen.evaluation.io import EvaluationInputError
from breastscreen.evaluation.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(150, seed=3, n_readers=2)


def _breast(pred, lab, t):
    y = np.r_[lab[f"left_{t}"], lab[f"right_{t}"]]
    s = np.r_[pred[f"left_{t}"], pred[f"right_{t}"]]
    return y, s


def test_breast_level_numbers_match_sklearn(cohort):
    p, l = cohort["predictions"], cohort["labels"]
    m = evaluate_predictions(p, l, n_bootstrap=50, seed=1)
    for t in ("malignant", "benign"):
        y, s = _breast(p, l, t)
        assert m["breast"][t]["auroc"]["value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert m["breast"][t]["auprc"]["value"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        a = m["breast"][t]["auroc"]
        assert a["ci_low"] <= a["value"] <= a["ci_high"]
    # malignant-or-benign vs normal uses the max of the two predictions
    yb, sb = _breast(p, l, "benign")
    ym, sm = _breast(p, l, "malignant")
    assert m["breast"]["any_finding"]["auroc"]["value"] == pytest.approx(roc_auc_score(np.maximum(yb, ym), np.maximum(sb, sm)))
    one = (yb + ym) == 1
    assert m["breast"]["malignant_vs_benign"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(ym[one], sm[one] / (sm[one] + sb[one])))
    # per-branch AUCs
    y = ym
    s_cc = np.r_[p["cc_left_malignant"], p["cc_right_malignant"]]
    assert m["branches"]["cc"]["malignant"]["model"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, s_cc))
    # correlation matrix
    c = np.corrcoef(p[["left_benign", "left_malignant", "right_benign", "right_malignant"]].to_numpy(), rowvar=False)
    np.testing.assert_allclose(np.array(m["correlation"]["pearson"]), c, atol=1e-12)
    assert set(m["breast"]["malignant"]["tnr_at_fnr"]) == {"0", "0.01", "0.02", "0.03", "0.05"}
    assert m["meta"]["bootstrap"]["cluster"] == "patient_id"


def test_exam_level_and_biopsied_population(cohort):
    p, l = cohort["predictions"], cohort["labels"]
    m = evaluate_predictions(p, l, n_bootstrap=0, level="exam")
    y = np.maximum(l["left_malignant"], l["right_malignant"])
    s = np.maximum(p["left_malignant"], p["right_malignant"])
    assert m["exam"]["malignant"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, s))
    assert "ci_low" not in m["exam"]["malignant"]["auroc"]
    mb = evaluate_predictions(p, l, n_bootstrap=0, population="biopsied")
    any_pos = (l[["left_benign", "left_malignant", "right_benign", "right_malignant"]] == 1).any(axis=1).to_numpy()
    yb, sb = _breast(p[any_pos], l[any_pos], "malignant")
    assert mb["breast"]["malignant"]["auroc"]["value"] == pytest.approx(roc_auc_score(yb, sb))
    assert mb["breast"]["malignant"]["n"] == yb.size


def test_image_level_from_long_predictions(cohort):
    p, l = cohort["predictions"], cohort["labels"]
    rows = []
    for r in p.itertuples():
        for side, pre in (("L", "left"), ("R", "right")):
            for b in ("cc", "mlo"):
                rows.append({"exam_id": r.exam_id, "view": f"{side}-{b.upper()}",
                             "benign": getattr(r, f"{b}_{pre}_benign"), "malignant": getattr(r, f"{b}_{pre}_malignant")})
    long = pd.DataFrame(rows)
    m = evaluate_predictions(long, l, n_bootstrap=0, level="image")
    y = np.r_[np.repeat(l["left_malignant"].to_numpy(), 2), np.repeat(l["right_malignant"].to_numpy(), 2)]
    s = np.r_[np.c_[p["cc_left_malignant"], p["mlo_left_malignant"]].ravel(),
              np.c_[p["cc_right_malignant"], p["mlo_right_malignant"]].ravel()]
    assert m["image"]["malignant"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, s))
    assert m["image"]["malignant"]["n"] == 4 * len(p)
    # wide predictions with branch columns give the same image-level number
    m2 = evaluate_predictions(p, l, n_bootstrap=0, level="image")
    assert m2["image"]["malignant"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, s))


def test_birads_macauc_and_high_confidence(cohort):
    p, l = cohort["predictions"], cohort["labels"]
    probs = p[["birads_0", "birads_1", "birads_2"]].to_numpy()
    yc = l["birads"].astype(int).to_numpy()
    m = evaluate_predictions(p, l, n_bootstrap=20)
    assert m["birads"]["macauc"]["value"] == pytest.approx(roc_auc_score(yc, probs, multi_class="ovr"))
    h = -(probs * np.log(np.clip(probs, 1e-300, 1))).sum(1)
    keep = np.argsort(h, kind="mergesort")[: int(np.ceil(0.3 * len(h)))]
    assert m["birads"]["high_confidence"]["n_kept"] == keep.size
    assert m["birads"]["high_confidence"]["macauc"]["value"] == pytest.approx(
        roc_auc_score(yc[keep], probs[keep], multi_class="ovr"))
    curve = m["birads"]["macauc_vs_kept_fraction"]
    assert [c["fraction"] for c in curve] == pytest.approx([0.1 * k for k in range(1, 11)])
    assert curve[-1]["macauc"] == pytest.approx(m["birads"]["macauc"]["value"])
    # validation cut-off: the 30 % quantile of the validation entropies
    val = p.iloc[:60]
    hv = h[:60]
    mv = evaluate_predictions(p, l, n_bootstrap=0, val_predictions_df=val)
    cut = np.quantile(hv, 0.3)
    assert mv["birads"]["high_confidence"]["entropy_cutoff"] == pytest.approx(cut)
    assert mv["birads"]["high_confidence"]["n_kept"] == int((h <= cut).sum())


def test_readers_section(cohort):
    p, l, r = cohort["predictions"], cohort["labels"], cohort["readers"]
    m = evaluate_predictions(p, l, r, n_bootstrap=30, n_permutations=200)
    rd = m["readers"]
    y, s = _breast(p, l, "malignant")
    key = pd.DataFrame({"exam_id": np.r_[l["exam_id"], l["exam_id"]], "side": ["L"] * len(l) + ["R"] * len(l)})
    for rid, scale in (("R1", "birads"), ("R2", "percent")):
        rr = r[r.reader_id == rid].merge(key.reset_index(), on=["exam_id", "side"]).sort_values("index")
        x = rr["score"]
        if scale == "birads":
            x = x.map({"1": 1, "2": 1, "3": 2, "4A": 3, "4B": 4, "4C": 5, "5": 6}).to_numpy(float)
        else:
            x = x.astype(float).to_numpy() / 100
        assert rd["per_reader"][rid]["scale"] == scale
        assert rd["per_reader"][rid]["reader"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, x))
        thr = 3 if scale == "birads" else 0.5
        sens = ((x >= thr) & (y == 1)).sum() / (y == 1).sum()
        assert rd["per_reader"][rid]["operating_point"]["sensitivity"]["value"] == pytest.approx(sens)
        z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
        hyb = 0.5 * z(x) + 0.5 * z(s) if scale == "birads" else 0.5 * x + 0.5 * s
        assert rd["per_reader"][rid]["hybrid"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, hyb))
        lam = rd["per_reader"][rid]["lambda_curve"]
        assert lam[0]["auroc"] == pytest.approx(roc_auc_score(y, s))
        assert lam[-1]["auroc"] == pytest.approx(roc_auc_score(y, x))
        assert 0 < rd["per_reader"][rid]["permutation_model_vs_reader"]["p_value"] <= 1
    av = rd["average_reader"]
    mean_auc = np.mean([rd["per_reader"][k]["reader"]["auroc"]["value"] for k in ("R1", "R2")])
    assert av["auroc"]["value"] == pytest.approx(mean_auc)
    assert av["model_minus_average_reader_auroc"]["value"] == pytest.approx(roc_auc_score(y, s) - mean_auc)
    assert "specificity" in av["model_at_average_reader_sensitivity"]


def test_input_errors(cohort):
    p, l = cohort["predictions"], cohort["labels"]
    with pytest.raises(EvaluationInputError, match="missing column"):
        evaluate_predictions(p.drop(columns=["left_benign"]), l)
    bad = p.copy()
    bad.loc[3, "left_malignant"] = 1.5
    with pytest.raises(EvaluationInputError, match=r"line 5: left_malignant must be a probability"):
        evaluate_predictions(bad, l)
    with pytest.raises(EvaluationInputError, match=r"3 of 150 exam ids in the predictions are not in the labels"):
        evaluate_predictions(p, l.iloc[3:])
    m = evaluate_predictions(p, l.iloc[3:], n_bootstrap=0, allow_missing=True)
    assert any("dropped" in w for w in m["meta"]["warnings"])
    with pytest.raises(EvaluationInputError, match="subgroup field"):
        evaluate_predictions(p, l, subgroups=("scanner",))
    with pytest.raises(TypeError, match="unknown option"):
        evaluate_predictions(p, l, bootstraps=3)


def test_a_jsonl_given_as_predictions_gets_a_short_error(tmp_path):
    """predictions.jsonl passed to ``-p``: its first line parses as hundreds of "columns"."""
    from breastscreen.evaluation.io import read_predictions

    line = {"exam_id": "E1", "probabilities": {"unknown_malignant": 0.5},
            "breasts": {"U": {"saliency_malignant": [[0.123456789] * 8] * 8}}}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(EvaluationInputError) as err:
        read_predictions(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: a predictions table is missing column(s) exam_id")
    assert "is this a CSV file?" in msg and len(msg) < 500 and "\n" not in msg
