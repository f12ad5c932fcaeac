"""Reader scales, BI-RADS suspicion levels and hybrids on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from breastscreen.evaluation.io import EvaluationInputError
from breastscreen.evaluation.readers import detect_scale, hybrid_scores, validate_readers, zscore


def _df(rows):
    return pd.DataFrame(rows, columns=["reader_id", "exam_id", "side", "score"])


def test_scale_detection_and_birads_mapping():
    assert detect_scale(["1", "3", "4A", "5"]) == "birads"
    assert detect_scale(["1", "2", "5"]) == "birads"
    assert detect_scale(["0.1", "0.9"]) == "probability"
    assert detect_scale(["12.5", "80"]) == "percent"
    df = validate_readers(_df([
        ("a", "e1", "left", "1"), ("a", "e1", "right", "2"), ("a", "e2", "L", "3"), ("a", "e2", "R", "4A"),
        ("a", "e3", "l", "4B"), ("a", "e3", "r", "4C"), ("a", "e4", "Left", "5"), ("a", "e4", "Right", "4"),
        ("b", "e1", "L", "55"), ("b", "e1", "R", "5"),
    ]))
    a = df[df.reader_id == "a"]
    # 1 and 2 merge; 4 without a subcategory sits with 4B
    assert a.score.tolist() == [1, 1, 2, 3, 4, 5, 6, 4]
    assert set(a.side) == {"L", "R"}
    b = df[df.reader_id == "b"]
    assert b.scale.iloc[0] == "percent" and b.score.tolist() == [0.55, 0.05]


def test_forced_scale_and_errors():
    df = validate_readers(_df([("a", "e1", "L", "3"), ("a", "e2", "L", "4")]), scales={"a": "percent"})
    assert df.score.tolist() == [0.03, 0.04]
    with pytest.raises(EvaluationInputError, match="side must be"):
        validate_readers(_df([("a", "e1", "up", "3")]))
    with pytest.raises(EvaluationInputError, match="0 and 6"):
        validate_readers(_df([("a", "e1", "L", "4A"), ("a", "e2", "L", "6")]))
    with pytest.raises(EvaluationInputError, match="twice"):
        validate_readers(_df([("a", "e1", "L", "0.3"), ("a", "e1", "left", "0.4")]))
    with pytest.raises(EvaluationInputError, match=r"\[0, 1\]"):
        validate_readers(_df([("a", "e1", "L", "0.3"), ("a", "e2", "L", "-0.4")]), scales={"a": "probability"})


def test_hybrid_by_hand():
    r = np.array([0.2, 0.8])
    m = np.array([0.6, 0.4])
    np.testing.assert_allclose(hybrid_scores(r, m, 0.5), [0.4, 0.6])
    np.testing.assert_allclose(hybrid_scores(r, m, 0.25), [0.5, 0.5])
    np.testing.assert_allclose(hybrid_scores(r, m, 1.0), r)
    # z-scored: r -> [-1, 1], m -> [1, -1]; lambda 0.75 -> 0.75*(-1) + 0.25*1 = -0.5
    np.testing.assert_allclose(hybrid_scores(r, m, 0.75, standardize=True), [-0.5, 0.5])
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-np.sqrt(1.5), 0, np.sqrt(1.5)])
    assert (zscore(np.array([2.0, 2.0])) == 0).all()
    with pytest.raises(ValueError, match="lambda"):
        hybrid_scores(r, m, 1.5)
