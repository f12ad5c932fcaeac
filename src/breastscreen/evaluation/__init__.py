"""Evaluation: metrics, bootstrap/DeLong/permutation statistics, reader studies, pathology labels, reports.

Main entry points: :func:`evaluate_predictions` (Python API, returns the metrics.json dictionary),
:func:`evaluate` (also returns plot data), :func:`breastscreen.evaluation.report.write_outputs`.
"""

from breastscreen.evaluation.evaluate import EvalConfig, EvaluationResult, evaluate, evaluate_predictions
from breastscreen.evaluation.io import EvaluationInputError, read_labels, read_predictions
from breastscreen.evaluation.readers import read_readers

__all__ = [
    "EvalConfig",
    "EvaluationResult",
    "EvaluationInputError",
    "evaluate",
    "evaluate_predictions",
    "read_labels",
    "read_predictions",
    "read_readers",
]
