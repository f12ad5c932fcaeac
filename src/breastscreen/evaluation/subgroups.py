"""Subgroup definitions: age bands, density, device/vendor and any labels column."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["AGE_BANDS", "age_band", "DEVICE_FIELDS", "default_subgroup_fields", "subgroup_values", "MISSING"]

# Half-open bands in years: 49.9 is "40-49", 50.0 is "50-59".
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<40", -np.inf, 40.0),
    ("40-49", 40.0, 50.0),
    ("50-59", 50.0, 60.0),
    ("60-69", 60.0, 70.0),
    (">=70", 70.0, np.inf),
)
DEVICE_FIELDS: tuple[str, ...] = ("device", "manufacturer", "vendor")
MISSING = "(missing)"


def age_band(age: np.ndarray | pd.Series) -> np.ndarray:
    """Age band label per value (``(missing)`` for NaN)."""
    a = np.asarray(pd.to_numeric(pd.Series(age), errors="coerce"), dtype=float)
    out = np.full(a.shape, MISSING, dtype=object)
    for name, lo, hi in AGE_BANDS:
        out[(a >= lo) & (a < hi)] = name
    return out


def default_subgroup_fields(columns: list[str] | pd.Index) -> list[str]:
    """Fields analysed without being asked: age bands, density and the first device-like column."""
    fields = []
    if "age" in columns:
        fields.append("age_band")
    if "density" in columns:
        fields.append("density")
    for d in DEVICE_FIELDS:
        if d in columns:
            fields.append(d)
            break
    return fields


def subgroup_values(units: pd.DataFrame, field: str) -> np.ndarray:
    """The subgroup label of every unit for ``field`` (``age_band`` is derived from ``age``)."""
    if field == "age_band":
        return age_band(units["age"])
    col = units[field]
    text = col.astype(str).str.strip()
    text = text.where(col.notna() & ~text.isin(["", "nan", "None", "NaN"]), MISSING)
    return text.to_numpy(dtype=object)


def ordered_groups(field: str, values: np.ndarray) -> list[str]:
    """Group names in display order: age bands in age order, others sorted, missing last."""
    present = set(values.tolist())
    if field == "age_band":
        order = [b[0] for b in AGE_BANDS]
    else:
        order = sorted(v for v in present if v != MISSING)
    out = [g for g in order if g in present]
    if MISSING in present:
        out.append(MISSING)
    return out
