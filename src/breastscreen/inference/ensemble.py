"""Ensembles: a JSON manifest listing checkpoints, expanded wherever ``--model`` is accepted.

Format (shared with ``breastscreen train --n-models`` and ``breastscreen search``)::

    {"members": [{"path": "run1/best.ckpt"}, {"path": "nyu-demo-image"}, ...],
     "name": "optional", "metric": "optional, informative only"}

``path`` is a checkpoint file (relative paths are relative to the JSON file's folder) or a
bundled model name. Members may carry other keys (``val_auc``, ``seed`` ...), which are kept as
provenance. Predictions of the members are averaged with equal weight (after each member has
averaged its own test-time augmentations).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from breastscreen.errors import CheckpointError


@dataclass
class MemberRef:
    """One checkpoint reference (file path or bundled name) and where it came from."""

    ref: str
    source: str = "--model"
    info: dict[str, Any] = field(default_factory=dict)


def is_ensemble_file(ref: str | os.PathLike[str]) -> bool:
    """True when ``ref`` names an existing ``.json`` file (an ensemble manifest)."""
    p = Path(ref)
    return p.suffix.lower() == ".json" and p.is_file()


def read_ensemble(path: str | os.PathLike[str]) -> list[MemberRef]:
    """Members of an ensemble manifest; raise :class:`CheckpointError` naming the rule broken."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ensemble manifest ({exc})") from None
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not members:
        raise CheckpointError(f"{path}: an ensemble manifest needs a non-empty list 'members', got {type(members).__name__}")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not m["path"]:
            raise CheckpointError(f"{path}: members[{i}] must be an object with a string 'path', got {m!r}")
        ref = m["path"]
        candidate = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        if candidate.exists():
            ref = str(candidate.resolve())
        out.append(MemberRef(ref, f"{path}:members[{i}]", {k: v for k, v in m.items() if k != "path"}))
    return out


def expand_model_refs(refs: Sequence[str]) -> list[MemberRef]:
    """Expand ``--model`` values: ensemble manifests become their members, others stay as given."""
    if not refs:
        raise CheckpointError("give at least one --model (checkpoint file, bundled model name or ensemble .json)")
    out: list[MemberRef] = []
    for ref in refs:
        out.extend(read_ensemble(ref) if is_ensemble_file(ref) else [MemberRef(str(ref))])
    return out


def average(values: Sequence[np.ndarray]) -> np.ndarray:
    """Equal-weight mean of member outputs of identical shape."""
    if not values:
        raise ValueError("cannot average an empty list of outputs")
    shapes = {np.shape(v) for v in values}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on output shape: {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)
