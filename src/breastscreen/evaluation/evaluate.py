"""One call from predictions + labels (+ readers) to every metric with CIs: ``evaluate_predictions``.

All bootstrap CIs of one evaluation share one set of resamples of the patients (or exams
when there are no patient ids), so differences between metrics (model - reader, CC - MLO)
are paired.  A metric of a subset (subgroup, biopsied population, reader study) uses that
subset's cases within each resample.  Metrics whose threshold is matched to a target
(sensitivity >= 0.9, TNR at FNR, triage) re-match the threshold inside every resample.

Layout: :mod:`~breastscreen.evaluation.units` builds the evaluation units,
:mod:`~breastscreen.evaluation.jobs` the metric jobs, :mod:`~breastscreen.evaluation.engine`
runs them on the shared resamples and assembles metrics.json; the optional BI-RADS and reader
sections live in :mod:`breastscreen.evaluation.sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from breastscreen.evaluation.engine import BootstrapEngine, assemble, finite_or_none, jsonable
from breastscreen.evaluation.io import (
    BIRADS_COLUMNS,
    EvaluationInputError,
    validate_labels,
    validate_predictions,
    validate_val_predictions,
)
from breastscreen.evaluation.jobs import auc_pair_job, binary_job, case_counts, delong_entry, thresholds_info
from breastscreen.evaluation.metrics import pr_curve_points, roc_curve_points
from breastscreen.evaluation.operating import DEFAULT_FNRS
from breastscreen.evaluation.readers import validate_readers
from breastscreen.evaluation.sections.birads import birads_section
from breastscreen.evaluation.sections.readers import postprocess_readers, reader_section
from breastscreen.evaluation.stats import Resampler, delong_test
from breastscreen.evaluation.subgroups import default_subgroup_fields, ordered_groups, subgroup_values
from breastscreen.evaluation.units import build_units, population_mask, task_arrays

__all__ = ["EvalConfig", "EvaluationResult", "evaluate", "evaluate_predictions", "build_units", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
LEVELS = ("breast", "image", "exam")
TASKS = ("malignant", "benign", "any_finding", "malignant_vs_benign")


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
    if val_predictions is not None:
        if val_predictions.attrs.get("kind") not in ("exam", "image"):
            val_predictions = validate_predictions(val_predictions)
        validate_val_predictions(val_predictions, predictions)
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
    pop_mask = population_mask(all_units, labels, cfg.population)
    units = all_units[pop_mask].reset_index(drop=True)
    if units.empty:
        raise EvaluationInputError(f"no {cfg.level}s in population {cfg.population!r}")
    # The resampler knows every cluster of the whole cohort so that all sections share draws.
    resampler = None
    if cfg.n_bootstrap > 0:
        resampler = Resampler(np.unique(all_units["cluster"].to_numpy()), n_resamples=cfg.n_bootstrap, seed=cfg.seed)
    engine = BootstrapEngine(resampler, cfg.confidence)

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
        mask, y, s = task_arrays(units, task)
        path = (level, task)
        extra.append((path, case_counts(y)))
        if y.size == 0 or (y == 1).all() or (y == 0).all():
            warnings.append(f"{level}/{task}: needs positive and negative cases (have {int((y == 1).sum())} positive, "
                            f"{int((y == 0).sum())} negative); metrics are null")
            if y.size == 0:
                continue
        engine.add(path, cl(units, mask), binary_job(y, s, cfg, full=True))
        for k, v in thresholds_info(y, s, cfg).items():
            extra.append((path + tuple(k.split("/")), v))
        de = delong_entry(y, s, cfg.confidence)
        if de is not None:
            extra.append((path + ("auroc", "delong"), de))
        if (y == 1).any() and (y == 0).any():
            curves["tasks"][task] = {"roc": roc_curve_points(y, s), "pr": pr_curve_points(y, s),
                                     "prevalence": float(y.mean())}

    # --- populations (AUROC/AUPRC only)
    for pop in ("screening", "biopsied"):
        if pop == cfg.population:
            continue  # copied from the main section after the run
        pm = population_mask(all_units, labels, pop)
        pu = all_units[pm].reset_index(drop=True)
        for task in TASKS:
            mask, y, s = task_arrays(pu, task)
            extra.append((("populations", pop, level, task), case_counts(y)))
            if y.size:
                engine.add(("populations", pop, level, task), cl(pu, mask), auc_pair_job({"model": (y, s)}))

    # --- per-branch AUCs
    branches = [b for b in ("cc", "mlo") if f"{b}_malignant" in units.columns]
    if branches and level == "breast":
        for task in ("malignant", "benign"):
            pairs = {}
            for b in branches:
                mask, y, s = task_arrays(units, task, score_prefix=f"{b}_")
                pairs[b] = (mask, y, s)
            common = np.logical_and.reduce([m for m, _, _ in pairs.values()])
            for b, (mask, y, s) in pairs.items():
                if y.size:
                    engine.add(("branches", b, task), cl(units, mask), auc_pair_job({"model": (y, s)}))
            if len(branches) == 2 and common.sum() > 0:
                _, y1, s1 = task_arrays(units[common].reset_index(drop=True), task, score_prefix="cc_")
                _, _, s2 = task_arrays(units[common].reset_index(drop=True), task, score_prefix="mlo_")
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
            metrics["correlation"] = {"labels": cols, "pearson": [[finite_or_none(v) for v in row] for row in corr],
                                      "n_exams": int(P.shape[0])}
            curves["correlation"] = {"labels": cols, "matrix": corr}

    # --- BI-RADS
    if predictions.attrs.get("kind") == "exam" and all(c in predictions.columns for c in BIRADS_COLUMNS):
        birads_section(predictions, labels, cfg, engine, resampler, extra, curves, warnings, val_predictions,
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
                mask, y, s = task_arrays(gu, task)
                info[task] = case_counts(y)
                extra.append((row_path + (task,), case_counts(y)))
                if y.size:
                    engine.add(row_path + (task,), cl(gu, mask), auc_pair_job({"model": (y, s)}))
            subgroup_rows[f].append(info)

    # --- readers
    if readers is not None:
        if "scale" not in readers.columns:
            readers = validate_readers(readers, cfg.reader_scales)
        breast_units = units if level == "breast" else build_units(predictions, labels, "breast")[
            population_mask(build_units(predictions, labels, "breast"), labels, cfg.population)].reset_index(drop=True)
        reader_section(breast_units, readers, cfg, engine, cl, extra, curves, warnings)

    # --- run and assemble
    assemble(metrics, engine, engine.run(), extra)
    postprocess_readers(metrics, cfg)
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
    return EvaluationResult(metrics=jsonable(metrics), curves=curves, warnings=warnings)


def _flat_sub(d: dict[str, Any]) -> dict[str, Any]:
    """One subgroup's nested entries as a flat table row."""
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
