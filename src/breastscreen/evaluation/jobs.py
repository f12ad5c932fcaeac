"""Metric jobs for the bootstrap engine and the non-resampled entries that go with them.

A job is built once from the cases' labels and scores (sorting happens here, not per
resample) and returns a function of the resample weights; see
:class:`breastscreen.evaluation.engine.BootstrapEngine`.  Metrics whose threshold is matched
to a target (sensitivity >= 0.9, TNR at FNR, triage) re-match it inside every resample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from breastscreen.evaluation.engine import Job, finite_or_none
from breastscreen.evaluation.metrics import GroupCounts, RankedScores, ap_from_groups, auc_from_groups
from breastscreen.evaluation.operating import (
    threshold_for_sensitivity,
    threshold_for_specificity,
    weighted_at_sensitivity,
    weighted_at_specificity,
    weighted_at_threshold,
)
from breastscreen.evaluation.stats import delong_ci

if TYPE_CHECKING:  # evaluate.py imports this module; the config is only needed for annotations
    from breastscreen.evaluation.evaluate import EvalConfig

__all__ = [
    "binary_job",
    "tnr_at_fnr_entries",
    "thresholds_info",
    "auc_pair_job",
    "difference_job",
    "matched_job",
    "case_counts",
    "delong_entry",
]


def binary_job(y: np.ndarray, s: np.ndarray, cfg: EvalConfig, full: bool) -> Job:
    """AUROC/AUPRC of one task; with ``full``, also the operating points, TNR at FNR and triage."""
    r = RankedScores.build(y, s)
    has_pos, has_neg = bool((y == 1).any()), bool((y == 0).any())

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        g = GroupCounts.build(*r.group_weights(W))
        out = {"auroc": auc_from_groups(g), "auprc": ap_from_groups(g)}
        if not full:
            return out
        for t in cfg.thresholds:
            for k, v in weighted_at_threshold(r, t, groups=g).items():
                out[f"operating_points/threshold={t:g}/{k}"] = v
        if has_pos:
            for t in cfg.target_sensitivities:
                for k, v in weighted_at_sensitivity(r, t, groups=g).items():
                    out[f"operating_points/sensitivity>={t:g}/{k}"] = v
            out.update(tnr_at_fnr_entries(r, g, cfg.fnrs))
            d = weighted_at_sensitivity(r, cfg.triage_sensitivity, groups=g)
            out["triage/rule_out/npv"] = d["npv"]
            out["triage/rule_out/fraction_dismissed"] = 1.0 - d["biopsy_rate"]
            out["triage/rule_out/sensitivity"] = d["sensitivity"]
            out["triage/rule_out/fn"] = d["fn"]
        if has_neg:
            for t in cfg.target_specificities:
                for k, v in weighted_at_specificity(r, t, groups=g).items():
                    out[f"operating_points/specificity>={t:g}/{k}"] = v
            d = weighted_at_specificity(r, cfg.triage_specificity, groups=g)
            out["triage/rule_in/ppv"] = d["ppv"]
            out["triage/rule_in/fraction_escalated"] = d["biopsy_rate"]
            out["triage/rule_in/specificity"] = d["specificity"]
            out["triage/rule_in/tp"] = d["tp"]
        return out

    return fn


def tnr_at_fnr_entries(r: RankedScores, g: GroupCounts, fnrs: tuple[float, ...]) -> dict[str, np.ndarray]:
    """``tnr_at_fnr/<f>/{tnr,fnr,tn,fn}`` per row of ``g``: the threshold is re-matched in every resample."""
    out = {}
    for f in fnrs:
        d = weighted_at_sensitivity(r, 1.0 - f, groups=g)
        out[f"tnr_at_fnr/{f:g}/tnr"] = d["specificity"]
        out[f"tnr_at_fnr/{f:g}/fnr"] = 1.0 - d["sensitivity"]
        out[f"tnr_at_fnr/{f:g}/tn"] = d["tn"]
        out[f"tnr_at_fnr/{f:g}/fn"] = d["fn"]
    return out


def thresholds_info(y: np.ndarray, s: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    """Chosen thresholds of matched operating points (from the data, not resampled)."""
    out: dict[str, Any] = {}
    has_pos, has_neg = bool((y == 1).any()), bool((y == 0).any())
    for t in cfg.thresholds:
        out[f"operating_points/threshold={t:g}/threshold"] = float(t)
    if has_pos:
        for t in cfg.target_sensitivities:
            out[f"operating_points/sensitivity>={t:g}/threshold"] = threshold_for_sensitivity(y, s, t)
        for f in cfg.fnrs:
            out[f"tnr_at_fnr/{f:g}/threshold"] = threshold_for_sensitivity(y, s, 1.0 - f)
        out["triage/rule_out/threshold"] = threshold_for_sensitivity(y, s, cfg.triage_sensitivity)
        out["triage/rule_out/target_sensitivity"] = cfg.triage_sensitivity
    if has_neg:
        for t in cfg.target_specificities:
            out[f"operating_points/specificity>={t:g}/threshold"] = threshold_for_specificity(y, s, t)
        out["triage/rule_in/threshold"] = threshold_for_specificity(y, s, cfg.triage_specificity)
        out["triage/rule_in/target_specificity"] = cfg.triage_specificity
    return out


def auc_pair_job(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Job:
    """AUROC/AUPRC of several score vectors on the same cases: ``{"name": (y, s)}``."""
    ranked = {k: RankedScores.build(y, s) for k, (y, s) in pairs.items()}

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        out = {}
        for k, r in ranked.items():
            g = GroupCounts.build(*r.group_weights(W))
            out[f"{k}/auroc"] = auc_from_groups(g)
            out[f"{k}/auprc"] = ap_from_groups(g)
        return out

    return fn


def difference_job(y: np.ndarray, m: np.ndarray, readers: list[np.ndarray]) -> Job:
    """Model minus the mean over readers of AUROC and AUPRC, on the same resampled cases."""
    rm = RankedScores.build(y, m)
    rr = [RankedScores.build(y, x) for x in readers]

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        g = GroupCounts.build(*rm.group_weights(W))
        ma, mp = auc_from_groups(g), ap_from_groups(g)
        ra, rp = [], []
        for r in rr:
            g = GroupCounts.build(*r.group_weights(W))
            ra.append(auc_from_groups(g))
            rp.append(ap_from_groups(g))
        ra_m, rp_m = np.mean(ra, axis=0), np.mean(rp, axis=0)
        return {"model_minus_reader_auroc": ma - ra_m, "model_minus_reader_auprc": mp - rp_m,
                "auroc": ra_m, "auprc": rp_m, "model_auroc": ma, "model_auprc": mp}

    return fn


def matched_job(y: np.ndarray, m: np.ndarray, *, sensitivity: float | None = None,
                specificity: float | None = None) -> Job:
    """The model's operating point at a given sensitivity (or, without one, at a given specificity)."""
    r = RankedScores.build(y, m)

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        d = weighted_at_sensitivity(r, sensitivity, W) if sensitivity is not None else weighted_at_specificity(r, specificity, W)
        return dict(d)

    return fn


def case_counts(y: np.ndarray) -> dict[str, Any]:
    """Number of cases, positives, negatives and the prevalence (``None`` without cases)."""
    n = int(y.size)
    npos = int((y == 1).sum())
    return {"n": n, "n_positive": npos, "n_negative": n - npos, "prevalence": finite_or_none(npos / n) if n else None}


def delong_entry(y: np.ndarray, s: np.ndarray, confidence: float) -> dict[str, Any] | None:
    """DeLong standard error and CI of the AUROC; ``None`` with fewer than two cases of a class."""
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return None
    d = delong_ci(y, s, confidence)
    return {"se": d["se"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}
