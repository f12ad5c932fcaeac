"""Reader-study section: model vs readers, hybrid (model + reader) scores and reader ensembles.

Reader scores are either BI-RADS suspicion levels (positive from 4A) or probabilities (positive
from ``reader_threshold``).  Hybrid scores mix the model and a reader with weight ``lambda``;
BI-RADS readers are z-scored first by default because their scale is not a probability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from breastscreen.evaluation.engine import BootstrapEngine, ClusterIndex
from breastscreen.evaluation.jobs import auc_pair_job, case_counts, difference_job, matched_job
from breastscreen.evaluation.metrics import RankedScores, pr_curve_points, roc_curve_points
from breastscreen.evaluation.operating import confusion_at_threshold, weighted_at_threshold
from breastscreen.evaluation.readers import SUSPICION_POSITIVE, hybrid_scores, zscore
from breastscreen.evaluation.stats import delong_test, permutation_test

if TYPE_CHECKING:  # evaluate.py imports this module; the config is only needed for annotations
    from breastscreen.evaluation.evaluate import EvalConfig

__all__ = ["reader_section", "postprocess_readers"]


def reader_section(
    units: pd.DataFrame,
    readers: pd.DataFrame,
    cfg: EvalConfig,
    engine: BootstrapEngine,
    cl: ClusterIndex,
    extra: list[tuple[tuple[str, ...], Any]],
    curves: dict[str, Any],
    warnings: list[str],
) -> None:
    """Add the ``readers`` entries: per reader, the average reader and the reader/hybrid ensembles.

    ``units`` are breast-level units of the evaluated population; reader scores are matched to
    them by exam id and side, and only breasts with a known malignant label and a model score
    count.  The average reader and the ensembles use the breasts that every reader scored.
    """
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
        extra.append((path,  case_counts(y)))
        if not ((y == 1).any() and (y == 0).any()):
            warnings.append(f"reader {rid}: needs positive and negative breasts; skipped")
            continue
        thr = float(SUSPICION_POSITIVE) if scale == "birads" else cfg.reader_threshold
        op = confusion_at_threshold(y, x, thr)
        ops[rid] = op
        extra.append((path + ("operating_point", "rule"), "BI-RADS >= 4 (4A)" if scale == "birads" else f"score >= {thr:g}"))
        hyb = hybrid_scores(x, m, lam0, std)
        cidx = cl(u.iloc[pos])
        engine.add(path, cidx, auc_pair_job({"reader": (y, x), "model": (y, m), "hybrid": (y, hyb)}))
        engine.add(path + ("difference",), cidx, difference_job(y, m, [x]))
        rr = RankedScores.build(y, x)

        def op_job(W, rr=rr, thr=thr):
            return {f"operating_point/{k}": v for k, v in weighted_at_threshold(rr, thr, W).items()}

        engine.add(path, cidx, op_job)
        engine.add(path + ("model_at_reader_sensitivity",), cidx,
                   matched_job(y, m, sensitivity=op["sensitivity"]))
        engine.add(path + ("model_at_reader_specificity",), cidx,
                   matched_job(y, m, specificity=op["specificity"]))
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
    extra.append((("readers", "common"), case_counts(y_all[common])))
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
    engine.add(path, cidx, difference_job(y, m, list(X)))
    engine.add(path + ("model_at_average_reader_sensitivity",), cidx, matched_job(y, m, sensitivity=avg_sens))
    engine.add(path + ("model_at_average_reader_specificity",), cidx, matched_job(y, m, specificity=avg_spec))
    hyb_ens = hybrid_scores(ens, m, lam0, std)
    engine.add(("readers", "ensemble"), cidx, auc_pair_job({"reader_ensemble": (y, ens), "hybrid_ensemble": (y, hyb_ens),
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


def postprocess_readers(metrics: dict[str, Any], cfg: EvalConfig) -> None:
    """Move the average reader's pairwise-difference entries to readable names."""
    avg = metrics.get("readers", {}).get("average_reader")
    if avg is None:
        return
    if "model_minus_reader_auroc" in avg:
        avg["model_minus_average_reader_auroc"] = avg.pop("model_minus_reader_auroc")
        avg["model_minus_average_reader_auprc"] = avg.pop("model_minus_reader_auprc")
