"""Evaluation: metrics, bootstrap/DeLong/permutation statistics, reader studies, pathology labels, reports.

Main entry points: :func:`evaluate_predictions` (Python API, returns the metrics.json dictionary),
:func:`evaluate` (also returns plot data), :func:`breastscreen.evaluation.report.write_outputs`;
lesion level: :func:`read_lesion_predictions` and :func:`evaluate_lesions`.
"""

from breastscreen.evaluation.evaluate import EvalConfig, EvaluationResult, evaluate, evaluate_predictions
from breastscreen.evaluation.io import EvaluationInputError, read_labels, read_predictions
from breastscreen.evaluation.lesion import evaluate_lesions, read_lesion_predictions
from breastscreen.evaluation.readers import read_readers

__all__ = [
    "EvalConfig",
    "EvaluationResult",
    "EvaluationInputError",
    "evaluate",
    "evaluate_predictions",
    "evaluate_lesions",
    "read_labels",
    "read_lesion_predictions",
    "read_predictions",
    "read_readers",
]
