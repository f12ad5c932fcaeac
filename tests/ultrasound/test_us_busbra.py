"""BUS-BRA experiment pieces: bags from the adapter, stratified split, summary layout and analyses."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from breastscreen.data.types import BreastLabel, ImageRef
from breastscreen.data.bags import Breast
from breastscreen.ultrasound.busbra import stratified_split, summarise_cv


def _breasts(n: int, n_pos: int) -> list[Breast]:
    return [Breast(f"b{i}", f"e{i}", "U-US", [ImageRef(f"/x/{i}.png")],
                   BreastLabel(int(i >= n_pos), int(i < n_pos))) for i in range(n)]


def test_stratified_split_keeps_class_ratio_and_is_disjoint():
    breasts = _breasts(100, 30)
    train, val = stratified_split(breasts, 0.2, seed=1)
    assert len(val) == 20 and sum(b.targets[1] for b in val) == 6
    assert {b.breast_id for b in train}.isdisjoint({b.breast_id for b in val})
    assert [b.breast_id for b in stratified_split(breasts, 0.2, seed=1)[1]] == [b.breast_id for b in val]
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(breasts, 1.0, seed=0)


def _fold(fold: int, rng: np.random.Generator, n: int = 60) -> dict:
    y = (rng.random(n) < 0.35).astype(int)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    birads = np.where(y == 1, rng.choice([3, 4, 5], n, p=[0.1, 0.6, 0.3]), rng.choice([2, 3, 4], n, p=[0.4, 0.4, 0.2]))
    rows = [{"fold": fold, "breast_id": f"f{fold}b{i}", "patient_id": f"f{fold}p{i}", "benign": 1 - int(y[i]),
             "malignant": int(y[i]), "p_benign": float(1 - p[i]), "p_malignant": float(p[i]),
             "birads": float(birads[i]), "n_images": 1, "top_attention_image": "x.png"} for i in range(n)]
    return {"fold": fold, "rows": rows, "n_train": 1, "n_val": 1, "n_test": n, "best_epoch": 0,
            "val_auroc_malignant": 0.5, "epochs_run": 1, "train_seconds": 1.0,
            "localisation": {"n_images": 10 * fold, "pointing_game": 0.1 * fold, "mean_iou": 0.05 * fold}}


def _acceptance_value(summary: dict) -> tuple[str, float]:
    """The value the acceptance script reads (same walk as /work/shared/acceptance/ultrasound-busbra)."""
    found = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, path + [str(k).lower()])
        elif isinstance(o, (int, float)) and not isinstance(o, bool):
            p = "/".join(path)
            if ("auroc" in p or "auc" in p) and "pr" not in path[-1] and "ci" not in path[-1] and 0 <= o <= 1:
                found.append((p, o))

    walk(summary, [])
    pooled = [x for x in found if "pool" in x[0] or "mean" in x[0] or "overall" in x[0]]
    return (pooled or found)[0]


def test_summary_pools_folds_and_runs_the_clinical_analyses():
    rng = np.random.default_rng(0)
    folds = [_fold(f, rng) for f in (1, 2, 3)]
    s = summarise_cv(folds, n_boot=50, seed=0)
    rows = [r for f in folds for r in f["rows"]]
    y = np.array([r["malignant"] for r in rows])
    p = np.array([r["p_malignant"] for r in rows])
    b = np.array([r["birads"] for r in rows])
    m = s["pooled"]["malignant"]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["auroc_ci95"][0] <= m["auroc"] <= m["auroc_ci95"][1]
    assert s["per_fold"]["2"]["malignant"]["n"] == 60
    loc = s["pooled"]["localisation_malignant_images"]
    assert loc["n_images"] == 60 and loc["pointing_game"] == pytest.approx((1 * 1 + 2 * 2 + 3 * 3) / 6 * 0.1)
    c = s["clinical"]
    sens = float(((b >= 4) & (y == 1)).sum() / y.sum())
    assert c["reader"]["operating_point"]["sensitivity"] == pytest.approx(sens)
    assert c["model_at_reader_sensitivity"]["sensitivity"] >= sens - 1e-12
    zb, zp = (b - b.mean()) / b.std(), (p - p.mean()) / p.std()
    assert c["hybrid"]["auroc"] == pytest.approx(roc_auc_score(y, 0.5 * zb + 0.5 * zp))
    assert set(c["triage"]) == {"rule_out", "rule_in"}
    assert _acceptance_value(s) == ("pooled/malignant/auroc", pytest.approx(m["auroc"]))


def test_busbra_bags_from_the_adapter(shared_data):
    from breastscreen.data.adapters import adapt_bus_bra
    from breastscreen.data.bags import breasts_from_exams

    breasts = breasts_from_exams(adapt_bus_bra(shared_data / "bus-bra"), require_labels=True)
    assert len(breasts) == 1064
    assert {b.meta["fold"] for b in breasts} == {1, 2, 3, 4, 5}
    assert sum(len(b.images) for b in breasts) == 1875
    assert sum(b.targets[1] for b in breasts) == sum(1 for b in breasts if b.label.malignant == 1)
    assert all(2 <= b.meta["birads"] <= 5 for b in breasts)
