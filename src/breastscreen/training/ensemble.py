"""Ensemble manifests: ``{"members": [{"path": ...}, ...]}`` JSON files that list checkpoints.

``breastscreen train KIND --n-models N`` and ``breastscreen search`` write one
(``RUN_DIR/ensemble.json``); ``breastscreen predict --model ensemble.json`` averages its
members (read by :func:`breastscreen.inference.ensemble.read_ensemble`, the format's one
reader). Member paths are stored relative to the JSON file's folder when they lie below it,
so a run directory can be moved as a whole. Extra keys (``kind``, ``n_models``,
``differs_in``, ``trials``) are informational.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from breastscreen.errors import BreastscreenError
from breastscreen.utils import atomic_path

ENSEMBLE_FILE = "ensemble.json"


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member``'s fully connected layers."""
    return int(seed) + 1000 * (int(member) + 1)


def write_ensemble_manifest(run_dir: str | Path, checkpoints: Sequence[str | Path], extra: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/ensemble.json`` listing ``checkpoints`` (relative paths where possible)."""
    run_dir = Path(run_dir)
    if not checkpoints:
        raise BreastscreenError("an ensemble needs at least one member checkpoint")
    members = []
    for ckpt in checkpoints:
        ckpt = Path(ckpt).resolve()
        try:
            rel: Path = ckpt.relative_to(run_dir.resolve())
        except ValueError:
            rel = ckpt
        members.append({"path": str(rel)})
    data = {"members": members, **(extra or {})}
    path = run_dir / ENSEMBLE_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
