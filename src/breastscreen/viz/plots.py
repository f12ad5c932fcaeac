"""Evaluation plots (matplotlib, Agg backend): ROC/PR with readers, hybrid-λ curves, subgroup bars,
BI-RADS macAUC vs kept fraction, prediction correlation.  Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from breastscreen.evaluation.engine import format_estimate  # noqa: E402

__all__ = ["plot_roc_pr", "plot_reader_roc_pr", "plot_lambda_curves", "plot_subgroups", "plot_birads_kept",
           "plot_correlation"]

_DPI = 110
_READER_COLORS = ["#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1b9e77", "#666666"]


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(entry: dict[str, Any] | None) -> str:
    return format_estimate(entry)


def plot_roc_pr(curves: dict[str, Any], metrics: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Model ROC (left) and precision-recall (right) curves for every task with both classes."""
    level = curves["level"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    colors = {"malignant": "#c0392b", "benign": "#27ae60", "any_finding": "#2980b9", "malignant_vs_benign": "#8e44ad"}
    for task, c in curves["tasks"].items():
        m = metrics.get(level, {}).get(task, {})
        ax1.plot(c["roc"]["fpr"], c["roc"]["tpr"], color=colors.get(task), lw=2,
                 label=f"{task.replace('_', ' ')}  AUC {_fmt(m.get('auroc'))}")
        ax2.plot(c["pr"]["recall"], c["pr"]["precision"], color=colors.get(task), lw=2, drawstyle="steps-post",
                 label=f"{task.replace('_', ' ')}  AP {_fmt(m.get('auprc'))}")
        ax2.axhline(c["prevalence"], color=colors.get(task), lw=0.8, ls=":")
    ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax1.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
            title=f"ROC ({level} level)")
    ax2.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
            title="Precision-recall (dotted: prevalence)")
    for ax in (ax1, ax2):
        ax.legend(loc="lower right" if ax is ax1 else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_reader_roc_pr(curves: dict[str, Any], metrics: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Reader study: model, each reader (curve + operating point), average reader, hybrids, ensembles."""
    rc = curves["readers"]
    common = rc.get("common")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6))
    readers_m = metrics.get("readers", {}).get("per_reader", {})
    if common is not None:
        ens = metrics["readers"].get("ensemble", {})
        ax1.plot(common["model_roc"]["fpr"], common["model_roc"]["tpr"], color="black", lw=2.5,
                 label=f"model  AUC {_fmt(ens.get('model', {}).get('auroc'))}")
        ax2.plot(common["model_pr"]["recall"], common["model_pr"]["precision"], color="black", lw=2.5,
                 drawstyle="steps-post", label=f"model  AP {_fmt(ens.get('model', {}).get('auprc'))}")
        ax1.plot(common["ensemble_roc"]["fpr"], common["ensemble_roc"]["tpr"], color="#555555", lw=1.8, ls="--",
                 label=f"reader ensemble  AUC {_fmt(ens.get('reader_ensemble', {}).get('auroc'))}")
        ax2.plot(common["ensemble_pr"]["recall"], common["ensemble_pr"]["precision"], color="#555555", lw=1.8, ls="--",
                 drawstyle="steps-post", label=f"reader ensemble  AP {_fmt(ens.get('reader_ensemble', {}).get('auprc'))}")
        ax1.plot(common["hybrid_ensemble_roc"]["fpr"], common["hybrid_ensemble_roc"]["tpr"], color="#1f78b4", lw=2,
                 label=f"hybrid ensemble  AUC {_fmt(ens.get('hybrid_ensemble', {}).get('auroc'))}")
        ax2.plot(common["hybrid_ensemble_pr"]["recall"], common["hybrid_ensemble_pr"]["precision"], color="#1f78b4",
                 lw=2, drawstyle="steps-post",
                 label=f"hybrid ensemble  AP {_fmt(ens.get('hybrid_ensemble', {}).get('auprc'))}")
        op = common["avg_op"]
        ax1.plot(1 - op["specificity"], op["sensitivity"], marker="*", ms=18, color="gold", mec="black",
                 ls="none", zorder=5, label="average reader")
        ax2.plot(op["recall"], op["ppv"], marker="*", ms=18, color="gold", mec="black", ls="none", zorder=5,
                 label="average reader")
    for i, (rid, c) in enumerate(rc["readers"].items()):
        col = _READER_COLORS[i % len(_READER_COLORS)]
        rm = readers_m.get(rid, {})
        ax1.plot(c["roc"]["fpr"], c["roc"]["tpr"], color=col, lw=1.2, alpha=0.9,
                 label=f"reader {rid} ({c['scale']})  AUC {_fmt(rm.get('reader', {}).get('auroc'))}")
        ax1.plot(c["hybrid_roc"]["fpr"], c["hybrid_roc"]["tpr"], color=col, lw=1.0, ls=":",
                 label=f"hybrid {rid}  AUC {_fmt(rm.get('hybrid', {}).get('auroc'))}")
        ax2.plot(c["pr"]["recall"], c["pr"]["precision"], color=col, lw=1.2, drawstyle="steps-post",
                 label=f"reader {rid}  AP {_fmt(rm.get('reader', {}).get('auprc'))}")
        ax2.plot(c["hybrid_pr"]["recall"], c["hybrid_pr"]["precision"], color=col, lw=1.0, ls=":",
                 drawstyle="steps-post", label=f"hybrid {rid}  AP {_fmt(rm.get('hybrid', {}).get('auprc'))}")
        op = c["op"]
        ax1.plot(1 - op["specificity"], op["sensitivity"], marker="o", ms=9, color=col, mec="black", ls="none",
                 zorder=4)
        if np.isfinite(op["ppv"]):
            ax2.plot(op["sensitivity"], op["ppv"], marker="o", ms=9, color=col, mec="black", ls="none", zorder=4)
    ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax1.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
            title="Reader study ROC, malignant (dots: reader operating points)")
    ax2.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
            title="Reader study precision-recall")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is ax1 else "upper right")
    return _save(fig, path)


def plot_lambda_curves(curves: dict[str, Any], path: str | os.PathLike[str], lam_marker: float | None = 0.5) -> Path:
    """AUROC and AUPRC of the hybrid λ·reader + (1-λ)·model as λ goes from 0 (model) to 1 (reader)."""
    rc = curves["readers"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    series = [(rid, c["lambda_curve"], _READER_COLORS[i % len(_READER_COLORS)], "-")
              for i, (rid, c) in enumerate(rc["readers"].items())]
    if rc.get("common") is not None:
        series.append(("reader ensemble", rc["common"]["ensemble_lambda_curve"], "black", "--"))
    for name, curve, col, ls in series:
        lam = [p["lambda"] for p in curve]
        ax1.plot(lam, [p["auroc"] for p in curve], color=col, ls=ls, marker=".", label=str(name))
        ax2.plot(lam, [p["auprc"] for p in curve], color=col, ls=ls, marker=".", label=str(name))
    for ax, what in ((ax1, "AUROC"), (ax2, "AUPRC")):
        if lam_marker is not None:
            ax.axvline(lam_marker, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="λ  (0 = model only, 1 = reader only)", ylabel=what, xlim=(0, 1),
               title=f"Hybrid {what} vs λ (dotted: λ used in the report)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_subgroups(rows: dict[str, list[dict[str, Any]]], path: str | os.PathLike[str], task: str = "malignant") -> Path:
    """One panel per subgroup field: AUROC per group with its CI as error bars and n / positives."""
    fields = list(rows)
    fig, axes = plt.subplots(1, len(fields), figsize=(max(4.5, 3.2 * len(fields)) + 1, 4.5), squeeze=False)
    for ax, f in zip(axes[0], fields):
        groups = rows[f]
        x = np.arange(len(groups))
        v = np.array([g.get(f"{task}_auroc") if g.get(f"{task}_auroc") is not None else np.nan for g in groups], float)
        lo = np.array([g.get(f"{task}_auroc_ci_low") if g.get(f"{task}_auroc_ci_low") is not None else np.nan for g in groups], float)
        hi = np.array([g.get(f"{task}_auroc_ci_high") if g.get(f"{task}_auroc_ci_high") is not None else np.nan for g in groups], float)
        ax.bar(x, np.nan_to_num(v), color="#4c72b0", alpha=0.85)
        err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
        ax.errorbar(x, np.nan_to_num(v), yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=4)
        for xi, g, vi in zip(x, groups, v):
            ax.text(xi, 0.02, f"n={g.get(f'{task}_n')}\npos={g.get(f'{task}_n_positive')}", ha="center", va="bottom",
                    fontsize=7, color="white" if np.isfinite(vi) and vi > 0.15 else "black")
            if not np.isfinite(vi):
                ax.text(xi, 0.5, "n/a", ha="center", fontsize=8)
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_xticks(x, [g["group"] for g in groups], rotation=30 if len(groups) > 4 else 0, fontsize=8)
        ax.set(ylim=(0, 1.05), title=f.replace("_", " "), ylabel=f"{task} AUROC (95% CI)" if ax is axes[0][0] else "")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Subgroup {task} AUROC with bootstrap CIs")
    return _save(fig, path)


def plot_birads_kept(curve: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """BI-RADS macAUC on the lowest-entropy fraction P of examples."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    p = [100 * c["fraction"] for c in curve]
    ax.plot(p, [c["macauc"] if c["macauc"] is not None else np.nan for c in curve], marker="o", color="#8e44ad")
    for c in curve:
        ax.annotate(str(c["n_kept"]), (100 * c["fraction"], c["macauc"] if c["macauc"] is not None else 0.5),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set(xlabel="kept fraction P (% lowest-entropy exams)", ylabel="macAUC", xlim=(5, 105),
           title="BI-RADS macAUC vs kept fraction (labels: n kept)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_correlation(labels: list[str], matrix: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Heat map of the Pearson correlation between the four predicted labels."""
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(labels)), [s.replace("_", "\n") for s in labels], fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if abs(matrix[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Correlation of predicted labels")
    return _save(fig, path)
