"""BI-RADS (0/1/2) model evaluation (Geras et al. 2017): macAUC, entropy confidence.

* macAUC: mean of the three one-vs-rest AUROCs.
* High-confidence macAUC: macAUC on the examples with the lowest prediction entropy.  With a
  validation set, the entropy cut-off is the validation entropies' ``fraction`` quantile
  (linear interpolation) and every test example at or below it is kept; without one, the
  ``ceil(fraction * n)`` lowest-entropy test examples are kept (ties broken by file order).
* macAUC as a function of the kept fraction P = 10, 20, ..., 100 %, with the same rule.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from breastscreen.evaluation.metrics import RankedScores, entropy, one_vs_rest_aucs

__all__ = ["BIRADS_LABELS", "birads_class", "keep_lowest_entropy", "macauc_vs_kept_fraction", "weighted_macauc",
           "prediction_entropy"]

BIRADS_LABELS: dict[str, int] = {"0": 0, "1": 1, "2": 2}


def birads_class(values: Sequence[object]) -> np.ndarray:
    """Class index 0/1/2 per BI-RADS label value; -1 for anything else (3, 4, 5, empty)."""
    out = np.full(len(values), -1, dtype=int)
    for i, v in enumerate(values):
        key = str(v).strip()
        if key.endswith(".0"):
            key = key[:-2]
        out[i] = BIRADS_LABELS.get(key, -1)
    return out


def prediction_entropy(probs: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
    """The ``entropy`` column when given (and finite), else the Shannon entropy of ``probs``."""
    h = entropy(probs)
    if given is None:
        return h
    given = np.asarray(given, dtype=float)
    return np.where(np.isfinite(given), given, h)


def keep_lowest_entropy(h: np.ndarray, fraction: float, val_entropy: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Boolean mask of kept examples and the entropy cut-off used (see the module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"kept fraction must be in (0, 1], got {fraction}")
    h = np.asarray(h, dtype=float)
    if val_entropy is not None and np.size(val_entropy):
        cut = float(np.quantile(np.asarray(val_entropy, dtype=float), fraction))
        return h <= cut, cut
    k = max(1, math.ceil(fraction * h.size - 1e-9))
    order = np.argsort(h, kind="mergesort")
    keep = np.zeros(h.size, bool)
    keep[order[:k]] = True
    return keep, float(h[order[k - 1]]) if h.size else float("nan")


def macauc_vs_kept_fraction(y_class: np.ndarray, probs: np.ndarray, h: np.ndarray,
                            fractions: Sequence[float] = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2)),
                            val_entropy: np.ndarray | None = None) -> list[dict[str, float]]:
    """macAUC on the lowest-entropy examples for each kept fraction."""
    out = []
    for f in fractions:
        keep, cut = keep_lowest_entropy(h, float(f), val_entropy)
        aucs = one_vs_rest_aucs(y_class[keep], probs[keep]) if keep.any() else np.full(probs.shape[1], np.nan)
        out.append({"fraction": float(f), "n_kept": int(keep.sum()), "entropy_cutoff": cut,
                    "macauc": float(np.mean(aucs))})
    return out


def weighted_macauc(
    y_class: np.ndarray, probs: np.ndarray
) -> Callable[[np.ndarray | None], dict[str, np.ndarray]]:
    """A function ``W -> {"macauc", "auc_0", ...}`` computing weighted one-vs-rest AUROCs per row of ``W``."""
    ranked = [RankedScores.build((y_class == k).astype(float), probs[:, k]) for k in range(probs.shape[1])]

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        aucs = [r.auc(W) for r in ranked]
        out = {f"auc_{k}": a for k, a in enumerate(aucs)}
        out["macauc"] = np.mean(np.vstack(aucs), axis=0)
        return out

    return fn
