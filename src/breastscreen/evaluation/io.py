"""Reading and checking the evaluation inputs: predictions, labels (CSV or manifest), readers.

Predictions CSV (one row per exam)
    ``exam_id, left_benign, left_malignant, right_benign, right_malignant`` (probabilities in
    [0, 1]; empty = breast not predicted).  Optional: ``birads_0, birads_1, birads_2`` (all
    three) and ``entropy`` for BI-RADS models; per-branch outputs named
    ``<branch>_<side>_<label>`` with branch ``cc`` or ``mlo`` (e.g. ``cc_left_malignant``);
    ``unknown_benign, unknown_malignant`` (both) for the unknown-laterality ultrasound bag
    (``U-US``), evaluated as a third breast ``U`` (empty = the exam has no such bag).
Image-level predictions CSV (one row per image)
    ``exam_id, view, benign, malignant`` with ``view`` one of L-CC, R-CC, L-MLO, R-MLO,
    L-US, R-US, U-US (optional ``image_id``).
Labels
    CSV ``exam_id, left_benign, left_malignant, right_benign, right_malignant`` (0/1, empty =
    unknown) plus optional ``unknown_benign, unknown_malignant`` (label of the ``U-US`` bag),
    ``patient_id, age, density, birads, device, biopsied`` and any other
    column (usable with ``--subgroup``); or a manifest ``.jsonl`` (labels, ``U-US`` labels from
    ``labels.U`` when some exam has a ``U-US`` bag or a U label, patient id, age,
    density, BI-RADS, study date, exam ``meta`` fields and the image ``meta`` fields
    device/manufacturer/vendor/model when all images agree).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from breastscreen.errors import BreastscreenError
from breastscreen.labels import BREAST_LABELS

__all__ = [
    "EvaluationInputError",
    "BRANCHES",
    "UNKNOWN_COLUMNS",
    "BIRADS_COLUMNS",
    "branch_columns",
    "read_table",
    "read_predictions",
    "validate_predictions",
    "read_labels",
    "labels_from_exams",
    "validate_labels",
    "validate_val_predictions",
]

BRANCHES: tuple[str, ...] = ("cc", "mlo")
BIRADS_COLUMNS: tuple[str, ...] = ("birads_0", "birads_1", "birads_2")
IMAGE_LEVEL_COLUMNS: tuple[str, ...] = ("exam_id", "view", "benign", "malignant")
# Unknown-laterality (U-US) bag: optional prediction and label columns, evaluated as breast "U".
UNKNOWN_COLUMNS: tuple[str, ...] = ("unknown_benign", "unknown_malignant")
_IMAGE_META_KEYS: tuple[str, ...] = ("device", "manufacturer", "vendor", "model")
MAX_TABLE_BYTES = 1024 * 1024 * 1024


class EvaluationInputError(BreastscreenError):
    """A predictions, labels or readers file breaks the documented format."""


def branch_columns(columns: list[str] | pd.Index) -> dict[str, list[str]]:
    """Per-branch prediction columns present, ``{"cc": [cc_left_benign, ...], ...}`` (complete branches only)."""
    out = {}
    for b in BRANCHES:
        cols = [f"{b}_{c}" for c in BREAST_LABELS]
        if all(c in columns for c in cols):
            out[b] = cols
    return out


def read_table(path: str | os.PathLike[str], what: str) -> pd.DataFrame:
    """Read a CSV with every column as text (ids keep leading zeros); clear error when missing/empty."""
    import io

    from breastscreen.safety import read_user_text

    path = Path(path)
    if not path.exists():
        raise EvaluationInputError(f"{what} file not found: {path}")
    text = read_user_text(path, f"{what} CSV", MAX_TABLE_BYTES, EvaluationInputError)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise EvaluationInputError(f"{path}: cannot read {what} CSV ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["source"] = str(path)
    return df


def _where(df: pd.DataFrame) -> str:
    return df.attrs.get("source", "<table>")


def _require(df: pd.DataFrame, cols: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns)) or "(none)"
        if len(found) > 200:
            # predictions.jsonl given as a CSV: its first line parses as hundreds of "columns"
            hint = "; is this a CSV file?" if str(df.columns[0]).lstrip().startswith("{") else ""
            found = found[:200] + f"… ({len(df.columns)} columns{hint})"
        raise EvaluationInputError(f"{_where(df)}: {what} is missing column(s) {', '.join(missing)}; found columns: {found}")


def _numeric(df: pd.DataFrame, col: str, lo: float | None, hi: float | None, what: str) -> np.ndarray:
    """Parse a column as floats (an empty cell = missing) with the file line of the first bad value.

    Text such as ``NaN``, ``NA`` or ``inf`` is an error, never "missing": a model that wrote NaN
    failed, and silently dropping its rows would change every metric.
    """
    text = df[col].dtype == object or pd.api.types.is_string_dtype(df[col])
    raw = df[col].astype(object).where(df[col].notna(), "").astype(str).str.strip() if text else df[col]
    vals = pd.to_numeric(raw.replace({"": np.nan}), errors="coerce") if text else pd.to_numeric(raw, errors="coerce")
    if text:
        lowered = raw.str.lower()
        bad = (vals.isna() & (raw != "")) | lowered.isin(["nan", "+nan", "-nan"])
    else:
        bad = pd.Series(False, index=df.index)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise EvaluationInputError(
            f"{_where(df)} line {i + 2}: {what} column {col!r} must be a finite number or empty, got {df[col].iloc[i]!r}"
            " (leave the cell empty for a value that is missing)"
        )
    arr = vals.to_numpy(dtype=float)
    outside = np.zeros(arr.shape, bool)
    if lo is not None:
        outside |= arr < lo
    if hi is not None:
        outside |= arr > hi
    if np.isinf(arr).any():
        outside |= np.isinf(arr)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise EvaluationInputError(
            f"{_where(df)} line {i + 2}: {col} must be a probability in [{lo}, {hi}], got {float(arr[i])!r} "
            f"({int(outside.sum())} value(s) outside the range in this column)"
        )
    return arr


def _check_ids(df: pd.DataFrame, what: str, key: tuple[str, ...] | None = ("exam_id",)) -> None:
    ids = df["exam_id"].astype(str).str.strip()
    if (ids == "").any():
        i = int(np.flatnonzero((ids == "").to_numpy())[0])
        raise EvaluationInputError(f"{_where(df)} line {i + 2}: empty exam_id in {what}")
    if key is None:
        return
    dup = df.duplicated(list(key), keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        # NumPy scalars would print as np.int64(0) in the message.
        values = tuple(v.item() if isinstance(v, np.generic) else v for v in df.iloc[i][list(key)])
        raise EvaluationInputError(
            f"{_where(df)} line {i + 2}: {what} repeats {'/'.join(key)} {values!r} ({int(dup.sum())} duplicate row(s))"
        )


def _unknown_columns(df: pd.DataFrame, what: str) -> tuple[str, ...]:
    """``UNKNOWN_COLUMNS`` when the table has them (both), ``()`` when it has neither."""
    present = [c for c in UNKNOWN_COLUMNS if c in df.columns]
    if present and len(present) != len(UNKNOWN_COLUMNS):
        raise EvaluationInputError(
            f"{_where(df)}: {what} with an unknown-side bag need both {', '.join(UNKNOWN_COLUMNS)}, "
            f"found only {', '.join(present)}"
        )
    return UNKNOWN_COLUMNS if present else ()


def validate_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """Check and convert a predictions table (exam-level wide form or image-level long form).

    Returns a copy with numeric columns as floats and ``attrs["kind"]`` = ``"exam"`` or ``"image"``.
    """
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    if "view" in df.columns and not all(c in df.columns for c in BREAST_LABELS):
        _require(df, IMAGE_LEVEL_COLUMNS, "an image-level predictions table")
        df["exam_id"] = df["exam_id"].astype(str).str.strip()
        df["view"] = df["view"].astype(str).str.strip().str.upper()
        from breastscreen.data.types import ALL_VIEWS

        bad = ~df["view"].isin(ALL_VIEWS)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: view must be one of {', '.join(ALL_VIEWS)}, got {df['view'].iloc[i]!r}")
        # Several images per view are allowed; only an explicit image_id must be unique.
        _check_ids(df, "image-level predictions", ("exam_id", "view", "image_id") if "image_id" in df.columns else None)
        for c in ("benign", "malignant"):
            df[c] = _numeric(df, c, 0.0, 1.0, "prediction")
        df.attrs["kind"] = "image"
        return df
    _require(df, ("exam_id",) + BREAST_LABELS, "a predictions table")
    df["exam_id"] = df["exam_id"].astype(str).str.strip()
    _check_ids(df, "predictions")
    for c in BREAST_LABELS:
        df[c] = _numeric(df, c, 0.0, 1.0, "prediction")
    for c in _unknown_columns(df, "predictions"):
        df[c] = _numeric(df, c, 0.0, 1.0, "prediction")
    present = [c for c in BIRADS_COLUMNS if c in df.columns]
    if present and len(present) != len(BIRADS_COLUMNS):
        raise EvaluationInputError(
            f"{_where(df)}: BI-RADS predictions need all of {', '.join(BIRADS_COLUMNS)}, found only {', '.join(present)}"
        )
    for c in present:
        df[c] = _numeric(df, c, 0.0, 1.0, "BI-RADS prediction")
    if present:
        sums = df[list(BIRADS_COLUMNS)].sum(axis=1, min_count=3).to_numpy()
        off = np.isfinite(sums) & (np.abs(sums - 1.0) > 1e-3)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: birads_0..2 must sum to 1, got {sums[i]:.4f}")
    if "entropy" in df.columns:
        df["entropy"] = _numeric(df, "entropy", 0.0, None, "entropy")
    for cols in branch_columns(df.columns).values():
        for c in cols:
            df[c] = _numeric(df, c, 0.0, 1.0, "branch prediction")
    df.attrs["kind"] = "exam"
    return df


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a predictions CSV (see the module docstring for the columns)."""
    df = read_table(path, "predictions")
    src = df.attrs.get("source")
    out = validate_predictions(df)
    out.attrs["source"] = src
    return out


def validate_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Check and convert a labels table: label columns to 0/1/NaN, ``age`` numeric, ``density`` A-D."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    _require(df, ("exam_id",) + BREAST_LABELS, "a labels table")
    df["exam_id"] = df["exam_id"].astype(str).str.strip()
    _check_ids(df, "labels")
    for c in BREAST_LABELS + _unknown_columns(df, "labels"):
        raw = df[c]
        # pandas keeps NaN through astype(str); make unknowns explicit empty strings first.
        text = raw.astype(object).where(raw.notna(), "").astype(str).str.strip().str.lower()
        mapped = text.map({"": np.nan, "nan": np.nan, "none": np.nan, "0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0,
                           "false": 0.0, "true": 1.0})
        bad = mapped.isna() & ~text.isin(["", "nan", "none"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: label {c!r} must be 0, 1 or empty, got {raw.iloc[i]!r}")
        df[c] = mapped.astype(float)
    if "age" in df.columns:
        df["age"] = _numeric(df, "age", 0.0, 150.0, "age")
    if "density" in df.columns:
        d = df["density"].astype(object).where(df["density"].notna(), "").astype(str).str.strip().str.upper()
        d = d.replace({"NAN": "", "NONE": ""})
        d = d.replace({"1": "A", "2": "B", "3": "C", "4": "D"})
        bad = ~d.isin(["", "A", "B", "C", "D"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: density must be A-D (or 1-4), got {df['density'].iloc[i]!r}")
        df["density"] = d.replace({"": np.nan})
    if "birads" in df.columns:
        from breastscreen.data.types import BIRADS_VALUES

        b = df["birads"].astype(object).where(df["birads"].notna(), "").astype(str).str.strip().str.upper()
        b = b.str.replace(r"^BI-?RADS\s*", "", regex=True).str.replace(r"\.0$", "", regex=True)
        b = b.replace({"NAN": "", "NONE": ""})
        bad = ~b.isin(["", *BIRADS_VALUES])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise EvaluationInputError(f"{_where(df)} line {i + 2}: birads must be one of {', '.join(BIRADS_VALUES)} "
                                       f"or empty, got {df['birads'].iloc[i]!r}")
        df["birads"] = b.replace({"": np.nan})
    if "patient_id" in df.columns:
        df["patient_id"] = df["patient_id"].astype(str).str.strip().replace({"": np.nan, "nan": np.nan, "None": np.nan})
    df.attrs["validated"] = True
    return df


def validate_val_predictions(val: pd.DataFrame, predictions: pd.DataFrame) -> None:
    """``--val-predictions`` only serve the BI-RADS entropy cut-off: both tables need complete
    ``birads_0..2`` rows; anything else is refused rather than ignored."""
    where = _where(val)
    if not all(c in predictions.columns for c in BIRADS_COLUMNS):
        raise EvaluationInputError(f"{where}: --val-predictions is used only with BI-RADS predictions "
                                   f"({', '.join(BIRADS_COLUMNS)}), which {_where(predictions)} does not have")
    missing = [c for c in BIRADS_COLUMNS if c not in val.columns]
    if missing:
        raise EvaluationInputError(f"{where}: validation predictions need {', '.join(BIRADS_COLUMNS)}; "
                                   f"missing {', '.join(missing)}")
    complete = np.isfinite(val[list(BIRADS_COLUMNS)].to_numpy(dtype=float)).all(axis=1)
    if not complete.any():
        raise EvaluationInputError(f"{where}: no row of the validation predictions has all of "
                                   f"{', '.join(BIRADS_COLUMNS)}")


def labels_from_exams(exams: list[Any]) -> pd.DataFrame:
    """Labels table from :class:`~breastscreen.data.types.Exam` objects (manifest)."""
    rows = []
    # unknown_* columns only when needed, so that mammography label tables keep their columns.
    with_unknown = any(e.views.get("U-US") or "U" in e.labels for e in exams)
    for e in exams:
        row: dict[str, Any] = {"exam_id": e.exam_id}
        sides = (("L", "left"), ("R", "right")) + ((("U", "unknown"),) if with_unknown else ())
        for side, prefix in sides:
            lab = e.label(side)
            row[f"{prefix}_benign"] = np.nan if lab.benign is None else float(lab.benign)
            row[f"{prefix}_malignant"] = np.nan if lab.malignant is None else float(lab.malignant)
        row["patient_id"] = e.patient_id
        row["study_date"] = e.study_date
        row["age"] = e.age
        row["density"] = e.density
        row["birads"] = e.birads
        row["modality"] = e.modality.value
        for key in _IMAGE_META_KEYS:
            vals = {str(img.meta[key]) for _, img in e.iter_images() if img.meta.get(key) not in (None, "")}
            if len(vals) == 1:
                row[key] = vals.pop()
        for k, v in e.meta.items():
            if isinstance(v, (str, int, float, bool)) and k not in row:
                row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("age",):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read labels from a CSV or a manifest (``.jsonl``/``.json``), validated."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        from breastscreen.data.manifest import read_manifest

        df = labels_from_exams(read_manifest(path, allow_outside_paths=True))  # labels only; no file is opened
        df = df.astype({c: object for c in df.columns if c not in BREAST_LABELS + UNKNOWN_COLUMNS and c != "age"})
        df.attrs["source"] = str(path)
        for c in ("patient_id", "density", "birads"):
            if c in df.columns:
                df[c] = df[c].where(df[c].notna(), "")
        out = validate_labels(df.astype({c: str for c in ("exam_id", "patient_id", "density", "birads") if c in df}))
    else:
        df = read_table(path, "labels")
        out = validate_labels(df)
    out.attrs["source"] = str(path)
    return out
