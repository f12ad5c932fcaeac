"""Bootstrap against scipy.stats.bootstrap, DeLong against brute force, permutation test on known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from breastscreen.evaluation.stats import (
    AP_METRIC,
    AUC_METRIC,
    Resampler,
    bootstrap_metric,
    delong_ci,
    delong_covariance,
    delong_test,
    permutation_test,
)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(0.6 * y + rng.random(n), 2)
    return y, s


def test_bootstrap_percentile_ci_equals_scipy():
    y, s = _data()
    ref = stats.bootstrap((y, s), lambda a, b: roc_auc_score(a, b), paired=True, vectorized=False,
                          n_resamples=400, method="percentile", rng=np.random.default_rng(11))
    ours = bootstrap_metric(AUC_METRIC, y, s, n_resamples=400, seed=11)  # vectorised weighted path
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    # The generic path (any metric, resampled copies) gives the same numbers.
    generic = bootstrap_metric(lambda a, b: average_precision_score(a, b), y, s, n_resamples=400, seed=11)
    ref_ap = stats.bootstrap((y, s), lambda a, b: average_precision_score(a, b), paired=True, vectorized=False,
                             n_resamples=400, method="percentile", rng=np.random.default_rng(11))
    assert generic.ci_low == pytest.approx(ref_ap.confidence_interval.low, abs=1e-12)
    assert generic.ci_high == pytest.approx(ref_ap.confidence_interval.high, abs=1e-12)
    fast = bootstrap_metric(AP_METRIC, y, s, n_resamples=400, seed=11)
    np.testing.assert_allclose(fast.samples, generic.samples, atol=1e-12)


def test_bootstrap_mean_equals_scipy_for_other_confidence():
    x = np.random.default_rng(2).normal(size=80)
    ref = stats.bootstrap((x,), np.mean, n_resamples=300, method="percentile", confidence_level=0.9,
                          rng=np.random.default_rng(4))
    ours = bootstrap_metric(lambda a: float(np.mean(a)), x, n_resamples=300, seed=4, confidence=0.9)
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_cluster_bootstrap_draws_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    rs = Resampler(groups, n_resamples=50, seed=1)
    idx = rs.cluster_index(groups)
    for W in rs.weight_chunks(idx):
        # cases of one patient always share a weight
        assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 4]).all() and (W[:, 4] == W[:, 5]).all()
        assert (rs.counts().sum(axis=1) == 3).all()
    x = np.array([1.0, 1.0, 5.0, 2.0, 2.0, 2.0])
    res = bootstrap_metric(lambda a: float(np.mean(a)), x, groups=groups, n_resamples=50, seed=1)
    assert res.value == pytest.approx(13 / 6)
    assert res.n_failed == 0


def _brute_delong(y, scores):
    """Textbook DeLong (1988): structural components by explicit O(mn) pair comparisons."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    k, m, n = scores.shape[0], pos.shape[1], neg.shape[1]
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        psi = (pos[r][:, None] > neg[r][None, :]) + 0.5 * (pos[r][:, None] == neg[r][None, :])
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def test_delong_matches_brute_force():
    rng = np.random.default_rng(8)
    for _ in range(20):
        n = int(rng.integers(8, 60))
        y = rng.integers(0, 2, n)
        if min(y.sum(), n - y.sum()) < 2:
            continue
        s1 = np.round(y + rng.normal(size=n), 1)
        s2 = np.round(0.5 * y + rng.normal(size=n), 1)
        aucs, cov = delong_covariance(y, np.vstack([s1, s2]))
        b_aucs, b_cov = _brute_delong(y, np.vstack([s1, s2]))
        np.testing.assert_allclose(aucs, b_aucs, atol=1e-12)
        np.testing.assert_allclose(cov, b_cov, atol=1e-12)
        assert aucs[0] == pytest.approx(roc_auc_score(y, s1))


def test_delong_hand_computed_small_case():
    # positives 0.9, 0.6; negatives 0.7, 0.2, 0.1
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.7, 0.2, 0.1])
    # V10: 0.9 beats 3/3 -> 1; 0.6 beats 2/3. V01: 0.7 beaten by 1/2; 0.2, 0.1 by 2/2 -> 1.
    # AUC = 5/6; var(V10) = ((1-5/6)^2 + (2/3-5/6)^2)/1 = 1/18; var(V01) = ((.5-5/6)^2 + 2(1-5/6)^2)/2 = 1/12
    # var(AUC) = (1/18)/2 + (1/12)/3 = 1/36 + 1/36 = 1/18
    d = delong_ci(y, s)
    assert d["auc"] == pytest.approx(5 / 6)
    assert d["se"] == pytest.approx(np.sqrt(1 / 18))
    assert d["ci_high"] == 1.0  # clipped


def test_delong_test_identical_scores_and_difference():
    y, s = _data(120, 3)
    t = delong_test(y, s, s)
    assert t["difference"] == 0 and t["p_value"] == 1.0
    rng = np.random.default_rng(0)
    noisy = s + rng.normal(0, 2, s.size)
    t = delong_test(y, s, noisy)
    assert t["difference"] == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, noisy))
    assert t["ci_low"] < t["difference"] < t["ci_high"]
    assert 0 <= t["p_value"] <= 1


def test_permutation_known_answer_two_cases():
    # One cancer, one benign. Model: AUC 1; reader: AUC 0. Of the 4 equally likely swap patterns only
    # "no swap" reaches the observed difference 1 (single swaps give 0, both give -1): p = 1/4.
    y = np.array([1, 0])
    res = permutation_test(y, np.array([0.9, 0.1]), np.array([0.2, 0.8]), n_trials=20_000, seed=1)
    assert res["observed_difference"] == 1.0
    assert res["p_value"] == pytest.approx(0.25, abs=0.01)


def test_permutation_matches_exact_enumeration():
    rng = np.random.default_rng(4)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    m = np.round(y * 0.8 + rng.random(8), 2)
    r = np.round(y * 0.2 + rng.random(8), 2)
    obs = roc_auc_score(y, m) - roc_auc_score(y, r)
    hits = 0
    for swap in itertools.product([False, True], repeat=8):
        sw = np.array(swap)
        a, b = np.where(sw, r, m), np.where(sw, m, r)
        hits += (roc_auc_score(y, a) - roc_auc_score(y, b)) >= obs - 1e-12
    exact = hits / 256
    res = permutation_test(y, m, r, n_trials=10_000, seed=0)
    assert res["p_value"] == pytest.approx(exact, abs=0.015)
    same = permutation_test(y, m, m, n_trials=500, seed=0)
    assert same["p_value"] == 1.0
