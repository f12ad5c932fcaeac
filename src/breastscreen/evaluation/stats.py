"""Statistics that wrap the metrics: percentile bootstrap, DeLong's test, permutation test.

Bootstrap
    :class:`Resampler` draws ``n_resamples`` resamples of *clusters* (patients when patient ids
    exist, else exams, else single cases) with replacement and returns how often each cluster
    was drawn.  A case's weight in a resample is its cluster's count.  With one case per
    cluster the draws are exactly those of :func:`scipy.stats.bootstrap` for the same seed
    (``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``), and the percentile
    interval uses the same quantile rule, so both give the same interval.
    :func:`bootstrap_metric` wraps any metric ``fn(*arrays) -> float``; a metric that
    also offers a weighted, vectorised form (``fn.weighted(*arrays, W) -> [b]``) is computed
    without copying the data.

DeLong
    Fast midrank algorithm (Sun & Xu 2014, IEEE SPL 21:1389), O(n log n) per score vector.

Permutation test
    One-sided test that a model's metric exceeds a reader's: on each trial every case's model
    and reader scores are swapped with probability 1/2; p = (1 + #{trials with a difference
    >= observed}) / (1 + trials).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from scipy import special, stats as sps

from breastscreen.evaluation.metrics import RankedScores, check_binary

__all__ = [
    "Resampler",
    "BootstrapResult",
    "percentile_interval",
    "bootstrap_metric",
    "delong_covariance",
    "delong_ci",
    "delong_test",
    "permutation_test",
    "midrank",
]


# --------------------------------------------------------------------------- bootstrap
class Resampler:
    """Cluster bootstrap draws shared by every metric of one evaluation (paired resamples).

    ``clusters`` gives each case's cluster label (patient id); ``None`` makes every case its
    own cluster.  The draws depend only on the number of clusters, ``n_resamples``, ``seed``;
    cases map to clusters with :meth:`cluster_index`.
    """

    def __init__(self, clusters: Sequence[Any] | np.ndarray | int, n_resamples: int = 1000, seed: int = 0,
                 chunk: int = 100) -> None:
        if int(n_resamples) < 1:
            raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if isinstance(clusters, (int, np.integer)):
            self.labels = np.arange(int(clusters))
        else:
            self.labels = np.unique(np.asarray(clusters).astype(str))
        self.n_clusters = int(self.labels.size)
        if self.n_clusters == 0:
            raise ValueError("cannot bootstrap an empty set of cases")
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.chunk = int(chunk)
        self._counts: np.ndarray | None = None

    def cluster_index(self, clusters: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Positions of ``clusters`` (one label per case) among this resampler's clusters."""
        arr = np.asarray(clusters)
        if np.issubdtype(self.labels.dtype, np.integer):
            idx = arr.astype(np.intp)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_clusters):
                raise ValueError("cluster index out of range")
            return idx
        arr = arr.astype(str)
        idx = np.searchsorted(self.labels, arr)
        idx = np.clip(idx, 0, self.n_clusters - 1)
        if arr.size and not (self.labels[idx] == arr).all():
            missing = sorted(set(arr[self.labels[idx] != arr].tolist()))[:5]
            raise ValueError(f"cluster ids not known to the resampler: {missing}")
        return idx

    def counts(self) -> np.ndarray:
        """``[n_resamples, n_clusters]`` draw counts (computed once; small integer dtype)."""
        if self._counts is None:
            rng = np.random.default_rng(self.seed)
            C = self.n_clusters
            parts = []
            for start in range(0, self.n_resamples, self.chunk):
                b = min(self.chunk, self.n_resamples - start)
                draws = rng.integers(0, C, (b, C))
                flat = (draws + (np.arange(b) * C)[:, None]).ravel()
                parts.append(np.bincount(flat, minlength=b * C).reshape(b, C).astype(np.int32))
            counts = np.concatenate(parts, axis=0)
            self._counts = counts.astype(np.uint8) if counts.max() < 256 else counts
        return self._counts

    def weight_chunks(self, case_clusters: np.ndarray) -> Iterator[np.ndarray]:
        """Yield float weight matrices ``[b, n_cases]`` chunk by chunk (cases given as cluster positions)."""
        counts = self.counts()
        for start in range(0, self.n_resamples, self.chunk):
            yield counts[start:start + self.chunk][:, case_clusters].astype(np.float64)

    def indices(self, case_clusters: np.ndarray) -> Iterator[np.ndarray]:
        """Yield, per resample, the case indices of the resampled data set (cases repeated by count)."""
        counts = self.counts()
        pos = np.arange(case_clusters.size)
        for row in counts:
            yield np.repeat(pos, row[case_clusters].astype(np.intp))


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval (linear quantile interpolation, as scipy's bootstrap); NaNs dropped."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(x, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass
class BootstrapResult:
    """A metric's value on the data, its percentile CI and the bootstrap distribution."""

    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    n_failed: int
    samples: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the samples)."""
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "confidence": self.confidence,
                "n_resamples": self.n_resamples, "n_failed": self.n_failed}


def summarize(value: float, samples: np.ndarray, confidence: float = 0.95) -> BootstrapResult:
    """Wrap a point value and its bootstrap samples into a :class:`BootstrapResult`."""
    samples = np.asarray(samples, dtype=float)
    lo, hi = percentile_interval(samples, confidence)
    return BootstrapResult(float(value), lo, hi, confidence, int(samples.size), int((~np.isfinite(samples)).sum()),
                           samples)


def bootstrap_metric(
    fn: Callable[..., float],
    *arrays: np.ndarray,
    groups: Sequence[Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    resampler: Resampler | None = None,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``fn(*arrays)``, resampling cases (or ``groups``) with replacement.

    Resamples where ``fn`` is undefined (NaN, e.g. no positives drawn) are dropped from the
    interval and counted in ``n_failed``.  A metric with a ``weighted`` attribute
    (``fn.weighted(*arrays, W) -> [b]``) is evaluated chunk-wise on weight matrices instead
    of on copied resamples.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_metric needs at least one data array")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"all arrays must have the same length, got {[a.shape[0] for a in arrays]}")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups must have one entry per case ({n}), got {len(groups)}")
    if resampler is None:
        resampler = Resampler(groups if groups is not None else n, n_resamples=n_resamples, seed=seed)
    case_clusters = resampler.cluster_index(groups if groups is not None else np.arange(n))
    value = float(fn(*arrays))
    weighted = getattr(fn, "weighted", None)
    if weighted is not None:
        samples = np.concatenate([np.asarray(weighted(*arrays, W), dtype=float)
                                  for W in resampler.weight_chunks(case_clusters)])
    else:
        out = []
        for idx in resampler.indices(case_clusters):
            try:
                out.append(float(fn(*(a[idx] for a in arrays))))
            except ValueError:
                # A resample can miss a class entirely; such draws count as failed, not as errors.
                out.append(float("nan"))
        samples = np.asarray(out)
    return summarize(value, samples, confidence)


def _auc_metric(y: np.ndarray, s: np.ndarray) -> float:
    return float(RankedScores.build(y, s).auc()[0])


def _ap_metric(y: np.ndarray, s: np.ndarray) -> float:
    return float(RankedScores.build(y, s).average_precision()[0])


_auc_metric.weighted = lambda y, s, W: RankedScores.build(y, s).auc(W)  # type: ignore[attr-defined]
_ap_metric.weighted = lambda y, s, W: RankedScores.build(y, s).average_precision(W)  # type: ignore[attr-defined]
AUC_METRIC = _auc_metric
AP_METRIC = _ap_metric


# --------------------------------------------------------------------------- DeLong
def midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based; ties get the mean of their ranks) in O(n log n)."""
    x = np.asarray(x, dtype=float)
    return sps.rankdata(x, method="average")


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``scores[k, n]`` sharing labels ``y``.

    Uses the midrank formulation of Sun & Xu (2014): the structural components are
    ``V10_i = (R_i - Rpos_i) / n`` for positive ``i`` and ``V01_j = 1 - (R_j - Rneg_j) / m``
    for negative ``j``, where ``R`` are midranks among all cases, ``Rpos``/``Rneg`` midranks
    within the positives/negatives.
    """
    y = np.asarray(y, dtype=float).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if scores.shape[1] != y.size:
        raise ValueError(f"scores must be [k, {y.size}], got {scores.shape}")
    check_binary(y, scores[0])
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative cases, got {m} and {n}")
    k = scores.shape[0]
    aucs = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        s = scores[r]
        rx, ry = midrank(s[pos]), midrank(s[~pos])
        rz = midrank(s)
        aucs[r] = (rz[pos].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (rz[pos] - rx) / n
        v01[r] = 1.0 - (rz[~pos] - ry) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_ci(y: np.ndarray, s: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """AUROC with DeLong standard error and Wald CI (clipped to [0, 1])."""
    aucs, cov = delong_covariance(y, np.asarray(s)[None, :])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = special.ndtri(0.5 + confidence / 2.0)
    auc = float(aucs[0])
    return {"auc": auc, "se": se, "ci_low": max(0.0, auc - z * se), "ci_high": min(1.0, auc + z * se),
            "confidence": confidence}


def delong_test(y: np.ndarray, s1: np.ndarray, s2: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """DeLong test of two correlated AUCs (same cases): difference AUC1 - AUC2, its CI, z and two-sided p."""
    aucs, cov = delong_covariance(y, np.vstack([s1, s2]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(var, 0.0)))
    zq = special.ndtri(0.5 + confidence / 2.0)
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p = float(2.0 * special.ndtr(-abs(z)))
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "difference": diff, "se": se,
            "ci_low": diff - zq * se, "ci_high": diff + zq * se, "z": float(z), "p_value": p,
            "confidence": confidence}


# --------------------------------------------------------------------------- permutation
def _auc_rows(y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``S`` ``[t, n]`` against labels ``y`` via midranks (ties 1/2)."""
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    ranks = sps.rankdata(S, axis=1, method="average")
    return (ranks[:, pos].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


def permutation_test(
    y: np.ndarray,
    model: np.ndarray,
    reader: np.ndarray,
    *,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "auroc",
    n_trials: int = 10_000,
    seed: int = 0,
    chunk: int = 500,
) -> dict[str, float]:
    """One-sided paired permutation test of H1: metric(model) > metric(reader).

    On each trial each case's model and reader scores are swapped with probability 1/2 (the
    null: the two score sources are exchangeable).  ``metric`` is ``"auroc"`` (vectorised),
    ``"auprc"`` or any ``fn(y, s) -> float``.  Scores must be on a common scale (z-score them
    first when a reader gives BI-RADS).
    """
    y, model = check_binary(y, model)
    _, reader = check_binary(y, reader)
    if int(n_trials) < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("the permutation test needs both positive and negative cases")
    if metric == "auroc":
        def rows(S: np.ndarray) -> np.ndarray:
            return _auc_rows(y, S)
        fn = None
    else:
        fn = _ap_metric if metric == "auprc" else metric
        if not callable(fn):
            raise ValueError(f"metric must be 'auroc', 'auprc' or a callable, got {metric!r}")

        def rows(S: np.ndarray) -> np.ndarray:
            return np.array([fn(y, s) for s in S])
    observed = float(rows(model[None])[0] - rows(reader[None])[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    done = 0
    diffs = []
    while done < n_trials:
        t = min(chunk, n_trials - done)
        swap = rng.random((t, y.size)) < 0.5
        a = np.where(swap, reader, model)
        b = np.where(swap, model, reader)
        d = rows(a) - rows(b)
        # A tiny tolerance keeps float noise from deciding ties with the observed difference.
        exceed += int((d >= observed - 1e-12).sum())
        diffs.append(d)
        done += t
    return {"observed_difference": observed, "p_value": (exceed + 1) / (n_trials + 1), "n_trials": int(n_trials),
            "alternative": "greater", "null_sd": float(np.std(np.concatenate(diffs)))}
