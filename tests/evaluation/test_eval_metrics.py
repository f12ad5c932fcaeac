"""Ranking metrics against scikit-learn (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from breastscreen.evaluation.metrics import (
    RankedScores,
    average_precision,
    entropy,
    macro_auc,
    one_vs_rest_aucs,
    pr_curve_points,
    roc_auc,
    roc_curve_points,
)


def _cases(seed: int = 0, n_cases: int = 150):
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        # Coarse rounding creates many ties, the hard case for rank metrics.
        s = np.round(rng.random(n) * rng.integers(1, 12), 1)
        yield rng, y, s


def test_auc_and_ap_match_sklearn_with_ties():
    for _, y, s in _cases():
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_weighted_metrics_equal_sklearn_sample_weight_and_replication():
    for rng, y, s in _cases(1):
        w = rng.integers(0, 4, y.size).astype(float)
        if y[w > 0].min() == y[w > 0].max():
            continue
        r = RankedScores.build(y, s)
        assert r.auc(w)[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
        assert r.average_precision(w)[0] == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)
        idx = np.repeat(np.arange(y.size), w.astype(int))
        assert r.auc(w)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_weighted_rows_are_independent():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    W = rng.integers(0, 3, (5, 50))
    r = RankedScores.build(y, s)
    got = r.auc(W)
    for i in range(5):
        if y[W[i] > 0].min() != y[W[i] > 0].max():
            assert got[i] == pytest.approx(roc_auc_score(y, s, sample_weight=W[i]), abs=1e-12)


def test_hand_worked_auc():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1 -> 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
    # AP: threshold 0.8 -> P=1, R=.5; threshold 0.4 -> P=2/3, R=1: 0.5*1 + 0.5*2/3
    assert average_precision([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.5 + 1 / 3)


def test_single_class_is_nan_and_bad_input_raises():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0, 1, 1], [0.1, 0.2])


def test_curves_match_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)
    ours = roc_curve_points(y, s)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(ours["fpr"], fpr)
    np.testing.assert_allclose(ours["tpr"], tpr)
    np.testing.assert_allclose(ours["threshold"][1:], thr[1:])
    pr = pr_curve_points(y, s)
    p, r, t = precision_recall_curve(y, s)
    # sklearn lists increasing thresholds and appends (recall 0, precision 1).
    np.testing.assert_allclose(pr["precision"], p[:-1][::-1])
    np.testing.assert_allclose(pr["recall"], r[:-1][::-1])
    np.testing.assert_allclose(pr["threshold"], t[::-1])


def test_macro_auc_matches_sklearn_ovr_and_entropy():
    rng = np.random.default_rng(7)
    yc = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3))
    logits[np.arange(120), yc] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert macro_auc(yc, p) == pytest.approx(roc_auc_score(yc, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert one_vs_rest_aucs(yc, p)[1] == pytest.approx(roc_auc_score(yc == 1, p[:, 1]))
    assert entropy(np.array([[1.0, 0.0, 0.0]]))[0] == 0.0
    assert entropy(np.array([[1 / 3, 1 / 3, 1 / 3]]))[0] == pytest.approx(np.log(3))
