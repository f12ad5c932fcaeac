"""Writers of a prediction run: ``predictions.csv`` and, for per-image models,
``image_predictions.csv`` (:mod:`breastscreen.data.predictions`), ``predictions.jsonl``,
``errors.csv``, ``skipped_files.csv`` and ``run.json`` (each atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from breastscreen.data.predictions import (
    UNKNOWN_COLUMNS,
    table_values,
    write_csv,
    write_image_predictions_csv,
    write_predictions_csv,
)
from breastscreen.utils import atomic_path

__all__ = ["UNKNOWN_COLUMNS", "write_outputs", "write_predictions_csv"]

def write_outputs(out: Path, columns: list[str], predictions: Sequence[Any], errors: Sequence[tuple[str, str]],
                  skipped: Sequence[tuple[str, str]], provenance: dict[str, Any]) -> None:
    """Every table of a prediction run (see the module docstring)."""
    write_predictions_csv(out / "predictions.csv", columns, predictions)
    if not write_image_predictions_csv(out / "image_predictions.csv", predictions):
        # An overwritten run of another model family must not keep the previous per-image table.
        (out / "image_predictions.csv").unlink(missing_ok=True)
    with atomic_path(out / "predictions.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in predictions:
                line = {"exam_id": p.exam_id, "probabilities": table_values(p), **p.details, "provenance": provenance}
                fh.write(json.dumps(line, default=float) + "\n")
    write_csv(out / "errors.csv", ["exam_id", "reason"], errors)
    if not skipped:
        # An overwritten run must not keep the previous run's list.
        (out / "skipped_files.csv").unlink(missing_ok=True)
    else:
        write_csv(out / "skipped_files.csv", ["path", "reason"], skipped)
    with atomic_path(out / "run.json") as tmp:
        tmp.write_text(json.dumps({**provenance, "n_predicted": len(predictions), "n_failed": len(errors)}, indent=2),
                       encoding="utf-8")
