"""Operating points, TNR at fixed FNR and triage points on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.evaluation.metrics import RankedScores
from breastscreen.evaluation.operating import (
    confusion_at_threshold,
    operating_point,
    threshold_for_sensitivity,
    threshold_for_specificity,
    tnr_at_fnr,
    triage_points,
    weighted_at_sensitivity,
    weighted_at_specificity,
)

# 4 cancers and 6 benign cases, scores chosen by hand.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05])


def test_confusion_at_threshold_by_hand():
    op = confusion_at_threshold(Y, S, 0.5)
    # called positive (>= 0.5): 0.9 0.8 0.6 (cancers) + 0.7 0.5 (benign)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (3, 2, 4, 1)
    assert op["sensitivity"] == pytest.approx(3 / 4)
    assert op["specificity"] == pytest.approx(4 / 6)
    assert op["ppv"] == pytest.approx(3 / 5)
    assert op["npv"] == pytest.approx(4 / 5)
    assert op["biopsy_rate"] == pytest.approx(5 / 10)


def test_matched_thresholds_by_hand():
    # Highest threshold with sensitivity >= 0.75 keeps 3 of 4 cancers: 0.6.
    assert threshold_for_sensitivity(Y, S, 0.75) == 0.6
    # Sensitivity 1.0 needs the lowest cancer score.
    assert threshold_for_sensitivity(Y, S, 1.0) == 0.3
    # Lowest threshold with specificity >= 5/6 (at most one false positive): above 0.5 -> 0.6.
    assert threshold_for_specificity(Y, S, 5 / 6) == 0.6
    # Specificity 1: above the top benign score 0.7 -> 0.8.
    assert threshold_for_specificity(Y, S, 1.0) == 0.8
    op = operating_point(Y, S, specificity=1.0)
    assert (op["tp"], op["fp"]) == (2, 0)
    with pytest.raises(ValueError, match="exactly one"):
        operating_point(Y, S, threshold=0.5, sensitivity=0.9)


def test_specificity_target_may_call_nothing_positive():
    y = np.array([1, 0, 0])
    s = np.array([0.2, 0.9, 0.1])
    t = threshold_for_specificity(y, s, 1.0)
    assert t > 0.9
    op = confusion_at_threshold(y, s, t)
    assert op["tp"] == 0 and op["fp"] == 0


def test_tnr_at_fnr_by_hand():
    y = np.r_[np.ones(100), np.zeros(10)]
    s = np.r_[np.linspace(0.3, 1.0, 100), np.linspace(0.0, 0.5, 10)]
    # benign scores 0, .0556, ..., .5; cancers start at 0.3 in steps of 0.7/99.
    out = tnr_at_fnr(y, s)
    assert set(out) == {"0", "0.01", "0.02", "0.03", "0.05"}
    # FNR 0: threshold 0.3 -> benign below 0.3 are 0, .056, .111, .167, .222, .278 -> 6/10
    assert out["0"]["tnr"] == pytest.approx(0.6)
    assert out["0"]["fn"] == 0
    # FNR <= 0.05 lets 5 cancers be missed: threshold = 6th lowest cancer = 0.3 + 5*0.7/99 = 0.3354
    # -> benign below it: the same 6 plus none (0.333 < 0.3354 is 0.3333) -> 7/10
    assert out["0.05"]["threshold"] == pytest.approx(0.3 + 5 * 0.7 / 99)
    assert out["0.05"]["tnr"] == pytest.approx(0.7)
    assert out["0.05"]["fn"] == 5


def test_triage_points_by_hand():
    tri = triage_points(Y, S, sensitivity=1.0, specificity=1.0)
    # rule-out at sensitivity 1: threshold 0.3, dismiss 0.2 0.1 0.05 (all benign) -> NPV 1, 3/10 dismissed
    assert tri["rule_out"]["threshold"] == 0.3
    assert tri["rule_out"]["npv"] == 1.0
    assert tri["rule_out"]["fraction_dismissed"] == pytest.approx(0.3)
    # rule-in at specificity 1: threshold 0.8, escalate 0.9 0.8 (cancers) -> PPV 1, 2/10 escalated
    assert tri["rule_in"]["ppv"] == 1.0
    assert tri["rule_in"]["fraction_escalated"] == pytest.approx(0.2)


def test_weighted_operating_points_equal_replicated_data():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(5, 40))
        y = rng.integers(0, 2, n)
        s = np.round(rng.random(n), 1)
        w = rng.integers(0, 3, n)
        idx = np.repeat(np.arange(n), w)
        yr, sr = y[idx], s[idx]
        if yr.size == 0 or yr.min() == yr.max():
            continue
        r = RankedScores.build(y, s)
        for t in (0.5, 0.8, 0.95):
            got = weighted_at_sensitivity(r, t, w[None].astype(float))
            want = operating_point(yr, sr, sensitivity=t)
            for k in ("tp", "fp", "tn", "fn"):
                assert got[k][0] == want[k]
            got = weighted_at_specificity(r, t, w[None].astype(float))
            want = operating_point(yr, sr, specificity=t)
            for k in ("tp", "fp", "tn", "fn"):
                assert got[k][0] == want[k]
