"""Ranking metrics as pure functions (AUROC, average precision, curves, BI-RADS macAUC).

Every metric here has two forms that give identical numbers:

* a plain form, ``roc_auc(y, s)``, on 1-D arrays, and
* a weighted, vectorised form on a :class:`RankedScores` object and a weight matrix
  ``W[b, n]`` (one row per bootstrap resample; integer weights = how often each case was
  drawn).  A weighted metric with integer weights equals the plain metric on the sample with
  every case repeated that many times, so bootstrap resamples never copy the data and never
  call scikit-learn: one sort of the scores serves all resamples.

Conventions: labels are 0/1, higher score = more suspicious, a case is called positive when
``score >= threshold``.  Tied scores form one group and count half in the AUROC (Mann-Whitney
statistic), exactly like :func:`sklearn.metrics.roc_auc_score`.  Average precision is
scikit-learn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
score values in decreasing order (no interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "RankedScores",
    "roc_auc",
    "average_precision",
    "roc_curve_points",
    "pr_curve_points",
    "entropy",
    "one_vs_rest_aucs",
    "macro_auc",
    "check_binary",
    "auc_from_groups",
    "ap_from_groups",
    "GroupCounts",
]


def check_binary(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y, s)`` as 1-D float arrays after checking shapes, 0/1 labels and finite scores."""
    y = np.asarray(y, dtype=float).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]
        raise ValueError(f"labels must be 0 or 1, got values {bad.tolist()}")
    if y.size and not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN/inf); drop unknown cases first")
    return y, s


@dataclass(frozen=True)
class RankedScores:
    """Scores sorted once and grouped by distinct value, ready for weighted metrics.

    ``order`` sorts the cases by increasing score; ``starts`` are the first positions of each
    group of equal scores in that order; ``values`` the distinct scores (increasing).
    """

    y: np.ndarray
    s: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    values: np.ndarray

    @classmethod
    def build(cls, y: np.ndarray, s: np.ndarray) -> "RankedScores":
        """Sort and group ``s`` (labels ``y`` 0/1)."""
        y, s = check_binary(y, s)
        order = np.argsort(s, kind="mergesort")
        ss = s[order]
        if ss.size == 0:
            starts = np.zeros(0, dtype=np.intp)
        else:
            starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        return cls(y=y, s=s, order=order, starts=starts, values=ss[starts] if ss.size else ss)

    @property
    def n(self) -> int:
        """Number of cases."""
        return int(self.y.size)

    def group_weights(self, W: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative weight per score group, ``[b, G]`` each (increasing score).

        ``W`` is ``[b, n]`` case weights in the original case order; ``None`` means one row of ones.
        """
        if W is None:
            W = np.ones((1, self.n))
        W = np.asarray(W)
        if W.ndim == 1:
            W = W[None, :]
        if self.n == 0:
            z = np.zeros((W.shape[0], 0))
            return z, z
        # Gather in the caller's (small integer) dtype, then convert: less memory traffic.
        Ws = W[:, self.order].astype(np.float64)
        ys = self.y[self.order]
        pos = Ws * ys
        if self.starts.size == self.n:  # no ties: every case is its own group
            return pos, Ws - pos
        pos = np.add.reduceat(pos, self.starts, axis=1)
        tot = np.add.reduceat(Ws, self.starts, axis=1)
        return pos, tot - pos

    # ----- weighted metrics, each returns shape [b] -----
    def auc(self, W: np.ndarray | None = None) -> np.ndarray:
        """Weighted AUROC per row of ``W`` (NaN where a row lacks positives or negatives)."""
        return auc_from_groups(*self.group_weights(W))

    def average_precision(self, W: np.ndarray | None = None) -> np.ndarray:
        """Weighted average precision per row of ``W`` (NaN where a row has no positives)."""
        return ap_from_groups(*self.group_weights(W))


@dataclass(frozen=True)
class GroupCounts:
    """Per-group weights and their running sums, shared by every metric of one resample block.

    ``cp[:, g]`` / ``cn[:, g]`` are the positive / negative weight strictly below group ``g``
    (``g = 0..G``), so calling groups ``>= g`` positive gives ``TP = ptot - cp[:, g]`` and
    ``FP = ntot - cn[:, g]``.
    """

    P: np.ndarray
    N: np.ndarray
    cp: np.ndarray
    cn: np.ndarray

    @classmethod
    def build(cls, P: np.ndarray, N: np.ndarray) -> "GroupCounts":
        """Running sums of ``P`` and ``N`` ``[b, G]``."""
        b = P.shape[0]
        z = np.zeros((b, 1))
        return cls(P, N, np.concatenate([z, np.cumsum(P, axis=1)], axis=1),
                   np.concatenate([z, np.cumsum(N, axis=1)], axis=1))

    @property
    def ptot(self) -> np.ndarray:
        """Total positive weight per row."""
        return self.cp[:, -1]

    @property
    def ntot(self) -> np.ndarray:
        """Total negative weight per row."""
        return self.cn[:, -1]


def _as_counts(P: "np.ndarray | GroupCounts", N: np.ndarray | None) -> GroupCounts:
    return P if isinstance(P, GroupCounts) else GroupCounts.build(P, N)


def auc_from_groups(P: "np.ndarray | GroupCounts", N: np.ndarray | None = None) -> np.ndarray:
    """AUROC per row from per-group positive/negative weights ``[b, G]`` (increasing score) or a GroupCounts."""
    g = _as_counts(P, N)
    ptot, ntot = g.ptot, g.ntot
    num = (g.P * (g.cn[:, :-1] + 0.5 * g.N)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / (ptot * ntot)
    out[(ptot <= 0) | (ntot <= 0)] = np.nan
    return out


def ap_from_groups(P: "np.ndarray | GroupCounts", N: np.ndarray | None = None) -> np.ndarray:
    """Average precision per row from per-group weights ``[b, G]`` (increasing score) or a GroupCounts."""
    g = _as_counts(P, N)
    ptot, ntot = g.ptot, g.ntot
    tp = ptot[:, None] - g.cp[:, :-1]  # groups >= g called positive
    called = tp + (ntot[:, None] - g.cn[:, :-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(called > 0, tp / np.where(called > 0, called, 1.0), 0.0)
        out = (g.P * prec).sum(axis=1) / ptot
    out[ptot <= 0] = np.nan
    return out


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (ties count 1/2); NaN when only one class is present."""
    return float(RankedScores.build(y, s).auc()[0])


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision exactly as scikit-learn's ``average_precision_score``; NaN without positives."""
    return float(RankedScores.build(y, s).average_precision()[0])


def roc_curve_points(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """ROC curve: false-positive rate, true-positive rate and threshold at every distinct score.

    The first point is (0, 0) with threshold +inf (nothing called positive).
    """
    r = RankedScores.build(y, s)
    P, N = r.group_weights()
    P, N = P[0][::-1], N[0][::-1]
    tp = np.r_[0.0, np.cumsum(P)]
    fp = np.r_[0.0, np.cumsum(N)]
    ptot, ntot = tp[-1], fp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / ptot if ptot > 0 else np.full_like(tp, np.nan)
        fpr = fp / ntot if ntot > 0 else np.full_like(fp, np.nan)
    return {"fpr": fpr, "tpr": tpr, "threshold": np.r_[np.inf, r.values[::-1]]}


def pr_curve_points(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall points at every distinct score (decreasing threshold); no (0, 1) anchor."""
    r = RankedScores.build(y, s)
    P, N = r.group_weights()
    P, N = P[0][::-1], N[0][::-1]
    tp = np.cumsum(P)
    fp = np.cumsum(N)
    ptot = tp[-1] if tp.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / ptot if ptot > 0 else np.full_like(tp, np.nan)
        precision = tp / (tp + fp)
    return {"recall": recall, "precision": precision, "threshold": r.values[::-1]}


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (natural log) of each row of class probabilities; 0·log 0 = 0."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


def one_vs_rest_aucs(y_class: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUROC of each class against the rest, from class indices ``y_class`` and ``probs[n, k]``."""
    y_class = np.asarray(y_class)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != y_class.size:
        raise ValueError(f"probs must be [n, k] with n = {y_class.size}, got shape {probs.shape}")
    return np.array([roc_auc((y_class == k).astype(float), probs[:, k]) for k in range(probs.shape[1])])


def macro_auc(y_class: np.ndarray, probs: np.ndarray) -> float:
    """Macro-average of the one-vs-rest AUROCs (macAUC of Geras et al. 2017); NaN if any class is absent."""
    return float(np.mean(one_vs_rest_aucs(y_class, probs)))
