"""Lesion-level evaluation (lesion classification of Wu et al. 2020): ``breastscreen evaluate --level lesion``.

Input: a lesions CSV written by a lesion-level classifier, one row per lesion,
``exam_id, patient_id, view, image, lesion_id, outcome, kind, malignant, benign``:
``image`` is the index of the image within its view (0, 1, ...), ``outcome`` the truth
(``benign``/``malignant``; empty or ``unknown`` = not known: left out of the metrics and
counted), ``kind`` ``mass``/``calcification``/``other`` (any other text is kept as its own
group) or empty, ``malignant``/``benign`` scores in [0, 1] that sum to 1.  ``patient_id`` and ``kind`` may be left out.  A row's key
is ``(exam_id, view, image, lesion_id)``.  An optional manifest supplies patient ids and
missing outcomes.

Metrics (score = ``malignant``, positive = malignant outcome): AUROC and AUPRC with bootstrap
CIs over **patients** (exam when a patient id is empty) and a DeLong CI, TNR at FNR 0, 1, 2,
3, 5 % (the paper's Table 2), AUROC per lesion kind, and with a second lesions file
(``compare``, e.g. local-only vs local+global) the paired difference: bootstrap CI and
DeLong test.  Everything runs on the shared engine of :mod:`breastscreen.evaluation.engine`,
so one set of resamples serves every number and differences are paired.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from breastscreen.evaluation.engine import BootstrapEngine, Job, assemble, finite_or_none, format_estimate, jsonable
from breastscreen.evaluation.evaluate import SCHEMA_VERSION, EvaluationResult
from breastscreen.evaluation.io import EvaluationInputError, _check_ids, _numeric, _require, _where, read_table
from breastscreen.evaluation.jobs import delong_entry, tnr_at_fnr_entries
from breastscreen.evaluation.metrics import (
    GroupCounts,
    RankedScores,
    ap_from_groups,
    auc_from_groups,
    pr_curve_points,
    roc_curve_points,
)
from breastscreen.evaluation.operating import DEFAULT_FNRS, threshold_for_sensitivity
from breastscreen.evaluation.stats import Resampler, delong_test
from breastscreen.evaluation.units import clusters_for

__all__ = [
    "LESION_COLUMNS",
    "LESION_KEY",
    "LESION_KINDS",
    "read_lesion_predictions",
    "validate_lesions",
    "apply_manifest_labels",
    "match_lesions",
    "evaluate_lesion_result",
    "evaluate_lesions",
    "lesion_summary_lines",
]

LESION_COLUMNS: tuple[str, ...] = ("exam_id", "patient_id", "view", "image", "lesion_id", "outcome", "kind",
                                   "malignant", "benign")
LESION_KEY: tuple[str, ...] = ("exam_id", "view", "image", "lesion_id")
LESION_KINDS: tuple[str, ...] = ("mass", "calcification", "other")
_REQUIRED: tuple[str, ...] = ("exam_id", "view", "image", "lesion_id", "outcome", "malignant", "benign")
_OPTIONAL: tuple[str, ...] = ("patient_id", "kind")
_UNKNOWN_OUTCOMES = {"", "unknown", "none"}
_MISSING_KIND = "(missing)"


def _text(col: pd.Series) -> pd.Series:
    # NaN would otherwise become the string "nan" and pass as an id.
    return col.astype(object).where(col.notna(), "").astype(str).str.strip()


def _fail(df: pd.DataFrame, bad: np.ndarray | pd.Series, message: Callable[[int], str]) -> None:
    """Raise naming the file and line of the first ``bad`` row; ``message(i)`` describes row ``i``."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EvaluationInputError(f"{_where(df)} line {i + 2}: {message(i)}")


def validate_lesions(df: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a lesions table (see the module docstring); returns a copy.

    Views are upper-cased, ``image`` becomes an int, ``outcome``/``kind`` lower-case with
    ``""`` for unknown, scores floats; ``attrs["kind"] = "lesion"``.
    """
    from breastscreen.data.types import ALL_VIEWS

    src = df.attrs.get("source", "<table>")
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["source"] = src
    _require(df, _REQUIRED, "a lesion predictions table")
    for c in _OPTIONAL:
        if c not in df.columns:
            df[c] = ""
    raw = {c: df[c].copy() for c in ("view", "image", "outcome")}
    for c in ("exam_id", "patient_id", "view", "lesion_id", "outcome", "kind"):
        df[c] = _text(df[c])
    _check_ids(df, "lesion predictions", key=None)
    _fail(df, df["lesion_id"] == "", lambda i: "empty lesion_id")
    df["view"] = df["view"].str.upper()
    _fail(df, ~df["view"].isin(ALL_VIEWS),
          lambda i: f"view must be one of {', '.join(ALL_VIEWS)}, got {raw['view'].iloc[i]!r}")
    image = pd.to_numeric(_text(df["image"]), errors="coerce")
    _fail(df, ~(image.notna() & (image >= 0) & (image == np.floor(image))),
          lambda i: f"image must be the image's index within its view (0, 1, ...), got {raw['image'].iloc[i]!r}")
    df["image"] = image.astype(np.int64)
    outcome = df["outcome"].str.lower()
    _fail(df, ~outcome.isin(_UNKNOWN_OUTCOMES | {"benign", "malignant"}),
          lambda i: f"outcome must be benign, malignant or empty (unknown), got {raw['outcome'].iloc[i]!r}")
    df["outcome"] = outcome.where(~outcome.isin(_UNKNOWN_OUTCOMES), "")
    # Any kind is kept (adapters write e.g. "cyst" or "architectural distortion"); it only groups AUROCs.
    df["kind"] = df["kind"].str.lower()
    for c in ("malignant", "benign"):
        df[c] = _numeric(df, c, 0.0, 1.0, "score")
        # Unlike a breast prediction, an empty lesion score means nothing: the classifier saw the lesion.
        empty = np.isnan(df[c].to_numpy())
        _fail(df, empty, lambda i: f"score column {c!r} is empty ({int(empty.sum())} empty cell(s)); "
                                   "every lesion needs both scores")
    sums = (df["malignant"] + df["benign"]).to_numpy()
    _fail(df, np.abs(sums - 1.0) > 1e-3, lambda i: f"malignant + benign must sum to 1, got {sums[i]:.4f}")
    _check_ids(df, "lesion predictions", LESION_KEY)
    df.attrs["kind"] = "lesion"
    return df


def read_lesion_predictions(path: str | os.PathLike[str],
                            labels: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read and validate a lesions CSV; with ``labels`` (a manifest), apply :func:`apply_manifest_labels`."""
    df = validate_lesions(read_table(path, "lesion predictions"))
    if labels is not None:
        df = apply_manifest_labels(df, labels)
    return df


def apply_manifest_labels(df: pd.DataFrame, manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """Take patient ids from a manifest and check that every lesion's exam, view and image exist there.

    The manifest's lesions (:func:`breastscreen.data.lesions.exam_lesions`: masks/ROIs by
    ``lesion_id``, automatic ids ``m1``/``r1`` otherwise) fill an empty ``outcome``; a known
    outcome that disagrees is an error, and so is a CSV patient id that differs from the
    manifest's (the files would describe different cohorts).
    """
    from breastscreen.data.manifest import read_manifest

    path = Path(manifest)
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise EvaluationInputError(f"{path}: lesion labels must be a manifest .jsonl (the outcome column of the "
                                   "lesions CSV is the truth otherwise)")
    if not path.exists():
        raise EvaluationInputError(f"labels file not found: {path}")
    exams = {e.exam_id: e for e in read_manifest(path, allow_outside_paths=True)}  # no image file is opened
    missing = pd.Index(df["exam_id"].unique()).difference(pd.Index(list(exams)))
    if len(missing):
        raise EvaluationInputError(f"{_where(df)}: {len(missing)} of {df['exam_id'].nunique()} exam ids are not in "
                                   f"the manifest {path} (first: {', '.join(map(str, missing[:5]))})")
    try:
        from breastscreen.data.lesions import exam_lesions
    except ImportError:  # older data layer without lesion records: only patient ids are filled
        exam_lesions = None
    truth: dict[tuple[str, str, int, str], str] = {}
    if exam_lesions is not None:
        for eid in df["exam_id"].unique():
            truth.update({(eid, r.view, r.image_index, r.lesion_id): r.outcome for r in exam_lesions(exams[eid])
                          if r.outcome})
    out = df.copy()
    patient, outcome = out["patient_id"].tolist(), out["outcome"].tolist()
    for i, r in enumerate(out.itertuples(index=False)):
        exam = exams[r.exam_id]
        if exam.patient_id:
            if patient[i] and patient[i] != exam.patient_id:
                raise EvaluationInputError(f"{_where(df)} line {i + 2}: patient_id {patient[i]!r} differs from the "
                                           f"manifest's {exam.patient_id!r} for exam {r.exam_id!r}")
            patient[i] = exam.patient_id
        n_images = len(exam.views.get(r.view, []))
        if r.image >= n_images:
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: exam {r.exam_id!r} has {n_images} {r.view} "
                                       f"image(s) in {path}; image index {r.image} does not exist")
        label = truth.get((r.exam_id, r.view, r.image, r.lesion_id))
        if label is not None:
            if outcome[i] and outcome[i] != label:
                raise EvaluationInputError(f"{_where(df)} line {i + 2}: outcome {outcome[i]!r} contradicts the "
                                           f"manifest's {label!r} for lesion {r.lesion_id!r}")
            outcome[i] = label
    out["patient_id"], out["outcome"] = patient, outcome
    out.attrs.update(df.attrs)
    return out


def _key_text(key: tuple[Any, ...]) -> str:
    return "/".join(map(str, key))


def match_lesions(df: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    """Row positions of ``other`` matching each row of ``df`` on (exam_id, view, image, lesion_id).

    Both files must hold exactly the same lesions, and an outcome known in both must agree.
    """
    ia = pd.MultiIndex.from_frame(df[list(LESION_KEY)])
    ib = pd.MultiIndex.from_frame(other[list(LESION_KEY)])
    only_a, only_b = ia.difference(ib), ib.difference(ia)
    if len(only_a) or len(only_b):
        first = [_key_text(k) for k in list(only_a[:3]) + list(only_b[:3])]
        raise EvaluationInputError(
            f"{_where(other)}: the compare file does not match {_where(df)}: {len(only_a)} of {len(ia)} lesion(s) "
            f"of {_where(df)} are missing from it and {len(only_b)} of its {len(ib)} lesion(s) are not in "
            f"{_where(df)} (key exam_id/view/image/lesion_id; first unmatched: {', '.join(first)})")
    pos = ib.get_indexer(ia)
    oa, ob = df["outcome"].to_numpy(), other["outcome"].to_numpy()[pos]
    clash = (oa != "") & (ob != "") & (oa != ob)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise EvaluationInputError(f"{_where(other)}: {int(clash.sum())} lesion(s) have a different outcome than in "
                                   f"{_where(df)} (first: {_key_text(ia[i])}: {ob[i]!r} vs {oa[i]!r})")
    return pos


def _lesion_job(y: np.ndarray, s: np.ndarray, fnrs: tuple[float, ...]) -> Job:
    """AUROC, AUPRC and TNR at each FNR (threshold re-matched per resample)."""
    r = RankedScores.build(y, s)
    has_pos = bool((y == 1).any())

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        g = GroupCounts.build(*r.group_weights(W))
        out = {"auroc": auc_from_groups(g), "auprc": ap_from_groups(g)}
        if has_pos:
            out.update(tnr_at_fnr_entries(r, g, fnrs))
        return out

    return fn


def _difference_job(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> Job:
    """AUROC and AUPRC of ``s1`` minus those of ``s2`` on the same resampled lesions."""
    r1, r2 = RankedScores.build(y, s1), RankedScores.build(y, s2)

    def fn(W: np.ndarray | None) -> dict[str, np.ndarray]:
        g1, g2 = GroupCounts.build(*r1.group_weights(W)), GroupCounts.build(*r2.group_weights(W))
        return {"auroc_difference": auc_from_groups(g1) - auc_from_groups(g2),
                "auprc_difference": ap_from_groups(g1) - ap_from_groups(g2)}

    return fn


def _thresholds(y: np.ndarray, s: np.ndarray, fnrs: tuple[float, ...]) -> dict[str, Any]:
    if not (y == 1).any():
        return {}
    return {f"{f:g}": {"threshold": threshold_for_sensitivity(y, s, 1.0 - f)} for f in fnrs}


def _counts(sub: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    n, n_mal = int(y.size), int((y == 1).sum())
    pid = sub["patient_id"]
    return {"n": n, "n_malignant": n_mal, "n_benign": n - n_mal,
            "prevalence": finite_or_none(n_mal / n) if n else None,
            "n_patients": int(pid[pid != ""].nunique()), "n_exams": int(sub["exam_id"].nunique())}


def _curves(y: np.ndarray, s: np.ndarray) -> dict[str, Any] | None:
    if not ((y == 1).any() and (y == 0).any()):
        return None
    return {"roc": roc_curve_points(y, s), "pr": pr_curve_points(y, s), "prevalence": float(y.mean())}


def evaluate_lesion_result(
    df: pd.DataFrame,
    n_bootstrap: int = 1000,
    seed: int = 0,
    compare: pd.DataFrame | None = None,
    *,
    confidence: float = 0.95,
    fnrs: tuple[float, ...] = DEFAULT_FNRS,
) -> EvaluationResult:
    """Every lesion-level metric (metrics.json dictionary) plus plot data; see :func:`evaluate_lesions`."""
    if int(n_bootstrap) < 0:
        raise EvaluationInputError(f"bootstrap resamples must be >= 0, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise EvaluationInputError(f"confidence must be in (0, 1), got {confidence}")
    fnrs = tuple(float(f) for f in fnrs)
    if any(not 0 <= f <= 1 for f in fnrs):
        raise EvaluationInputError(f"false-negative rates must be in [0, 1], got {list(fnrs)}")
    if df.attrs.get("kind") != "lesion":
        df = validate_lesions(df)
    if compare is not None and compare.attrs.get("kind") != "lesion":
        compare = validate_lesions(compare)
    pos = match_lesions(df, compare) if compare is not None else None

    known_mask = (df["outcome"] != "").to_numpy()
    known = df[known_mask].reset_index(drop=True)
    n_unknown = int((~known_mask).sum())
    if known.empty:
        raise EvaluationInputError(f"{_where(df)}: no lesion has a known outcome (all {len(df)} are empty/unknown)")
    y = (known["outcome"] == "malignant").to_numpy(dtype=float)
    s = known["malignant"].to_numpy(dtype=float)
    clusters = clusters_for(known)
    warnings: list[str] = []
    if n_unknown:
        warnings.append(f"{n_unknown} lesion(s) with unknown outcome are excluded from the metrics")
    if y.all() or not y.any():
        warnings.append(f"lesion: needs malignant and benign lesions (have {int(y.sum())} malignant, "
                        f"{int((y == 0).sum())} benign); AUROC/AUPRC are null")

    resampler = None
    if n_bootstrap > 0:
        resampler = Resampler(np.unique(clusters), n_resamples=int(n_bootstrap), seed=int(seed))
    engine = BootstrapEngine(resampler, confidence)

    def cl(mask: np.ndarray | None = None) -> np.ndarray:
        c = clusters if mask is None else clusters[mask]
        return resampler.cluster_index(c) if resampler is not None else np.zeros(len(c), np.intp)

    extra: list[tuple[tuple[str, ...], Any]] = []
    curves: dict[str, Any] = {"level": "lesion", "tasks": {}}
    counts = {"n_lesions": int(len(df)), **_counts(known, y), "n_unknown": n_unknown,
              "n_clusters": int(np.unique(clusters).size)}
    engine.add(("lesion",), cl(), _lesion_job(y, s, fnrs))
    if fnrs and (y == 1).any():
        extra.append((("lesion", "tnr_at_fnr"), _thresholds(y, s, fnrs)))
    de = delong_entry(y, s, confidence)
    if de is not None:
        extra.append((("lesion", "auroc", "delong"), de))
    if (c := _curves(y, s)) is not None:
        curves["tasks"]["malignant_vs_benign"] = c

    # Per kind: only kinds that occur; a kind needs both classes for an AUROC.
    kinds = known["kind"].replace({"": _MISSING_KIND}).to_numpy()
    if (kinds != _MISSING_KIND).any():
        others = sorted(set(kinds.tolist()) - set(LESION_KINDS) - {_MISSING_KIND})
        for k in [k for k in LESION_KINDS + tuple(others) + (_MISSING_KIND,) if (kinds == k).any()]:
            m = kinds == k
            extra.append((("lesion", "by_kind", k), _counts(known[m], y[m])))
            if (y[m] == 1).any() and (y[m] == 0).any():
                engine.add(("lesion", "by_kind", k), cl(m), _lesion_job(y[m], s[m], ()))
            else:
                extra.append((("lesion", "by_kind", k, "auroc"), {"value": None}))

    if compare is not None and pos is not None:
        s2 = compare["malignant"].to_numpy(dtype=float)[pos][known_mask]
        path = ("lesion", "compare")
        extra.append((path, {"source": _where(compare), "n_matched": int(len(df))}))
        engine.add(path, cl(), _lesion_job(y, s2, fnrs))
        engine.add(path, cl(), _difference_job(y, s, s2))
        if fnrs and (y == 1).any():
            extra.append((path + ("tnr_at_fnr",), _thresholds(y, s2, fnrs)))
        if (y == 1).sum() >= 2 and (y == 0).sum() >= 2:
            extra.append((path + ("delong",), delong_test(y, s, s2, confidence)))
        else:
            warnings.append("lesion/compare: the DeLong test needs at least 2 malignant and 2 benign lesions")
        if (c := _curves(y, s2)) is not None:
            curves["tasks"]["compare"] = c

    # Counts first so that metrics.json reads top-down; the engine's entries merge in below them.
    metrics: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "lesion": counts}
    assemble(metrics, engine, engine.run(), extra)
    has_pid = (known["patient_id"] != "").to_numpy()
    metrics["meta"] = {
        "level": "lesion",
        "population": "lesions with a known outcome",
        "predictions": _where(df),
        "compare": _where(compare) if compare is not None else None,
        "n_units_in_population": int(len(known)),
        "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(seed), "confidence": confidence,
                      "method": "percentile",
                      "cluster": "patient_id" if has_pid.all() else "exam_id" if not has_pid.any()
                      else "patient_id (exam_id where empty)",
                      "n_clusters": int(resampler.n_clusters) if resampler is not None else None},
        "fnrs": list(fnrs),
        "warnings": warnings,
    }
    return EvaluationResult(metrics=jsonable(metrics), curves=curves, warnings=warnings)


def evaluate_lesions(
    df: pd.DataFrame,
    n_bootstrap: int = 1000,
    seed: int = 0,
    compare: pd.DataFrame | None = None,
    *,
    confidence: float = 0.95,
    fnrs: tuple[float, ...] = DEFAULT_FNRS,
) -> dict[str, Any]:
    """Lesion-level metrics as the metrics.json dictionary (``metrics["lesion"]``, ``metrics["meta"]``).

    Malignant-vs-benign AUROC/AUPRC (score = ``malignant``) with patient-clustered bootstrap CIs,
    TNR at each FNR in ``fnrs``, per-kind AUROC and, with ``compare`` (a second lesions table
    with the same keys), this file minus the compare file: bootstrap CI and DeLong test.
    """
    return evaluate_lesion_result(df, n_bootstrap, seed, compare, confidence=confidence, fnrs=fnrs).metrics


def _fmt_ci(e: dict[str, Any] | None) -> str:
    return format_estimate(e, digits=4)


def lesion_summary_lines(metrics: dict[str, Any]) -> list[str]:
    """One-line summaries for the terminal: the AUROC with counts, and the comparison when present."""
    le = metrics.get("lesion", {})
    lines = [f"lesion-level malignant AUROC {_fmt_ci(le.get('auroc'))} (n={le.get('n')} lesions: "
             f"{le.get('n_malignant')} malignant, {le.get('n_benign')} benign, {le.get('n_unknown')} unknown "
             f"excluded; {le.get('n_clusters')} patient clusters)"]
    cmp_ = le.get("compare")
    if cmp_:
        dl = cmp_.get("delong") or {}
        delong = (f"; DeLong {dl['difference']:+.4f} [{dl['ci_low']:.3f}, {dl['ci_high']:.3f}], p={dl['p_value']:.3g}"
                  if dl else "")
        diff = cmp_.get("auroc_difference") or {}
        boot = (f" [{diff['ci_low']:.3f}, {diff['ci_high']:.3f}]" if diff.get("ci_low") is not None else "")
        d = f"{diff['value']:+.4f}" if diff.get("value") is not None else "n/a"
        lines.append(f"compare {cmp_.get('source')}: AUROC {_fmt_ci(cmp_.get('auroc'))}; "
                     f"difference (this - compare) {d}{boot}{delong}")
    return lines
