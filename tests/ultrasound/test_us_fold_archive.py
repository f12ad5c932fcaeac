"""The committed fold archive: folds kept as they finish, never overwritten, the best weights only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint
from breastscreen.models.registry import create_model
from breastscreen.ultrasound.fold_archive import (
    archive_finished, archive_identity, archived_folds, best_index, check_identity, restore_folds)

ENV = {"device": "cpu (test)"}


def _fold(work: Path, k: int, val: float, weight: float) -> Path:
    d = work / f"fold-{k}"
    (d / "run").mkdir(parents=True)
    model = create_model("us-mil-tiny", input_size=64)
    with torch.no_grad():
        next(model.parameters()).fill_(weight)  # marks whose weights the archive kept
    ck = save_checkpoint(model, d / "run" / "best.safetensors", {"fold": k})
    (d / "predictions.csv").write_text(f"fold,p_malignant\n{k},0.{k}\n")
    (d / "fold_result.json").write_text(json.dumps({"fold": k, "val_auroc_malignant": val, "checkpoint": str(ck)}))
    return d


def _marker(path: Path) -> float:
    return float(next(load_checkpoint(str(path)).model.parameters()).detach().flatten()[0])


def test_archive_keeps_finished_folds_and_only_the_best_weights(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _fold(work, 1, 0.70, 0.25)
    (work / "fold-3").mkdir()  # an unfinished fold: no record
    assert archive_finished(work, archive, ENV) == ["fold-1"]
    assert json.loads((archive / "best.json").read_text())["fold"] == 1
    _fold(work, 2, 0.80, 0.5)
    assert archive_finished(work, archive, ENV) == ["fold-2"]  # fold 1 is not archived twice
    rec = json.loads((archive / "fold-2" / "fold_result.json").read_text())
    assert rec["checkpoint"] == "best.safetensors" and rec["archived"]["environment_of_archiving_process"] == ENV
    assert json.loads((archive / "best.json").read_text()) == {"fold_dir": "fold-2", "fold": 2,
                                                               "val_auroc_malignant": 0.8}
    assert _marker(archive / "best.safetensors") == 0.5
    _fold(work, 4, 0.75, 1.0)  # worse than the archived best: its weights are not kept
    archive_finished(work, archive, ENV)
    assert _marker(archive / "best.safetensors") == 0.5
    assert sorted(archived_folds(archive)) == ["fold-1", "fold-2", "fold-4"]
    # an archived record is never overwritten by a later run of the same fold
    (work / "fold-1" / "fold_result.json").write_text(json.dumps({"fold": 1, "val_auroc_malignant": 0.99}))
    assert archive_finished(work, archive, ENV) == []
    assert archived_folds(archive)["fold-1"]["val_auroc_malignant"] == 0.70


def test_restore_writes_missing_folds_only(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _fold(work, 1, 0.70, 0.25)
    _fold(work, 2, 0.80, 0.5)
    archive_finished(work, archive, ENV)
    fresh = tmp_path / "fresh"
    (fresh / "fold-2").mkdir(parents=True)
    (fresh / "fold-2" / "fold_result.json").write_text(json.dumps({"fold": 2, "mine": True}))
    assert restore_folds(archive, fresh) == ["fold-1"]
    assert json.loads((fresh / "fold-2" / "fold_result.json").read_text()) == {"fold": 2, "mine": True}
    rec = json.loads((fresh / "fold-1" / "fold_result.json").read_text())
    assert rec["val_auroc_malignant"] == 0.70 and not Path(rec["checkpoint"]).exists()  # not the best fold
    assert (fresh / "fold-1" / "predictions.csv").read_text() == "fold,p_malignant\n1,0.1\n"
    assert restore_folds(archive, tmp_path / "other")[1] == "fold-2"
    assert json.loads((tmp_path / "other/fold-2/fold_result.json").read_text())["checkpoint"] == str(
        archive / "best.safetensors")
    assert restore_folds(tmp_path / "missing", fresh) == []


def test_a_broken_archived_record_is_named(tmp_path):
    (tmp_path / "fold-1").mkdir()
    (tmp_path / "fold-1" / "fold_result.json").write_text("{not json")
    (tmp_path / "fold-1" / "predictions.csv").write_text("fold\n")
    with pytest.raises(BreastscreenError, match="fold-1/fold_result.json: cannot read the fold record"):
        archived_folds(tmp_path)


def test_best_index_ranks_nan_last_and_breaks_ties_by_fold():
    recs = [{"fold": 3, "val_auroc_malignant": 0.8}, {"fold": 1, "val_auroc_malignant": float("nan")},
            {"fold": 2, "val_auroc_malignant": 0.8}]
    assert best_index(recs) == 2  # the tie goes to fold 2, whatever the order
    assert best_index(list(reversed(recs))) == 0
    assert best_index([{"fold": 1, "val_auroc_malignant": float("nan")}, {"fold": 2, "val_auroc_malignant": 0.1}]) == 1


def test_a_nan_fold_archived_first_does_not_lock_the_best(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _fold(work, 1, float("nan"), 0.25)
    _fold(work, 2, 0.6, 0.5)
    archive_finished(work, archive, ENV)
    assert json.loads((archive / "best.json").read_text())["fold"] == 2
    assert _marker(archive / "best.safetensors") == 0.5


def test_identity_refuses_other_settings_and_an_archive_inside_work(tmp_path):
    ident = archive_identity(["model=us-mil", "device=cuda", "recipe.cache_path=/x", "epochs=30"], 0.15, {"m": 1})
    assert ident["overrides"] == ["epochs=30", "model=us-mil"]  # device and cache do not change a fold
    check_identity(tmp_path / "a", ident)
    check_identity(tmp_path / "a", archive_identity(["epochs=30", "model=us-mil", "device=cpu"], 0.15, {"m": 1}))
    other = archive_identity(["model=us-mil", "epochs=30", "recipe.lesion_weight=1.0"], 0.15, {"m": 1})
    with pytest.raises(BreastscreenError, match="identity.json: the archived folds were made with other settings "
                                                r"\(overrides differ\)"):
        check_identity(tmp_path / "a", other)
    with pytest.raises(BreastscreenError, match="must not be inside the scratch folder"):
        check_identity(tmp_path / "w" / "archive", ident, work=tmp_path / "w")


def test_an_archive_without_identity_is_claimed_and_noted(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _fold(work, 1, 0.7, 0.25)
    archive_finished(work, archive, ENV)
    check_identity(archive, archive_identity(["epochs=30"], 0.15, None))
    assert "claimed" in json.loads((archive / "identity.json").read_text())["note"]


def test_weights_that_do_not_match_best_json_are_refused(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    _fold(work, 1, 0.7, 0.25)
    _fold(work, 2, 0.6, 0.5)
    archive_finished(work, archive, ENV)
    (archive / "best.json").write_text(json.dumps({"fold_dir": "fold-2", "fold": 2, "val_auroc_malignant": 0.6}))
    with pytest.raises(BreastscreenError, match="holds the weights of fold-1, but .*best.json names fold-2"):
        restore_folds(archive, tmp_path / "fresh")


def test_runner_refuses_seeds_and_foreign_archives_before_any_work(tmp_path):
    from breastscreen.ultrasound.busbra import run_busbra_cv

    with pytest.raises(BreastscreenError, match="one model per fold"):
        run_busbra_cv(tmp_path / "none", tmp_path / "w", ["epochs=1"], seeds=(0, 1), archive=tmp_path / "a")
    check_identity(tmp_path / "a", archive_identity(["epochs=2"], 0.15, None))
    with pytest.raises(BreastscreenError, match="made with other settings"):
        run_busbra_cv(tmp_path / "none", tmp_path / "w", ["epochs=1"], archive=tmp_path / "a")
