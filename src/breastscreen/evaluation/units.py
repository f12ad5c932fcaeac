"""Evaluation units (breasts, images or exams) built from predictions and labels, and per-task arrays.

A unit carries scores ``s_benign, s_malignant``, labels ``y_benign, y_malignant`` (NaN =
unknown), the label table's other fields (for subgroups) and a bootstrap ``cluster``: the
patient when the labels have patient ids, else the exam.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from breastscreen.data.types import view_side
from breastscreen.evaluation.io import UNKNOWN_COLUMNS, EvaluationInputError, branch_columns

__all__ = ["build_units", "clusters_for", "population_mask", "task_arrays", "truthy"]

_TRUTHY = {"1", "1.0", "true", "yes", "y", "t"}


def truthy(values: pd.Series) -> np.ndarray:
    """Boolean array: which values read as yes (1, true, yes, y, t; any case)."""
    return values.astype(str).str.strip().str.lower().isin(_TRUTHY).to_numpy()


def clusters_for(units: pd.DataFrame) -> np.ndarray:
    """Bootstrap cluster per row: ``patient:<id>`` where a patient id is given, else ``exam:<id>``."""
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
    units["cluster"] = clusters_for(units)
    return units


def task_arrays(units: pd.DataFrame, task: str, score_prefix: str = "s_") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def population_mask(units: pd.DataFrame, labels: pd.DataFrame, population: str) -> np.ndarray:
    """Which units belong to ``population``: ``screening`` (all), ``biopsied`` or a 1/0 labels column.

    Without a ``biopsied`` column, an exam counts as biopsied when any of its breast labels is 1.
    """
    if population == "screening":
        return np.ones(len(units), bool)
    if population == "biopsied":
        if "biopsied" in labels.columns:
            flag = pd.Series(truthy(labels["biopsied"]), index=labels["exam_id"].to_numpy())
        else:
            pos = labels[["left_benign", "left_malignant", "right_benign", "right_malignant"]
                         + [c for c in UNKNOWN_COLUMNS if c in labels.columns]].to_numpy(dtype=float)
            flag = pd.Series((pos == 1).any(axis=1), index=labels["exam_id"].to_numpy())
        return flag.loc[units["exam_id"].to_numpy()].to_numpy(dtype=bool)
    if population not in labels.columns:
        raise EvaluationInputError(f"population must be screening, biopsied or a labels column with 1/0 values, "
                                   f"got {population!r} (labels columns: {', '.join(labels.columns)})")
    flag = pd.Series(truthy(labels[population]), index=labels["exam_id"].to_numpy())
    return flag.loc[units["exam_id"].to_numpy()].to_numpy(dtype=bool)
