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
  the final model is chosen by that same rule, :func:`best_index`). These two are replaced when a
  better fold arrives; the weights carry their fold in their metadata, checked on restore;
* ``identity.json``: what made the folds (training options without device and cache path,
  validation fraction, normal-crop rules). A run with other settings is refused, so an archive
  never mixes protocols. An archive written before identities existed is claimed by the first
  run that uses it.

Restoring writes the record and predictions into the scratch folder, where the runner then
treats the fold as finished. Archived fold records are never overwritten, nor is anything in the
scratch folder: an archived fold stays as it was first recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from breastscreen.errors import BreastscreenError
from breastscreen.utils import atomic_path

RESULT = "fold_result.json"
PREDICTIONS = "predictions.csv"
BEST = "best.safetensors"
BEST_RECORD = "best.json"
IDENTITY = "identity.json"
# options that do not change what a fold learns or predicts
_NEUTRAL_OPTIONS = ("device=", "recipe.cache_path=", "progress=")


def archive_identity(overrides: Sequence[str], val_fraction: float, normals: dict[str, Any] | None) -> dict[str, Any]:
    """What makes an archived fold comparable: training options (bar device, cache, progress), split, normals."""
    return {"overrides": sorted(o for o in overrides if not o.startswith(_NEUTRAL_OPTIONS)),
            "val_fraction": float(val_fraction), "normals": normals}


def check_identity(archive: str | Path, identity: dict[str, Any], work: str | Path | None = None,
                   log: Callable[[str], None] | None = None) -> None:
    """Refuse an archive made with other settings (or inside ``work``); claim one that has no identity yet."""
    root = Path(archive)
    if work is not None and root.resolve().is_relative_to(Path(work).resolve()):
        raise BreastscreenError(f"{root}: the fold archive must not be inside the scratch folder {work}")
    path = root / IDENTITY
    if path.is_file():
        old = _read_json(path)
        if {k: old.get(k) for k in identity} != identity:
            diff = sorted(k for k in identity if old.get(k) != identity[k])
            raise BreastscreenError(f"{path}: the archived folds were made with other settings ({', '.join(diff)} "
                                    "differ); give another --archive folder")
        return
    root.mkdir(parents=True, exist_ok=True)
    note = "claimed by the first run with identities; folds archived before were not checked" \
        if archived_folds(root) else "written before the first fold"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**identity, "note": note,
                                   "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    if log is not None and note.startswith("claimed"):
        log(f"archive: {root} had no identity; claimed for these settings ({path})")


def best_index(records: Sequence[dict[str, Any]]) -> int:
    """Index of the record with the best validation AUROC (NaN counts as worst; ties go to the lowest fold).

    The one rule for the bundled-model candidate, used by the archive and the runner alike.
    """
    if not records:
        raise ValueError("no fold records")

    def key(i: int) -> tuple[float, float]:
        v = float(records[i].get("val_auroc_malignant", float("nan")))
        return (v if math.isfinite(v) else -math.inf, -float(records[i].get("fold", 0)))

    return max(range(len(records)), key=key)


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
    it becomes the best of the archived folds by :func:`best_index`. ``environment`` is recorded
    for folds whose record does not name the machine that trained them.
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
                          **({} if "environment" in record else {"environment_of_archiving_process": environment})}
    others = archived_folds(root)
    names = [*others, name]
    winner = names[best_index([*others.values(), record])]
    if winner == name:
        if checkpoint.is_file():
            with atomic_path(root / BEST) as tmp:
                export_bundled_model(checkpoint, tmp, {"cv_fold": name})
            with atomic_path(root / BEST_RECORD) as tmp:
                tmp.write_text(json.dumps({"fold_dir": name, "fold": record.get("fold"),
                                           "val_auroc_malignant": record.get("val_auroc_malignant")}, indent=2) + "\n")
            if log is not None:
                log(f"archive: {name} holds the best validation AUROC so far; its weights -> {root / BEST}")
        elif log is not None:
            log(f"archive: {name} is the best fold so far but its checkpoint {checkpoint} is missing; "
                "the archived weights stay those of the previous best")
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
    if best is not None:
        from breastscreen.models.checkpoint import load_checkpoint

        try:
            fold_of_weights = load_checkpoint(str(root / BEST)).metadata.get("cv_fold")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
            raise BreastscreenError(f"{root / BEST}: cannot read the archived best weights ({exc})") from None
        if fold_of_weights != best.get("fold_dir"):
            raise BreastscreenError(f"{root / BEST}: holds the weights of {fold_of_weights}, but {best_path} names "
                                    f"{best.get('fold_dir')} (interrupted update?); re-archive that fold")
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
