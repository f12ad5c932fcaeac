"""BI-RADS section: macAUC of the 3-class BI-RADS prediction, overall and on high-confidence exams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from breastscreen.evaluation import birads as birads_mod
from breastscreen.evaluation.engine import BootstrapEngine
from breastscreen.evaluation.io import BIRADS_COLUMNS, EvaluationInputError
from breastscreen.evaluation.stats import Resampler
from breastscreen.evaluation.units import clusters_for

if TYPE_CHECKING:  # evaluate.py imports this module; the config is only needed for annotations
    from breastscreen.evaluation.evaluate import EvalConfig

__all__ = ["birads_section"]


def birads_section(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    cfg: EvalConfig,
    engine: BootstrapEngine,
    resampler: Resampler | None,
    extra: list[tuple[tuple[str, ...], Any]],
    curves: dict[str, Any],
    warnings: list[str],
    val_predictions: pd.DataFrame | None,
    pop_exams: set[Any],
) -> None:
    """Add the ``birads`` entries for the exams in ``pop_exams`` (exam-level predictions).

    The high-confidence subset keeps the ``cfg.high_confidence_fraction`` of exams with the
    lowest prediction entropy; its cut-off comes from ``val_predictions`` when given, so that
    it is not tuned on the test set.
    """
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
    cstr = clusters_for(frame)
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
