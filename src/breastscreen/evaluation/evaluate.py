"""One call from predictions + labels (+ readers) to every metric with CIs: ``evaluate_predictions``.

All bootstrap CIs of one evaluation share one set of resamples of the patients (or exams
when there are no patient ids), so differences between metrics (model - reader, CC - MLO)
are paired.  A metric of a subset (subgroup, biopsied population, reader study) uses that
subset's cases within each resample.  Metrics whose threshold is matched to a target
(sensitivity >= 0.9, TNR at FNR, triage) re-match the threshold inside every resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from breastscreen.data.types import view_side
from breastscreen.evaluation import birads as birads_mod
from breastscreen.evaluation.io import (
    BIRADS_COLUMNS,
    UNKNOWN_COLUMNS,
    EvaluationInputError,
    branch_columns,
    validate_labels,
    validate_predictions,
)
from breastscreen.evaluation.metrics import (
    GroupCounts,
    RankedScores,
    ap_from_groups,
    auc_from_groups,
    pr_curve_points,
    roc_curve_points,
)
from breastscreen.evaluation.operating import (
    DEFAULT_FNRS,
    confusion_at_threshold,
    threshold_for_sensitivity,
    threshold_for_specificity,
    weighted_at_sensitivity,
    weighted_at_specificity,
    weighted_at_threshold,
)
from breastscreen.evaluation.readers import SUSPICION_POSITIVE, hybrid_scores, validate_readers, zscore
from breastscreen.evaluation.stats import Resampler, delong_ci, delong_test, percentile_interval, permutation_test
from breastscreen.evaluation.subgroups import default_subgroup_fields, ordered_groups, subgroup_values

__all__ = ["EvalConfig", "EvaluationResult", "evaluate", "evaluate_predictions", "build_units", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
LEVELS = ("breast", "image", "exam")
TASKS = ("malignant", "benign", "any_finding", "malignant_vs_benign")
_COUNT_KEYS = {"tp", "fp", "tn", "fn"}
_RATE_KEYS = ("sensitivity", "specificity", "ppv", "npv", "biopsy_rate")
_TRUTHY = {"1", "1.0", "true", "yes", "y", "t"}


@dataclass
class EvalConfig:
    """Options of one evaluation (CLI flags map one to one)."""

    level: str = "breast"
    population: str = "screening"
    n_bootstrap: int = 1000
    seed: int = 0
    confidence: float = 0.95
    thresholds: tuple[float, ...] = (0.5,)
    target_sensitivities: tuple[float, ...] = (0.9, 0.95)
    target_specificities: tuple[float, ...] = (0.9, 0.95)
    fnrs: tuple[float, ...] = DEFAULT_FNRS
    triage_sensitivity: float = 0.99
    triage_specificity: float = 0.99
    subgroups: tuple[str, ...] = ()
    default_subgroups: bool = True
    reader_threshold: float = 0.5
    reader_scales: dict[str, str] = field(default_factory=dict)
    hybrid_lambda: float = 0.5
    hybrid_zscore: str = "auto"
    n_permutations: int = 10_000
    high_confidence_fraction: float = 0.3
    allow_missing: bool = False

    def validate(self) -> None:
        """Raise ``EvaluationInputError`` on an out-of-range option."""
        if self.level not in LEVELS:
            raise EvaluationInputError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.n_bootstrap < 0:
            raise EvaluationInputError(f"bootstrap resamples must be >= 0, got {self.n_bootstrap}")
        if not 0 < self.confidence < 1:
            raise EvaluationInputError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.hybrid_zscore not in ("auto", "yes", "no"):
            raise EvaluationInputError(f"hybrid z-score must be auto, yes or no, got {self.hybrid_zscore!r}")
        if not 0 <= self.hybrid_lambda <= 1:
            raise EvaluationInputError(f"hybrid lambda must be in [0, 1], got {self.hybrid_lambda}")
        for name in ("target_sensitivities", "target_specificities", "fnrs", "thresholds"):
            for v in getattr(self, name):
                if not 0 <= v <= 1:
                    raise EvaluationInputError(f"{name.replace('_', ' ')} must be in [0, 1], got {v}")
        if self.n_permutations < 0:
            raise EvaluationInputError(f"permutation trials must be >= 0, got {self.n_permutations}")


@dataclass
class EvaluationResult:
    """``metrics`` (the metrics.json content) and ``curves`` (plot-ready arrays, not serialised)."""

    metrics: dict[str, Any]
    curves: dict[str, Any]
    warnings: list[str]


# --------------------------------------------------------------------------- engine
class _Engine:
    """Collects metric jobs, evaluates each on the data and on every bootstrap resample."""

    def __init__(self, resampler: Resampler | None, confidence: float) -> None:
        self.resampler = resampler
        self.confidence = confidence
        self.jobs: list[tuple[tuple[str, ...], np.ndarray, Callable[[np.ndarray | None], dict[str, np.ndarray]]]] = []

    def add(self, path: tuple[str, ...], clusters: np.ndarray, fn: Callable[[np.ndarray | None], dict[str, np.ndarray]]) -> int:
        self.jobs.append((path, clusters, fn))
        return len(self.jobs) - 1

    def run(self) -> list[dict[str, tuple[float, np.ndarray | None]]]:
        results: list[dict[str, tuple[float, np.ndarray | None]]] = []
        points = [{k: float(np.asarray(v)[0]) for k, v in fn(None).items()} for _, _, fn in self.jobs]
        samples: list[dict[str, list[np.ndarray]]] = [{k: [] for k in p} for p in points]
        if self.resampler is not None:
            counts = self.resampler.counts()
            for start in range(0, self.resampler.n_resamples, self.resampler.chunk):
                block = counts[start:start + self.resampler.chunk]
                for j, (_, clusters, fn) in enumerate(self.jobs):
                    W = block[:, clusters]  # small integer counts; metrics convert after sorting
                    for k, v in fn(W).items():
                        samples[j][k].append(np.asarray(v, dtype=float))
        for j, p in enumerate(points):
            res = {}
            for k, v in p.items():
                res[k] = (v, np.concatenate(samples[j][k]) if samples[j][k] else None)
            results.append(res)
        return results


def _ci_entry(value: float, samples: np.ndarray | None, confidence: float) -> dict[str, Any]:
    out: dict[str, Any] = {"value": _num(value)}
    if samples is not None:
        lo, hi = percentile_interval(samples, confidence)
        out["ci_low"], out["ci_high"] = _num(lo), _num(hi)
        out["n_failed"] = int((~np.isfinite(samples)).sum())
    return out


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _set(d: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def _place(metrics: dict[str, Any], path: tuple[str, ...], res: dict[str, tuple[float, np.ndarray | None]],
           confidence: float) -> None:
    for name, (value, samples) in res.items():
        parts = tuple(name.split("/"))
        if parts[-1] in _COUNT_KEYS:
            _set(metrics, path + parts, _num(value))
        else:
            _set(metrics, path + parts, _ci_entry(value, samples, confidence))


# --------------------------------------------------------------------------- units
def _truthy(values: pd.Series) -> np.ndarray:
    return values.astype(str).str.strip().str.lower().isin(_TRUTHY).to_numpy()


def _clusters_for(units: pd.DataFrame) -> np.ndarray:
    if "patient_id" in units.columns:
        pid = units["patient_id"]
        ok = pid.notna() & (pid.astype(str).str.strip() != "")
        return np.where(ok, "patient:" + pid.astype(str), "exam:" + units["exam_id"].astype(str))
    return ("exam:" + units["exam_id"].astype(str)).to_numpy()


def build_units(predictions: pd.DataFrame, labels: pd.DataFrame, level: str = "breast") -> pd.DataFrame:
    """One row per evaluation unit (breast, image or exam) with scores ``s_*``, labels ``y_*`` and label fields.

    Exam level: a label is 1 when either breast's label is 1, 0 when both are known 0, else
    unknown; the score is the maximum over the breasts with a prediction.

    Unknown-laterality ultrasound bags (``U-US``; prediction columns ``unknown_benign,
    unknown_malignant``, labels of the same names) are a third breast ``U``: one unit per exam
    whose ``U`` prediction is not empty, labelled from the ``unknown_*`` label columns (unknown
    when absent). In an exam with a ``U`` unit, left/right rows with neither a prediction nor a
    label are dropped, so the exam-level label and score come from the breasts that exist.
    """
    fields = [c for c in labels.columns
              if c not in ("exam_id", "left_benign", "left_malignant", "right_benign", "right_malignant")
              + UNKNOWN_COLUMNS]
    lab = labels.set_index("exam_id")
    rows = []
    if predictions.attrs.get("kind") == "image":
        if level != "image":
            raise EvaluationInputError(f"image-level predictions (a 'view' column) can only be evaluated with level 'image', got {level!r}")
        for r in predictions.itertuples(index=False):
            side = view_side(r.view) or ("U" if r.view == "U-US" else None)
            if side is None:
                continue
            rows.append({"exam_id": r.exam_id, "side": side, "view": r.view, "s_benign": r.benign, "s_malignant": r.malignant})
    else:
        branches = branch_columns(predictions.columns)
        if level == "image" and not branches:
            raise EvaluationInputError("level 'image' needs image-level predictions (exam_id, view, benign, malignant) "
                                       "or per-branch columns such as cc_left_malignant")
        for r in predictions.to_dict("records"):
            for side, prefix in (("L", "left"), ("R", "right")):
                if level == "image":
                    for b in branches:
                        rows.append({"exam_id": r["exam_id"], "side": side, "view": f"{side}-{b.upper()}",
                                     "s_benign": r[f"{b}_{prefix}_benign"], "s_malignant": r[f"{b}_{prefix}_malignant"]})
                else:
                    row = {"exam_id": r["exam_id"], "side": side, "s_benign": r[f"{prefix}_benign"],
                           "s_malignant": r[f"{prefix}_malignant"]}
                    for b in branches:
                        row[f"{b}_benign"] = r[f"{b}_{prefix}_benign"]
                        row[f"{b}_malignant"] = r[f"{b}_{prefix}_malignant"]
                    rows.append(row)
            if level != "image" and all(c in r for c in UNKNOWN_COLUMNS):
                su, sm = r["unknown_benign"], r["unknown_malignant"]
                if np.isfinite(su) or np.isfinite(sm):
                    rows.append({"exam_id": r["exam_id"], "side": "U", "s_benign": su, "s_malignant": sm})
    units = pd.DataFrame(rows)
    if units.empty:
        raise EvaluationInputError("no predictions to evaluate")
    prefix = units["side"].map({"L": "left", "R": "right", "U": "unknown"})
    ex = units["exam_id"].to_numpy()
    for t in ("benign", "malignant"):
        vals = np.full(len(units), np.nan)
        for p in ("left", "right", "unknown"):
            m = (prefix == p).to_numpy()
            if m.any() and f"{p}_{t}" in lab.columns:
                vals[m] = lab.loc[ex[m], f"{p}_{t}"].to_numpy(dtype=float)
        units[f"y_{t}"] = vals
    if (units["side"] == "U").any():
        has_u = units["exam_id"].isin(units.loc[units["side"] == "U", "exam_id"])
        empty = units[["s_benign", "s_malignant", "y_benign", "y_malignant"]].astype(float).isna().all(axis=1)
        units = units[~(has_u & empty & units["side"].isin(["L", "R"]))].reset_index(drop=True)
        ex = units["exam_id"].to_numpy()
    for f in fields:
        units[f] = lab.loc[ex, f].to_numpy()
    if level == "exam":
        agg = {"s_benign": "max", "s_malignant": "max"}
        grouped = units.groupby("exam_id", sort=False)
        out = grouped.agg(agg)

        def exam_label(col: str) -> pd.Series:
            v = grouped[col]
            any_pos = v.max() == 1
            all_known_zero = (v.count() == v.size()) & (v.max() == 0)
            return pd.Series(np.where(any_pos, 1.0, np.where(all_known_zero, 0.0, np.nan)), index=any_pos.index)

        out["y_benign"] = exam_label("y_benign")
        out["y_malignant"] = exam_label("y_malignant")
        out = out.reset_index()
        out["side"] = "exam"
        for f in fields:
            out[f] = lab.loc[out["exam_id"].to_numpy(), f].to_numpy()
        units = out
    units["cluster"] = _clusters_for(units)
    return units


def _task_arrays(units: pd.DataFrame, task: str, score_prefix: str = "s_") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, y, s)`` for a task: units with a known label and a finite score."""
    sb = units[f"{score_prefix}benign"].to_numpy(dtype=float)
    sm = units[f"{score_prefix}malignant"].to_numpy(dtype=float)
    yb = units["y_benign"].to_numpy(dtype=float)
    ym = units["y_malignant"].to_numpy(dtype=float)
    if task == "malignant":
        y, s = ym, sm
    elif task == "benign":
        y, s = yb, sb
    elif task == "any_finding":
        y = np.where((yb == 1) | (ym == 1), 1.0, np.where((yb == 0) & (ym == 0), 0.0, np.nan))
        s = np.fmax(sb, sm)
        s = np.where(np.isnan(sb) | np.isnan(sm), np.nan, s)
    elif task == "malignant_vs_benign":
        one = ((yb == 1) & (ym == 0)) | ((yb == 0) & (ym == 1))
        y = np.where(one, ym, np.nan)
        tot = sb + sm
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(tot > 0, sm / np.where(tot > 0, tot, 1.0), 0.5)
        s = np.where(np.isnan(tot), np.nan, s)
    else:
        raise ValueError(f"unknown task {task!r}")
    mask = np.isfinite(y) & np.isfinite(s)
    return mask, y[mask], s[mask]


# --------------------------------------------------------------------------- job builders
def _binary_job(y: np.ndarray, s: np.ndarray, cfg: EvalConfig, full: bool) -> Callable[[np.ndarray | None], dict[str, np.ndarray]]:
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
            for f in cfg.fnrs:
                d = weighted_at_sensitivity(r, 1.0 - f, groups=g)
                out[f"tnr_at_fnr/{f:g}/tnr"] = d["specificity"]
                out[f"tnr_at_fnr/{f:g}/fnr"] = 1.0 - d["sensitivity"]
                out[f"tnr_at_fnr/{f:g}/tn"] = d["tn"]
                out[f"tnr_at_fnr/{f:g}/fn"] = d["fn"]
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


def _thresholds_info(y: np.ndarray, s: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
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


def _auc_pair_job(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Callable[[np.ndarray | None], dict[str, np.ndarray]]:
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


def _counts(y: np.ndarray) -> dict[str, Any]:
    n = int(y.size)
    npos = int((y == 1).sum())
    return {"n": n, "n_positive": npos, "n_negative": n - npos, "prevalence": _num(npos / n) if n else None}


def _delong_entry(y: np.ndarray, s: np.ndarray, confidence: float) -> dict[str, Any] | None:
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return None
    d = delong_ci(y, s, confidence)
    return {"se": d["se"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


# --------------------------------------------------------------------------- main
def _population_mask(units: pd.DataFrame, labels: pd.DataFrame, population: str) -> np.ndarray:
    if population == "screening":
        return np.ones(len(units), bool)
    if population == "biopsied":
        if "biopsied" in labels.columns:
            flag = pd.Series(_truthy(labels["biopsied"]), index=labels["exam_id"].to_numpy())
        else:
            pos = labels[["left_benign", "left_malignant", "right_benign", "right_malignant"]
                         + [c for c in UNKNOWN_COLUMNS if c in labels.columns]].to_numpy(dtype=float)
            flag = pd.Series((pos == 1).any(axis=1), index=labels["exam_id"].to_numpy())
        return flag.loc[units["exam_id"].to_numpy()].to_numpy(dtype=bool)
    if population not in labels.columns:
        raise EvaluationInputError(f"population must be screening, biopsied or a labels column with 1/0 values, "
                                   f"got {population!r} (labels columns: {', '.join(labels.columns)})")
    flag = pd.Series(_truthy(labels[population]), index=labels["exam_id"].to_numpy())
    return flag.loc[units["exam_id"].to_numpy()].to_numpy(dtype=bool)


def evaluate(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    readers: pd.DataFrame | None = None,
    config: EvalConfig | None = None,
    val_predictions: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Compute every metric (see docs/evaluation.md for the metrics.json layout)."""
    cfg = config or EvalConfig()
    cfg.validate()
    warnings: list[str] = []
    if predictions.attrs.get("kind") not in ("exam", "image"):
        predictions = validate_predictions(predictions)
    if not labels.attrs.get("validated"):
        labels = validate_labels(labels)
    pred_ids = pd.Index(predictions["exam_id"].unique())
    lab_ids = pd.Index(labels["exam_id"])
    unknown = pred_ids.difference(lab_ids)
    if len(unknown):
        msg = (f"{len(unknown)} of {len(pred_ids)} exam ids in the predictions are not in the labels "
               f"(first: {', '.join(map(str, unknown[:5]))})")
        if not cfg.allow_missing:
            raise EvaluationInputError(msg + "; fix the files or pass allow_missing / --allow-missing to drop them")
        warnings.append(msg + "; dropped")
        predictions = predictions[predictions["exam_id"].isin(lab_ids)]
        predictions.attrs.update({"kind": "image" if "view" in predictions.columns and "left_benign" not in predictions.columns else "exam"})
    unpredicted = lab_ids.difference(pred_ids)
    if len(unpredicted):
        warnings.append(f"{len(unpredicted)} labelled exam(s) have no prediction and are not evaluated")
    for f in cfg.subgroups:
        if f != "age_band" and f not in labels.columns:
            raise EvaluationInputError(f"subgroup field {f!r} is not a labels column; available: {', '.join(labels.columns)}")

    all_units = build_units(predictions, labels, cfg.level)
    pop_mask = _population_mask(all_units, labels, cfg.population)
    units = all_units[pop_mask].reset_index(drop=True)
    if units.empty:
        raise EvaluationInputError(f"no {cfg.level}s in population {cfg.population!r}")
    # The resampler knows every cluster of the whole cohort so that all sections share draws.
    resampler = None
    if cfg.n_bootstrap > 0:
        resampler = Resampler(np.unique(all_units["cluster"].to_numpy()), n_resamples=cfg.n_bootstrap, seed=cfg.seed)
    engine = _Engine(resampler, cfg.confidence)

    def cl(df: pd.DataFrame, mask: np.ndarray | None = None) -> np.ndarray:
        c = df["cluster"].to_numpy()
        c = c if mask is None else c[mask]
        return resampler.cluster_index(c) if resampler is not None else np.zeros(len(c), np.intp)

    level = cfg.level
    metrics: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    extra: list[tuple[tuple[str, ...], Any]] = []  # values placed after the engine runs
    curves: dict[str, Any] = {"level": level, "tasks": {}}

    # --- main tasks on the chosen population
    for task in TASKS:
        mask, y, s = _task_arrays(units, task)
        path = (level, task)
        extra.append((path, _counts(y)))
        if y.size == 0 or (y == 1).all() or (y == 0).all():
            warnings.append(f"{level}/{task}: needs positive and negative cases (have {int((y == 1).sum())} positive, "
                            f"{int((y == 0).sum())} negative); metrics are null")
            if y.size == 0:
                continue
        engine.add(path, cl(units, mask), _binary_job(y, s, cfg, full=True))
        for k, v in _thresholds_info(y, s, cfg).items():
            extra.append((path + tuple(k.split("/")), v))
        de = _delong_entry(y, s, cfg.confidence)
        if de is not None:
            extra.append((path + ("auroc", "delong"), de))
        if (y == 1).any() and (y == 0).any():
            curves["tasks"][task] = {"roc": roc_curve_points(y, s), "pr": pr_curve_points(y, s),
                                     "prevalence": float(y.mean())}

    # --- populations (AUROC/AUPRC only)
    for pop in ("screening", "biopsied"):
        if pop == cfg.population:
            continue  # copied from the main section after the run
        pm = _population_mask(all_units, labels, pop)
        pu = all_units[pm].reset_index(drop=True)
        for task in TASKS:
            mask, y, s = _task_arrays(pu, task)
            extra.append((("populations", pop, level, task), _counts(y)))
            if y.size:
                engine.add(("populations", pop, level, task), cl(pu, mask), _auc_pair_job({"model": (y, s)}))

    # --- per-branch AUCs
    branches = [b for b in ("cc", "mlo") if f"{b}_malignant" in units.columns]
    if branches and level == "breast":
        for task in ("malignant", "benign"):
            pairs = {}
            for b in branches:
                mask, y, s = _task_arrays(units, task, score_prefix=f"{b}_")
                pairs[b] = (mask, y, s)
            common = np.logical_and.reduce([m for m, _, _ in pairs.values()])
            for b, (mask, y, s) in pairs.items():
                if y.size:
                    engine.add(("branches", b, task), cl(units, mask), _auc_pair_job({"model": (y, s)}))
            if len(branches) == 2 and common.sum() > 0:
                _, y1, s1 = _task_arrays(units[common].reset_index(drop=True), task, score_prefix="cc_")
                _, _, s2 = _task_arrays(units[common].reset_index(drop=True), task, score_prefix="mlo_")
                if (y1 == 1).sum() >= 2 and (y1 == 0).sum() >= 2:
                    extra.append((("branches", "delong_cc_vs_mlo", task), delong_test(y1, s1, s2, cfg.confidence)))

    # --- correlation between the four predicted labels
    if predictions.attrs.get("kind") == "exam":
        cols = ["left_benign", "left_malignant", "right_benign", "right_malignant"]
        P = predictions[cols].to_numpy(dtype=float)
        P = P[np.isfinite(P).all(axis=1)]
        if P.shape[0] >= 3:
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.corrcoef(P, rowvar=False)
            metrics["correlation"] = {"labels": cols, "pearson": [[_num(v) for v in row] for row in corr],
                                      "n_exams": int(P.shape[0])}
            curves["correlation"] = {"labels": cols, "matrix": corr}

    # --- BI-RADS
    if predictions.attrs.get("kind") == "exam" and all(c in predictions.columns for c in BIRADS_COLUMNS):
        _birads_section(predictions, labels, cfg, engine, resampler, extra, curves, warnings, val_predictions,
                        pop_exams=set(units["exam_id"]))

    # --- subgroups
    fields = (default_subgroup_fields(labels.columns) if cfg.default_subgroups else []) + [
        f for f in cfg.subgroups if f not in (default_subgroup_fields(labels.columns) if cfg.default_subgroups else [])]
    subgroup_rows: dict[str, list[dict[str, Any]]] = {}
    for f in fields:
        values = subgroup_values(units, f)
        subgroup_rows[f] = []
        for g in ordered_groups(f, values):
            gm = values == g
            gu = units[gm].reset_index(drop=True)
            row_path = ("subgroups", f, g)
            info = {"field": f, "group": g}
            for task in ("malignant", "benign"):
                mask, y, s = _task_arrays(gu, task)
                info[task] = _counts(y)
                extra.append((row_path + (task,), _counts(y)))
                if y.size:
                    engine.add(row_path + (task,), cl(gu, mask), _auc_pair_job({"model": (y, s)}))
            subgroup_rows[f].append(info)

    # --- readers
    if readers is not None:
        if "scale" not in readers.columns:
            readers = validate_readers(readers, cfg.reader_scales)
        breast_units = units if level == "breast" else build_units(predictions, labels, "breast")[
            _population_mask(build_units(predictions, labels, "breast"), labels, cfg.population)].reset_index(drop=True)
        _reader_section(breast_units, readers, cfg, engine, cl, extra, curves, warnings)

    # --- run and assemble
    results = engine.run()
    for (path, _, _), res in zip(engine.jobs, results):
        inner: dict[str, Any] = {}
        _place(inner, (), res, cfg.confidence)
        target = metrics
        for p in path:
            target = target.setdefault(p, {})
        _merge(target, inner)
    for path, value in extra:
        target = metrics
        for p in path[:-1]:
            target = target.setdefault(p, {})
        if isinstance(value, dict) and isinstance(target.get(path[-1]), dict):
            _merge(target[path[-1]], value)
        else:
            target[path[-1]] = _jsonable(value)
    _postprocess_readers(metrics, cfg)
    if cfg.population in ("screening", "biopsied"):
        main = metrics.get(level, {})
        metrics.setdefault("populations", {})[cfg.population] = {level: {
            task: {**{k: main[task][k] for k in ("n", "n_positive", "n_negative", "prevalence") if k in main.get(task, {})},
                   "model": {k: {kk: vv for kk, vv in main[task][k].items() if kk != "delong"}
                             for k in ("auroc", "auprc") if k in main.get(task, {})}}
            for task in TASKS if task in main}}
    # Subgroup tables as lists for easy reading; the nested form stays for lookups.
    if subgroup_rows:
        curves["subgroups"] = {f: [{"group": r["group"],
                                    **_flat_sub(metrics["subgroups"][f][r["group"]])} for r in rows]
                               for f, rows in subgroup_rows.items()}
    metrics["meta"] = {
        "level": level,
        "population": cfg.population,
        "n_exams_predicted": int(len(pred_ids)),
        "n_exams_labelled": int(len(lab_ids)),
        "n_units_in_population": int(len(units)),
        "bootstrap": {"n_resamples": cfg.n_bootstrap, "seed": cfg.seed, "confidence": cfg.confidence,
                      "method": "percentile", "cluster": "patient_id" if "patient_id" in labels.columns else "exam_id",
                      "n_clusters": int(resampler.n_clusters) if resampler is not None else None},
        "thresholds": list(cfg.thresholds),
        "target_sensitivities": list(cfg.target_sensitivities),
        "target_specificities": list(cfg.target_specificities),
        "fnrs": list(cfg.fnrs),
        "subgroup_fields": fields,
        "warnings": warnings,
    }
    return EvaluationResult(metrics=_jsonable(metrics), curves=curves, warnings=warnings)


def _flat_sub(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for task in ("malignant", "benign"):
        t = d.get(task, {})
        out[f"{task}_n"] = t.get("n")
        out[f"{task}_n_positive"] = t.get("n_positive")
        for m in ("auroc", "auprc"):
            e = t.get("model", {}).get(m, {})
            out[f"{task}_{m}"] = e.get("value")
            out[f"{task}_{m}_ci_low"] = e.get("ci_low")
            out[f"{task}_{m}_ci_high"] = e.get("ci_high")
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return _num(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


# --------------------------------------------------------------------------- BI-RADS section
def _birads_section(predictions, labels, cfg, engine, resampler, extra, curves, warnings, val_predictions, pop_exams):
    lab = labels.set_index("exam_id")
    if "birads" not in labels.columns:
        warnings.append("BI-RADS predictions present but the labels have no 'birads' column; BI-RADS metrics skipped")
        return
    pred = predictions[predictions["exam_id"].isin(pop_exams)]
    probs = pred[list(BIRADS_COLUMNS)].to_numpy(dtype=float)
    yc = birads_mod.birads_class(lab.loc[pred["exam_id"].to_numpy(), "birads"].tolist())
    ok = (yc >= 0) & np.isfinite(probs).all(axis=1)
    excluded = int((~ok).sum())
    probs, yc = probs[ok], yc[ok]
    given = pred["entropy"].to_numpy(dtype=float)[ok] if "entropy" in pred.columns else None
    h = birads_mod.prediction_entropy(probs, given)
    extra.append((("birads", "n"), int(yc.size)))
    extra.append((("birads", "n_excluded"), excluded))
    extra.append((("birads", "class_counts"), {str(k): int((yc == k).sum()) for k in range(3)}))
    if yc.size == 0 or len(np.unique(yc)) < 3:
        warnings.append("BI-RADS: all three classes 0/1/2 are needed for macAUC; BI-RADS metrics skipped")
        return
    exam_ids = pred["exam_id"].to_numpy()[ok]
    frame = pd.DataFrame({"exam_id": exam_ids})
    if "patient_id" in lab.columns:
        frame["patient_id"] = lab.loc[exam_ids, "patient_id"].to_numpy()
    cstr = _clusters_for(frame)
    cidx = resampler.cluster_index(cstr) if resampler is not None else np.zeros(yc.size, np.intp)
    engine.add(("birads",), cidx, birads_mod.weighted_macauc(yc, probs))
    val_h = None
    if val_predictions is not None:
        if not all(c in val_predictions.columns for c in BIRADS_COLUMNS):
            raise EvaluationInputError("validation predictions need birads_0, birads_1, birads_2 for the entropy cut-off")
        vp = val_predictions[list(BIRADS_COLUMNS)].to_numpy(dtype=float)
        vp_ok = np.isfinite(vp).all(axis=1)
        vg = val_predictions["entropy"].to_numpy(dtype=float)[vp_ok] if "entropy" in val_predictions.columns else None
        val_h = birads_mod.prediction_entropy(vp[vp_ok], vg)
    keep, cut = birads_mod.keep_lowest_entropy(h, cfg.high_confidence_fraction, val_h)
    extra.append((("birads", "high_confidence", "fraction"), cfg.high_confidence_fraction))
    extra.append((("birads", "high_confidence", "entropy_cutoff"), cut))
    extra.append((("birads", "high_confidence", "cutoff_from"), "validation" if val_h is not None else "test"))
    extra.append((("birads", "high_confidence", "n_kept"), int(keep.sum())))
    if len(np.unique(yc[keep])) == 3:
        engine.add(("birads", "high_confidence"), cidx[keep], birads_mod.weighted_macauc(yc[keep], probs[keep]))
    else:
        warnings.append("BI-RADS high-confidence subset lacks one of the classes; its macAUC is null")
    curve = birads_mod.macauc_vs_kept_fraction(yc, probs, h, val_entropy=val_h)
    extra.append((("birads", "macauc_vs_kept_fraction"), curve))
    curves["birads_kept"] = curve


# --------------------------------------------------------------------------- reader section
def _reader_section(units, readers, cfg, engine, cl, extra, curves, warnings):
    u = units[np.isfinite(units["y_malignant"].to_numpy(float)) & np.isfinite(units["s_malignant"].to_numpy(float))]
    u = u.reset_index(drop=True)
    key = u["exam_id"].astype(str) + "\t" + u["side"]
    pos_of = pd.Series(np.arange(len(u)), index=key.to_numpy())
    rkey = readers["exam_id"].astype(str) + "\t" + readers["side"]
    matched = rkey.isin(pos_of.index)
    if (~matched).any():
        warnings.append(f"{int((~matched).sum())} reader score(s) are for breasts not evaluated (unknown exam, "
                        f"unknown malignant label or outside the population) and are ignored")
    rd = readers[matched.to_numpy()].copy()
    rd["pos"] = pos_of.loc[rkey[matched].to_numpy()].to_numpy()
    reader_ids = sorted(rd["reader_id"].unique())
    if not reader_ids:
        warnings.append("no reader scores match the evaluated breasts; reader study skipped")
        return
    lam0 = cfg.hybrid_lambda
    lambdas = np.round(np.linspace(0, 1, 21), 3)
    y_all = u["y_malignant"].to_numpy(float)
    m_all = u["s_malignant"].to_numpy(float)
    curves["readers"] = {"readers": {}, "lambdas": lambdas}
    scales = {}
    ops = {}
    for rid in reader_ids:
        r = rd[rd["reader_id"] == rid]
        pos = r["pos"].to_numpy()
        y, m, x = y_all[pos], m_all[pos], r["score"].to_numpy(float)
        scale = r["scale"].iloc[0]
        scales[rid] = scale
        std = cfg.hybrid_zscore == "yes" or (cfg.hybrid_zscore == "auto" and scale == "birads")
        path = ("readers", "per_reader", str(rid))
        extra.append((path + ("scale",), scale))
        extra.append((path + ("hybrid_zscore",), std))
        extra.append((path,  _counts(y)))
        if not ((y == 1).any() and (y == 0).any()):
            warnings.append(f"reader {rid}: needs positive and negative breasts; skipped")
            continue
        thr = float(SUSPICION_POSITIVE) if scale == "birads" else cfg.reader_threshold
        op = confusion_at_threshold(y, x, thr)
        ops[rid] = op
        extra.append((path + ("operating_point", "rule"), "BI-RADS >= 4 (4A)" if scale == "birads" else f"score >= {thr:g}"))
        hyb = hybrid_scores(x, m, lam0, std)
        cidx = cl(u.iloc[pos])
        engine.add(path, cidx, _auc_pair_job({"reader": (y, x), "model": (y, m), "hybrid": (y, hyb)}))
        engine.add(path + ("difference",), cidx, _difference_job(y, m, [x]))
        rr = RankedScores.build(y, x)

        def op_job(W, rr=rr, thr=thr):
            return {f"operating_point/{k}": v for k, v in weighted_at_threshold(rr, thr, W).items()}

        engine.add(path, cidx, op_job)
        engine.add(path + ("model_at_reader_sensitivity",), cidx,
                   _matched_job(y, m, sensitivity=op["sensitivity"]))
        engine.add(path + ("model_at_reader_specificity",), cidx,
                   _matched_job(y, m, specificity=op["specificity"]))
        extra.append((path + ("model_at_reader_sensitivity", "target_sensitivity"), op["sensitivity"]))
        extra.append((path + ("model_at_reader_specificity", "target_specificity"), op["specificity"]))
        extra.append((path + ("hybrid", "lambda"), lam0))
        if (y == 1).sum() >= 2 and (y == 0).sum() >= 2:
            extra.append((path + ("delong_model_vs_reader",), delong_test(y, m, x, cfg.confidence)))
        if cfg.n_permutations > 0:
            a, b = (zscore(m), zscore(x)) if std else (m, x)
            extra.append((path + ("permutation_model_vs_reader",),
                          {**permutation_test(y, a, b, n_trials=cfg.n_permutations, seed=cfg.seed),
                           "scores": "z-scored" if std else "raw"}))
        lam_curve = []
        for lam in lambdas:
            hs = hybrid_scores(x, m, float(lam), std)
            rs = RankedScores.build(y, hs)
            lam_curve.append({"lambda": float(lam), "auroc": float(rs.auc()[0]), "auprc": float(rs.average_precision()[0])})
        extra.append((path + ("lambda_curve",), lam_curve))
        curves["readers"]["readers"][str(rid)] = {
            "roc": roc_curve_points(y, x), "pr": pr_curve_points(y, x), "op": op, "scale": scale,
            "hybrid_roc": roc_curve_points(y, hyb), "hybrid_pr": pr_curve_points(y, hyb), "lambda_curve": lam_curve,
            "model_roc": roc_curve_points(y, m), "model_pr": pr_curve_points(y, m), "prevalence": float(y.mean()),
        }
    # Average reader, reader ensemble and hybrid ensemble on the breasts every reader scored.
    ok_readers = [r for r in reader_ids if r in ops]
    if not ok_readers:
        return
    counts = rd[rd["reader_id"].isin(ok_readers)].groupby("pos")["reader_id"].nunique()
    common = np.sort(counts.index[counts == len(ok_readers)].to_numpy())
    extra.append((("readers", "n_readers"), len(ok_readers)))
    extra.append((("readers", "common"), _counts(y_all[common])))
    y, m = y_all[common], m_all[common]
    if common.size == 0 or not ((y == 1).any() and (y == 0).any()):
        warnings.append("readers share no breasts with both classes; average reader and ensembles skipped")
        return
    X = np.vstack([rd[rd["reader_id"] == r].set_index("pos").loc[common, "score"].to_numpy(float) for r in ok_readers])
    sc = [scales[r] for r in ok_readers]
    if all(s == "birads" for s in sc) or all(s != "birads" for s in sc):
        ens = X.mean(axis=0)
        ens_kind = "mean of suspicion levels" if sc[0] == "birads" else "mean probability"
    else:
        ens = np.vstack([zscore(x) for x in X]).mean(axis=0)
        ens_kind = "mean of z-scores (mixed scales)"
    std = cfg.hybrid_zscore == "yes" or (cfg.hybrid_zscore == "auto" and any(s == "birads" for s in sc))
    cidx = cl(u.iloc[common])
    path = ("readers", "average_reader")
    thr = [float(SUSPICION_POSITIVE) if s == "birads" else cfg.reader_threshold for s in sc]
    common_ops = [confusion_at_threshold(y, X[i], thr[i]) for i in range(len(ok_readers))]
    avg_sens = float(np.mean([o["sensitivity"] for o in common_ops]))
    avg_spec = float(np.mean([o["specificity"] for o in common_ops]))
    extra.append((path + ("sensitivity",), avg_sens))
    extra.append((path + ("specificity",), avg_spec))
    extra.append((path + ("ppv",), float(np.nanmean([o["ppv"] for o in common_ops]))))
    extra.append((path + ("biopsy_rate",), float(np.mean([o["biopsy_rate"] for o in common_ops]))))
    engine.add(path, cidx, _difference_job(y, m, list(X)))
    engine.add(path + ("model_at_average_reader_sensitivity",), cidx, _matched_job(y, m, sensitivity=avg_sens))
    engine.add(path + ("model_at_average_reader_specificity",), cidx, _matched_job(y, m, specificity=avg_spec))
    hyb_ens = hybrid_scores(ens, m, lam0, std)
    engine.add(("readers", "ensemble"), cidx, _auc_pair_job({"reader_ensemble": (y, ens), "hybrid_ensemble": (y, hyb_ens),
                                                            "model": (y, m)}))
    extra.append((("readers", "ensemble", "kind"), ens_kind))
    extra.append((("readers", "ensemble", "hybrid_zscore"), std))
    extra.append((("readers", "ensemble", "lambda"), lam0))
    if (y == 1).sum() >= 2 and (y == 0).sum() >= 2:
        extra.append((("readers", "ensemble", "delong_model_vs_reader_ensemble"), delong_test(y, m, ens, cfg.confidence)))
        extra.append((("readers", "ensemble", "delong_hybrid_ensemble_vs_model"), delong_test(y, hyb_ens, m, cfg.confidence)))
    if cfg.n_permutations > 0:
        a, b = (zscore(m), zscore(ens)) if std else (m, ens)
        extra.append((("readers", "ensemble", "permutation_model_vs_reader_ensemble"),
                      {**permutation_test(y, a, b, n_trials=cfg.n_permutations, seed=cfg.seed),
                       "scores": "z-scored" if std else "raw"}))
    ens_curve = []
    for lam in lambdas:
        rs = RankedScores.build(y, hybrid_scores(ens, m, float(lam), std))
        ens_curve.append({"lambda": float(lam), "auroc": float(rs.auc()[0]), "auprc": float(rs.average_precision()[0])})
    extra.append((("readers", "ensemble", "lambda_curve"), ens_curve))
    curves["readers"]["common"] = {
        "model_roc": roc_curve_points(y, m), "model_pr": pr_curve_points(y, m),
        "ensemble_roc": roc_curve_points(y, ens), "ensemble_pr": pr_curve_points(y, ens),
        "hybrid_ensemble_roc": roc_curve_points(y, hyb_ens), "hybrid_ensemble_pr": pr_curve_points(y, hyb_ens),
        "avg_op": {"sensitivity": avg_sens, "specificity": avg_spec,
                   "ppv": float(np.nanmean([o["ppv"] for o in common_ops])),
                   "recall": avg_sens},
        "ensemble_lambda_curve": ens_curve, "prevalence": float(y.mean()), "n": int(y.size),
    }


def _difference_job(y: np.ndarray, m: np.ndarray, readers: list[np.ndarray]):
    """Model minus the mean over readers of AUROC and AUPRC, on the same resampled cases."""
    rm = RankedScores.build(y, m)
    rr = [RankedScores.build(y, x) for x in readers]

    def fn(W):
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


def _matched_job(y: np.ndarray, m: np.ndarray, *, sensitivity: float | None = None, specificity: float | None = None):
    r = RankedScores.build(y, m)

    def fn(W):
        d = weighted_at_sensitivity(r, sensitivity, W) if sensitivity is not None else weighted_at_specificity(r, specificity, W)
        return dict(d)

    return fn


def _postprocess_readers(metrics: dict[str, Any], cfg: EvalConfig) -> None:
    """Move the average reader's pairwise-difference entries to readable names."""
    avg = metrics.get("readers", {}).get("average_reader")
    if avg is None:
        return
    if "model_minus_reader_auroc" in avg:
        avg["model_minus_average_reader_auroc"] = avg.pop("model_minus_reader_auroc")
        avg["model_minus_average_reader_auprc"] = avg.pop("model_minus_reader_auprc")


def evaluate_predictions(
    predictions_df: pd.DataFrame,
    labels_df: pd.DataFrame,
    readers_df: pd.DataFrame | None = None,
    *,
    val_predictions_df: pd.DataFrame | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Python API: every metric as the metrics.json dictionary.

    ``options`` are :class:`EvalConfig` fields, e.g. ``level="exam"``, ``n_bootstrap=200``,
    ``seed=1``, ``subgroups=("device",)``, ``population="biopsied"``.
    """
    unknown = set(options) - set(EvalConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(EvalConfig.__dataclass_fields__)}")
    cfg = EvalConfig(**options)
    return evaluate(predictions_df, labels_df, readers_df, cfg, val_predictions_df).metrics
