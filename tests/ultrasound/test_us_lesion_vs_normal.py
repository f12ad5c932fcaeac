"""Lesion-vs-normal AUROC and the CV summary's headline keys when derived-normal bags are held out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breastscreen.ultrasound.busbra import (
    _read_predictions,
    _write_predictions,
    lesion_vs_normal,
    summarise_cv,
)


def _row(fold: int, i: int, kind: str, benign: int, malignant: int, pb: float, pm: float) -> dict:
    return {"fold": fold, "breast_id": f"{kind}{fold}-{i}", "patient_id": f"p{fold}-{i}", "benign": benign,
            "malignant": malignant, "p_benign": pb, "p_malignant": pm, "birads": 4.0 if kind == "lesion" else float("nan"),
            "n_images": 1, "top_attention_image": "x.png", "bag": kind}


def test_crafted_case_gives_the_hand_computed_auroc():
    rows = [
        _row(1, 0, "lesion", 1, 0, 0.9, 0.1),  # benign lesion: score 0.9
        _row(1, 1, "lesion", 0, 1, 0.2, 0.6),  # malignant: 0.6
        _row(1, 2, "lesion", 1, 0, 0.3, 0.35),  # 0.35
        _row(1, 0, "normal", 0, 0, 0.5, 0.1),  # 0.5
        _row(1, 1, "normal", 0, 0, 0.1, 0.2),  # 0.2
    ]
    r = lesion_vs_normal(rows, n_boot=20)
    # pairs (lesion > normal): 0.9 > both, 0.6 > both, 0.35 > 0.2 only: 5 of 6
    assert r["auroc"] == pytest.approx(5 / 6)
    assert (r["n_lesion_bags"], r["n_normal_bags"]) == (3, 2) and r["per_fold_auroc"]["1"] == pytest.approx(5 / 6)
    assert "max(P(benign), P(malignant))" in r["score"]
    none = lesion_vs_normal(rows[:3], n_boot=20)
    assert none["auroc"] is None and "0 derived-normal" in none["reason"]


def _fold(fold: int, rng: np.random.Generator, n: int = 40) -> dict:
    y = (rng.random(n) < 0.4).astype(int)
    pm = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    rows = [_row(fold, i, "lesion", 1 - int(y[i]), int(y[i]), float(1 - pm[i]), float(pm[i])) for i in range(n)]
    # normals: low scores mostly, and a malignant probability that would change the malignant AUROC if counted
    rows += [_row(fold, i, "normal", 0, 0, float(0.4 * rng.random()), float(0.9 * rng.random())) for i in range(n // 2)]
    return {"fold": fold, "rows": rows, "n_train": 1, "n_val": 1, "n_test": n, "best_epoch": 1,
            "val_auroc_malignant": 0.5, "epochs_run": 1, "train_seconds": 1.0,
            "localisation": {"n_images": 10, "pointing_game": 0.2 * fold, "mean_iou": 0.1 * fold}}


def test_summary_keeps_malignant_figures_on_lesion_bags_and_adds_the_headline_keys():
    rng = np.random.default_rng(1)
    folds = [_fold(f, rng) for f in (1, 2)]
    s = summarise_cv(folds, n_boot=20, seed=0)
    lesion = [r for f in folds for r in f["rows"] if r["bag"] == "lesion"]
    normal = [r for f in folds for r in f["rows"] if r["bag"] == "normal"]
    y = np.array([r["malignant"] for r in lesion])
    assert s["pooled"]["malignant"]["auroc"] == pytest.approx(roc_auc_score(y, [r["p_malignant"] for r in lesion]))
    assert s["pooled"]["malignant"]["n"] == len(lesion) and s["clinical"]["n_breasts"] == len(lesion)
    yl = np.r_[np.ones(len(lesion)), np.zeros(len(normal))]
    score = [max(r["p_benign"], r["p_malignant"]) for r in lesion + normal]
    assert s["lesion_vs_normal_auroc"] == pytest.approx(roc_auc_score(yl, score))
    assert s["pointing_game"] == pytest.approx(0.3) and s["mean_iou"] == pytest.approx(0.15)


def test_prediction_files_carry_the_bag_kind_only_when_normals_exist(tmp_path):
    rng = np.random.default_rng(2)
    rows = _fold(3, rng, n=6)["rows"]
    _write_predictions(tmp_path / "p.csv", rows)
    back = _read_predictions(tmp_path / "p.csv")
    assert [r["bag"] for r in back] == [r["bag"] for r in rows]
    lesion_only = [r for r in rows if r["bag"] == "lesion"]
    _write_predictions(tmp_path / "q.csv", lesion_only)
    assert "bag" not in (tmp_path / "q.csv").read_text().splitlines()[0]  # the earlier protocol's columns
    assert {r["bag"] for r in _read_predictions(tmp_path / "q.csv")} == {"lesion"}
