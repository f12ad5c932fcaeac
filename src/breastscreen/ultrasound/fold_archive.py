"""Finished cross-validation folds kept in a committed folder, so that a run longer than one session can finish.

A fold of the BUS-BRA protocol takes about two hours on two CPU cores and the whole run five or
more; the scratch folder (``--work``) does not survive from one working session (or machine) to
the next, so without this every session would start the run again. The archive holds, per fold,
what the summary needs and nothing bulky:

* ``fold-K/fold_result.json``: the fold's record (best epoch, validation AUROC, localisation,
  timings), plus ``archived`` = when, from which machine;
* ``fold-K/predictions.csv``: the fold's held-out predictions;
* ``best.safetensors`` + ``best.json``: the float16 weights of the fold model with the best
  validation AUROC archived so far (the candidate for the bundled model; only one is kept, since
  the final model is chosen by that same rule).

Restoring writes the record and predictions into the scratch folder, where the runner then
treats the fold as finished. Nothing already in the archive or in the scratch folder is
overwritten: an archived fold stays as it was first recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from breastscreen.errors import BreastscreenError
from breastscreen.utils import atomic_path

RESULT = "fold_result.json"
PREDICTIONS = "predictions.csv"
BEST = "best.safetensors"
BEST_RECORD = "best.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BreastscreenError(f"{path}: cannot read the fold record ({exc})") from None
    if not isinstance(data, dict):
        raise BreastscreenError(f"{path}: the fold record is not a JSON object")
    return data


def archived_folds(archive: str | Path) -> dict[str, dict[str, Any]]:
    """The archived fold records by folder name (``fold-K`` or ``seedS/fold-K``)."""
    root = Path(archive)
    if not root.is_dir():
        return {}
    out = {}
    for rec in sorted(root.rglob(RESULT)):
        if (rec.parent / PREDICTIONS).is_file():
            out[rec.parent.relative_to(root).as_posix()] = _read_json(rec)
    return out


def archive_fold(fold_dir: str | Path, work: str | Path, archive: str | Path, environment: dict[str, Any],
                 log: Callable[[str], None] | None = None) -> bool:
    """Copy one finished fold of ``work`` into ``archive``; returns whether anything was added.

    A fold already archived is left as it is. The fold's checkpoint is archived (as float16) when
    its validation AUROC beats the archived best.
    """
    from breastscreen.ultrasound.busbra import export_bundled_model

    src = Path(fold_dir)
    if not (src / RESULT).is_file() or not (src / PREDICTIONS).is_file():
        return False
    name = src.relative_to(Path(work)).as_posix()
    root = Path(archive)
    dst = root / name
    if (dst / RESULT).is_file():
        return False
    record = _read_json(src / RESULT)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / PREDICTIONS, dst / PREDICTIONS)
    checkpoint = Path(str(record.get("checkpoint", "")))
    record["checkpoint"] = checkpoint.name
    record["archived"] = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "environment": environment}
    best_path = root / BEST_RECORD
    best = _read_json(best_path) if best_path.is_file() else None
    val = float(record["val_auroc_malignant"])
    if checkpoint.is_file() and (best is None or val > float(best["val_auroc_malignant"])):
        with atomic_path(root / BEST) as tmp:
            export_bundled_model(checkpoint, tmp, {"cv_fold": name})
        with atomic_path(best_path) as tmp:
            tmp.write_text(json.dumps({"fold_dir": name, "fold": record.get("fold"),
                                       "val_auroc_malignant": val}, indent=2) + "\n")
        if log is not None:
            log(f"archive: {name} holds the best validation AUROC so far ({val:.4f}); its weights -> {root / BEST}")
    # the record last: a fold counts as archived only once everything it needs is there
    with atomic_path(dst / RESULT) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if log is not None:
        log(f"archive: {name} -> {dst}")
    return True


def archive_finished(work: str | Path, archive: str | Path, environment: dict[str, Any],
                     log: Callable[[str], None] | None = None) -> list[str]:
    """Archive every finished fold of ``work`` not archived yet; returns their names."""
    added = []
    for rec in sorted(Path(work).rglob(RESULT)):
        if "run" in rec.relative_to(Path(work)).parts:
            continue
        if archive_fold(rec.parent, work, archive, environment, log):
            added.append(rec.parent.relative_to(Path(work)).as_posix())
    return added


def restore_folds(archive: str | Path, work: str | Path, log: Callable[[str], None] | None = None) -> list[str]:
    """Write the archived folds that ``work`` lacks into it (they then count as finished); returns their names.

    A restored record's ``checkpoint`` points at the archived best weights when that fold is the
    archived best, otherwise at a file that is not there (only the summary's rows and figures are
    needed from it).
    """
    root = Path(archive)
    best_path = root / BEST_RECORD
    best = _read_json(best_path) if best_path.is_file() else None
    restored = []
    for name, record in archived_folds(root).items():
        dst = Path(work) / name
        if (dst / RESULT).is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name / PREDICTIONS, dst / PREDICTIONS)
        record["checkpoint"] = (str(root / BEST) if best is not None and best.get("fold_dir") == name
                                else str(root / name / record.get("checkpoint", BEST)))
        record["restored_from"] = str(root / name)
        with atomic_path(dst / RESULT) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        restored.append(name)
        if log is not None:
            log(f"archive: {name} restored from {root / name} (finished {record.get('archived', {}).get('at', '?')})")
    return restored
