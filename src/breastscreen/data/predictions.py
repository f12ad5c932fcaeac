"""The predictions table: ``exam_id`` + the model family's value columns, one row per exam.

``breastscreen predict`` writes it as ``predictions.csv`` and every training run as
``val_predictions.csv`` (same columns, same id conventions), so ``breastscreen evaluate`` reads
both. When some exam has an ultrasound bag of unknown laterality (``U-US``) two more columns
``unknown_benign, unknown_malignant`` follow.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from breastscreen.utils import atomic_path

# CSV columns of the unknown-laterality (``U-US``) bag, added only when some exam has one.
UNKNOWN_COLUMNS: tuple[str, ...] = ("unknown_benign", "unknown_malignant")


def fmt(v: float | None) -> str:
    """A CSV cell: empty for a missing value, else 6 decimals."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a header and rows as CSV, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(list(header))
            w.writerows(rows)


def write_predictions_csv(path: Path, columns: Sequence[str], predictions: Sequence[Any]) -> None:
    """``exam_id`` + ``columns`` (+ the unknown-side columns when needed) per prediction."""
    unknown = any((p.details.get("breasts") or {}).get("U") for p in predictions)
    rows = []
    for p in predictions:
        row = [p.exam_id, *(fmt(p.values.get(c)) for c in columns)]
        if unknown:
            bag = (p.details.get("breasts") or {}).get("U") or {}
            row += [fmt(bag.get("benign")), fmt(bag.get("malignant"))]
        rows.append(row)
    write_csv(path, ["exam_id", *columns, *(UNKNOWN_COLUMNS if unknown else ())], rows)


@dataclass
class PredictionRow:
    """One row of the table: what :func:`write_predictions_csv` needs of a prediction."""

    exam_id: str
    values: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)


IMAGE_COLUMNS: tuple[str, ...] = ("exam_id", "view", "image", "benign", "malignant")


def write_image_predictions_csv(path: Path, predictions: Sequence[Any]) -> bool:
    """``image_predictions.csv`` of per-image models (one row per image: ``exam_id, view, image,
    benign, malignant``, image = index within the view); returns False (and writes nothing) when
    no prediction has per-image outputs."""
    rows = []
    for p in predictions:
        for view, images in (p.details.get("per_view") or {}).items():
            for k, v in enumerate(images):
                rows.append([p.exam_id, view, k, fmt(v.get("benign")), fmt(v.get("malignant"))])
    if not rows:
        return False
    write_csv(path, IMAGE_COLUMNS, rows)
    return True
