"""Ensemble manifests: ``{"members": [{"path": ...}, ...]}`` JSON files that list checkpoints.

``breastscreen train KIND --n-models N`` and ``breastscreen search`` write one
(``RUN_DIR/ensemble.json``); ``breastscreen predict --model ensemble.json`` averages its
members. Member paths are stored relative to the JSON file's folder when they lie below it,
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


def read_ensemble_manifest(path: str | Path) -> list[Path]:
    """Absolute member checkpoint paths of an ensemble manifest, checked to exist."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BreastscreenError(f"{path}: not a readable ensemble manifest ({exc})") from None
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not members:
        raise BreastscreenError(f"{path}: 'members' must be a non-empty list of {{\"path\": ...}}")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str):
            raise BreastscreenError(f"{path}: members[{i}] must be an object with a string 'path', got {m!r}")
        p = Path(m["path"])
        p = p if p.is_absolute() else (path.parent / p)
        if not p.is_file():
            raise BreastscreenError(f"{path}: member checkpoint {p} does not exist")
        out.append(p.resolve())
    return out
