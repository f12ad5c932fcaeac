"""Reader-study inputs and score handling: scales, BI-RADS suspicion levels, hybrids.

Readers CSV: ``reader_id, exam_id, side, score`` (one row per reader and breast; ``side`` is
L/R or left/right, any case).  Each reader's scale is detected from all of their scores:

* ``birads``: any score is one of 4A/4B/4C, or every score is a whole number up to 10 (not only
  0/1; values other than 1-5 are then refused as invalid BI-RADS rather than read as percent).  Mapped to
  a 6-point suspicion scale with 1 and 2 merged: 1, 2 -> 1; 3 -> 2; 4A -> 3; 4 and 4B -> 4;
  4C -> 5; 5 -> 6.  The operating point calls BI-RADS >= 4 (suspicion >= 3) positive.
  BI-RADS 0 (incomplete) and 6 (known cancer) are rejected: they are not suspicion levels.
* ``percent``: numbers in [0, 100] with some value above 1; divided by 100.
* ``probability``: numbers in [0, 1].  Operating point: score >= ``reader_threshold`` (0.5).

A reader whose integer 1..5 scores are really percentages must be given an explicit scale
(``scales={"r1": "percent"}`` / ``--reader-scale r1=percent``).
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np
import pandas as pd

from breastscreen.evaluation.io import EvaluationInputError, read_table

__all__ = [
    "BIRADS_SUSPICION",
    "SUSPICION_POSITIVE",
    "read_readers",
    "validate_readers",
    "detect_scale",
    "zscore",
    "hybrid_scores",
]

BIRADS_SUSPICION: dict[str, int] = {"1": 1, "2": 1, "3": 2, "4A": 3, "4": 4, "4B": 4, "4C": 5, "5": 6}
SUSPICION_POSITIVE: int = 3  # BI-RADS 4A and above
SCALES: tuple[str, ...] = ("auto", "birads", "percent", "probability")
_SIDES = {"l": "L", "left": "L", "r": "R", "right": "R"}


def _norm_birads(v: str) -> str:
    v = v.strip().upper().replace("BI-RADS", "").replace("BIRADS", "").strip()
    return re.sub(r"\.0$", "", v)


def detect_scale(values: list[str]) -> str:
    """Scale of one reader's raw scores: ``birads``, ``percent`` or ``probability`` (see module doc)."""
    norm = [_norm_birads(v) for v in values]
    if any(v in ("4A", "4B", "4C") for v in norm):
        return "birads"
    if norm and all(v in ("1", "2", "3", "4", "5") for v in norm):
        return "birads"
    nums = pd.to_numeric(pd.Series(values), errors="coerce")
    if nums.isna().any():
        bad = values[int(np.flatnonzero(nums.isna().to_numpy())[0])]
        raise EvaluationInputError(f"reader score must be a probability, a percentage or BI-RADS 1-5/4A-4C, got {bad!r}")
    arr = nums.to_numpy(dtype=float)
    # Whole numbers up to 10 that are not just 0/1 are BI-RADS with a typo (0, 6, 7 ...), not a
    # percentage: calling them BI-RADS lets the conversion name the bad value instead of reading
    # "7" as 7 %. A percentage reader scoring only 0-10 % can be forced with --reader-scale.
    if np.isfinite(arr).all() and (arr == np.round(arr)).all() and arr.max() <= 10 and not set(arr) <= {0.0, 1.0}:
        return "birads"
    return "percent" if nums.max() > 1.0 else "probability"


def _convert(values: pd.Series, scale: str, reader: str, df: pd.DataFrame) -> np.ndarray:
    if scale == "birads":
        norm = values.map(_norm_birads)
        bad = ~norm.isin(list(BIRADS_SUSPICION))
        if bad.any():
            i = bad.to_numpy().nonzero()[0][0]
            raise EvaluationInputError(
                f"{df.attrs.get('source', '<readers>')} line {values.index[i] + 2}: reader {reader!r} gives BI-RADS "
                f"{values.iloc[i]!r}; allowed 1, 2, 3, 4, 4A, 4B, 4C, 5 (0 and 6 are not suspicion levels)"
            )
        return norm.map(BIRADS_SUSPICION).to_numpy(dtype=float)
    nums = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    hi = 100.0 if scale == "percent" else 1.0
    bad = ~np.isfinite(nums) | (nums < 0) | (nums > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EvaluationInputError(
            f"{df.attrs.get('source', '<readers>')} line {values.index[i] + 2}: reader {reader!r} score must be in "
            f"[0, {hi:g}] on the {scale} scale, got {values.iloc[i]!r}"
        )
    return nums / 100.0 if scale == "percent" else nums


def validate_readers(df: pd.DataFrame, scales: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Normalise a readers table: ``side`` to L/R, ``score`` to the reader's numeric scale.

    Adds ``scale`` (per reader) and keeps the raw value in ``raw_score``.
    """
    src = df.attrs.get("source", "<readers>")
    missing = [c for c in ("reader_id", "exam_id", "side", "score") if c not in df.columns]
    if missing:
        raise EvaluationInputError(f"{src}: readers table is missing column(s) {', '.join(missing)}; "
                                   f"found {', '.join(map(str, df.columns))}")
    df = df.copy()
    df.attrs["source"] = src
    for c in ("reader_id", "exam_id", "side", "score"):
        df[c] = df[c].astype(str).str.strip()
    side = df["side"].str.lower().map(_SIDES)
    if side.isna().any():
        i = int(np.flatnonzero(side.isna().to_numpy())[0])
        raise EvaluationInputError(f"{src} line {i + 2}: side must be L, R, left or right, got {df['side'].iloc[i]!r}")
    df["side"] = side
    empty = df["score"] == ""
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise EvaluationInputError(f"{src} line {i + 2}: empty reader score (drop the row if the reader gave none)")
    dup = df.duplicated(["reader_id", "exam_id", "side"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise EvaluationInputError(f"{src} line {i + 2}: reader {df['reader_id'].iloc[i]!r} scores breast "
                                   f"{df['exam_id'].iloc[i]}/{df['side'].iloc[i]} twice")
    scales = dict(scales or {})
    for k, v in scales.items():
        if v not in SCALES:
            raise EvaluationInputError(f"reader scale for {k!r} must be one of {', '.join(SCALES)}, got {v!r}")
    df["raw_score"] = df["score"]
    out_scores = np.empty(len(df))
    out_scales = np.empty(len(df), dtype=object)
    for reader, idx in df.groupby("reader_id", sort=True).groups.items():
        vals = df.loc[idx, "raw_score"]
        scale = scales.get(reader, scales.get("*", "auto"))
        if scale == "auto":
            scale = detect_scale(vals.tolist())
        pos = df.index.get_indexer(idx)
        out_scores[pos] = _convert(vals, scale, reader, df)
        out_scales[pos] = scale
    df["score"] = out_scores
    df["scale"] = out_scales
    return df


def read_readers(path: str | os.PathLike[str], scales: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read and validate a readers CSV (see the module docstring)."""
    return validate_readers(read_table(path, "readers"), scales)


def zscore(x: np.ndarray) -> np.ndarray:
    """Standardise to mean 0, SD 1 (population SD); a constant vector becomes all zeros."""
    x = np.asarray(x, dtype=float)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def hybrid_scores(reader: np.ndarray, model: np.ndarray, lam: float = 0.5, standardize: bool = False) -> np.ndarray:
    """``lam * reader + (1 - lam) * model``, after z-scoring both when ``standardize``."""
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    r = np.asarray(reader, dtype=float)
    m = np.asarray(model, dtype=float)
    if r.shape != m.shape:
        raise ValueError(f"reader and model scores must have the same shape, got {r.shape} and {m.shape}")
    if standardize:
        r, m = zscore(r), zscore(m)
    return lam * r + (1.0 - lam) * m
