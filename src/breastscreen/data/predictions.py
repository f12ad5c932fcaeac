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


def has_unknown_bag(prediction: Any) -> bool:
    """Whether a prediction has an ultrasound bag of unknown laterality (breast ``U``)."""
    return bool((prediction.details.get("breasts") or {}).get("U"))


def table_values(prediction: Any) -> dict[str, float | None]:
    """The prediction's values plus ``unknown_benign, unknown_malignant`` when it has a ``U`` bag.

    A ``U-US`` bag lives in ``details["breasts"]["U"]``, not among the model's value columns;
    every table of predictions (CSV, JSONL ``probabilities``, the HTML page) shows it the same way.
    """
    values = dict(prediction.values)
    if has_unknown_bag(prediction):
        bag = prediction.details["breasts"]["U"]
        values["unknown_benign"], values["unknown_malignant"] = bag.get("benign"), bag.get("malignant")
    return values


def table_columns(columns: Sequence[str], predictions: Sequence[Any]) -> list[str]:
    """``columns`` plus the unknown-side columns when some prediction has a ``U`` bag."""
    return [*columns, *(UNKNOWN_COLUMNS if any(has_unknown_bag(p) for p in predictions) else ())]


def write_predictions_csv(path: Path, columns: Sequence[str], predictions: Sequence[Any]) -> None:
    """``exam_id`` + ``columns`` (+ the unknown-side columns when needed) per prediction."""
    header = table_columns(columns, predictions)
    rows = []
    for p in predictions:
        values = table_values(p)
        rows.append([p.exam_id, *(fmt(values.get(c)) for c in header)])
    write_csv(path, ["exam_id", *header], rows)


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
