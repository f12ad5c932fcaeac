"""Operating points: sensitivity, specificity, PPV, NPV and biopsy rate at a threshold, at a
threshold matched to a target sensitivity or specificity, TNR at fixed FNR, triage points.

Conventions (documented in docs/evaluation.md):

* a case is *called positive* (biopsy recommended / escalated) when ``score >= threshold``;
* ``threshold_for_sensitivity(target)`` is the **highest** threshold whose sensitivity is at
  least ``target`` (fewest false positives while missing at most ``(1 - target)`` of the
  cancers); the threshold is one of the observed scores;
* ``threshold_for_specificity(target)`` is the **lowest** threshold whose specificity is at
  least ``target``; when even calling nothing positive is needed, the threshold is just above
  the highest score;
* PPV = TP / (TP + FP) (biopsies that found cancer / biopsies recommended), NPV = TN / (TN + FN),
  biopsy rate = (TP + FP) / n.  Undefined ratios (0/0) are NaN.

Every function has a weighted, vectorised twin on :class:`~breastscreen.evaluation.metrics.RankedScores`
(weights ``W[b, n]``) used by the bootstrap; both give identical numbers for unit weights.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from breastscreen.evaluation.metrics import GroupCounts, RankedScores

__all__ = [
    "confusion_at_threshold",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "operating_point",
    "tnr_at_fnr",
    "triage_points",
    "weighted_at_threshold",
    "weighted_at_sensitivity",
    "weighted_at_specificity",
    "DEFAULT_FNRS",
]

DEFAULT_FNRS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05)
_TOL = 1e-9


def _check_target(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        n = tp + fp + tn + fn
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "biopsy_rate": (tp + fp) / n,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
        }


def _counts_from_group(c: GroupCounts, g: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP, FP, TN, FN per row when groups ``>= g[row]`` are called positive."""
    rows = np.arange(c.cp.shape[0])
    fn = c.cp[rows, g]
    tn = c.cn[rows, g]
    return c.ptot - fn, c.ntot - tn, tn, fn


def _group_for_sensitivity(c: GroupCounts, target: float) -> np.ndarray:
    ptot = c.ptot[:, None]
    allowed = (1.0 - target) * ptot + _TOL * np.maximum(ptot, 1)
    # FN below group g never decreases with g: the last group (g < G) that satisfies the bound wins.
    return np.maximum((c.cp[:, :-1] <= allowed).sum(axis=1) - 1, 0)


def _group_for_specificity(c: GroupCounts, target: float) -> np.ndarray:
    G = c.P.shape[1]
    ntot = c.ntot[:, None]
    fp = ntot - c.cn  # FP when groups >= g are positive, g = 0..G (G: nothing positive)
    allowed = (1.0 - target) * ntot + _TOL * np.maximum(ntot, 1)
    return (G + 1) - (fp <= allowed).sum(axis=1)


GroupsArg = "tuple[np.ndarray, np.ndarray] | GroupCounts | None"


def _counts_arg(r: RankedScores, W: np.ndarray | None, groups) -> GroupCounts:
    if isinstance(groups, GroupCounts):
        return groups
    P, N = groups if groups is not None else r.group_weights(W)
    return GroupCounts.build(P, N)


def weighted_at_threshold(r: RankedScores, threshold: float, W: np.ndarray | None = None,
                          groups: GroupsArg = None) -> dict[str, np.ndarray]:
    """Rates per row of ``W`` when ``score >= threshold`` is called positive.

    ``groups`` may pass ``r.group_weights(W)`` (or a :class:`GroupCounts` of it) already computed.
    """
    c = _counts_arg(r, W, groups)
    g = np.full(c.P.shape[0], int(np.searchsorted(r.values, threshold, side="left")))
    return _rates(*_counts_from_group(c, g))


def weighted_at_sensitivity(r: RankedScores, target: float, W: np.ndarray | None = None,
                            groups: GroupsArg = None) -> dict[str, np.ndarray]:
    """Rates per row of ``W`` at the highest threshold with sensitivity >= ``target``."""
    target = _check_target("target sensitivity", target)
    c = _counts_arg(r, W, groups)
    return _rates(*_counts_from_group(c, _group_for_sensitivity(c, target)))


def weighted_at_specificity(r: RankedScores, target: float, W: np.ndarray | None = None,
                            groups: GroupsArg = None) -> dict[str, np.ndarray]:
    """Rates per row of ``W`` at the lowest threshold with specificity >= ``target``."""
    target = _check_target("target specificity", target)
    c = _counts_arg(r, W, groups)
    return _rates(*_counts_from_group(c, _group_for_specificity(c, target)))


def _threshold_of_group(r: RankedScores, g: int) -> float:
    if g < r.values.size:
        return float(r.values[g])
    top = float(r.values[-1]) if r.values.size else 0.0
    return float(np.nextafter(top, np.inf))


def _scalar(d: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in d.items()}


def confusion_at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """Counts and rates when ``score >= threshold`` is called positive."""
    out = _scalar(weighted_at_threshold(RankedScores.build(y, s), float(threshold)))
    out["threshold"] = float(threshold)
    return out


def threshold_for_sensitivity(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """Highest threshold (an observed score) whose sensitivity is at least ``target``."""
    r = RankedScores.build(y, s)
    if r.y.sum() == 0:
        raise ValueError("a sensitivity target needs at least one positive case")
    c = _counts_arg(r, None, None)
    return _threshold_of_group(r, int(_group_for_sensitivity(c, _check_target("target sensitivity", target))[0]))


def threshold_for_specificity(y: np.ndarray, s: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity is at least ``target`` (just above the top score if none)."""
    r = RankedScores.build(y, s)
    if (1 - r.y).sum() == 0:
        raise ValueError("a specificity target needs at least one negative case")
    c = _counts_arg(r, None, None)
    return _threshold_of_group(r, int(_group_for_specificity(c, _check_target("target specificity", target))[0]))


def operating_point(
    y: np.ndarray,
    s: np.ndarray,
    *,
    threshold: float | None = None,
    sensitivity: float | None = None,
    specificity: float | None = None,
) -> dict[str, float]:
    """Operating point at a given threshold, or matched to a target sensitivity or specificity.

    Exactly one of ``threshold``, ``sensitivity`` or ``specificity`` must be given.
    """
    given = [k for k, v in (("threshold", threshold), ("sensitivity", sensitivity), ("specificity", specificity)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of threshold, sensitivity, specificity; got {given or 'none'}")
    if threshold is None:
        threshold = (
            threshold_for_sensitivity(y, s, sensitivity)
            if sensitivity is not None
            else threshold_for_specificity(y, s, specificity)  # type: ignore[arg-type]
        )
    return confusion_at_threshold(y, s, threshold)


def tnr_at_fnr(y: np.ndarray, s: np.ndarray, fnrs: Sequence[float] = DEFAULT_FNRS) -> dict[str, dict[str, float]]:
    """True-negative rate at the highest threshold whose false-negative rate is at most each ``f``.

    The lesion paper's table: the fraction of benign cases (unnecessary biopsies) avoided while
    missing at most a fraction ``f`` of the cancers.  Keys are the FNRs formatted like ``"0.01"``.
    """
    out = {}
    for f in fnrs:
        f = _check_target("false-negative rate", f)
        op = operating_point(y, s, sensitivity=1.0 - f)
        out[f"{f:g}"] = {"tnr": op["specificity"], "fnr": 1.0 - op["sensitivity"], "threshold": op["threshold"],
                         "tn": op["tn"], "fn": op["fn"]}
    return out


def triage_points(
    y: np.ndarray,
    s: np.ndarray,
    *,
    sensitivity: float = 0.99,
    specificity: float = 0.99,
) -> dict[str, dict[str, float]]:
    """Two triage operating points.

    ``rule_out``: highest threshold with sensitivity >= ``sensitivity``; cases below it are
    dismissed; reports the NPV among dismissed cases and the fraction dismissed.
    ``rule_in``: lowest threshold with specificity >= ``specificity``; cases at or above it are
    escalated; reports their PPV and the fraction escalated.
    """
    lo = operating_point(y, s, sensitivity=sensitivity)
    hi = operating_point(y, s, specificity=specificity)
    return {
        "rule_out": {"target_sensitivity": float(sensitivity), "threshold": lo["threshold"], "npv": lo["npv"],
                     "fraction_dismissed": 1.0 - lo["biopsy_rate"], "sensitivity": lo["sensitivity"],
                     "missed_cancers": lo["fn"]},
        "rule_in": {"target_specificity": float(specificity), "threshold": hi["threshold"], "ppv": hi["ppv"],
                    "fraction_escalated": hi["biopsy_rate"], "specificity": hi["specificity"]},
    }
