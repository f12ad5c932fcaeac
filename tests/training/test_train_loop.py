"""The shared fit loop: run directory files, resume identity, refusal to overwrite."""

from __future__ import annotations

import pytest
import torch
import yaml

from breastscreen.training.loop import RunDirError, fit, prepare_run_dir, read_metrics_csv

from train_tiny_task import make_cfg, make_task


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_writes_run_dir_and_resume_is_identical(tmp_path):
    # uninterrupted: 2 epochs
    cfg_a = make_cfg(tmp_path / "a")
    prepare_run_dir(cfg_a.out)
    task_a = make_task(cfg_a)
    res = fit(task_a, cfg_a)
    run = tmp_path / "a"
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "state.pt"):
        assert (run / name).is_file(), name
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_auc" in rows[0] and "train_loss" in rows[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    assert res.epochs_run == 2

    # interrupted during epoch 2, then resumed
    cfg_b = make_cfg(tmp_path / "b")
    prepare_run_dir(cfg_b.out)
    task_b = make_task(cfg_b)
    calls = {"n": 0}
    inner = task_b.compute_loss
    batches_per_epoch = -(-len(task_b.sampler.epoch_indices(0)) // cfg_b.batch_size)

    def dying_loss(model, batch, device):
        calls["n"] += 1
        if calls["n"] > batches_per_epoch:  # die at the first step of epoch 2
            raise KeyboardInterrupt("simulated kill")
        return inner(model, batch, device)

    task_b.compute_loss = dying_loss
    with pytest.raises(KeyboardInterrupt):
        fit(task_b, cfg_b)
    assert len(read_metrics_csv(tmp_path / "b" / "metrics.csv")) == 1
    with pytest.raises(RunDirError):
        prepare_run_dir(cfg_b.out)  # never silently overwritten
    prepare_run_dir(cfg_b.out, resume=True)
    task_c = make_task(cfg_b)
    fit(task_c, cfg_b, resume=True)

    wa, wc = _weights(task_a.model), _weights(task_c.model)
    assert wa.keys() == wc.keys()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), k
    rows_b = read_metrics_csv(tmp_path / "b" / "metrics.csv")
    assert [r["val_auc"] for r in rows_b] == [r["val_auc"] for r in rows]
    assert [r["train_loss"] for r in rows_b] == [r["train_loss"] for r in rows]

    from breastscreen.models.checkpoint import load_checkpoint

    ck_a, ck_b = load_checkpoint(run / "last.safetensors"), load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert ck_a.sha256 == ck_b.sha256 or all(
        torch.equal(x, y) for x, y in zip(ck_a.model.state_dict().values(), ck_b.model.state_dict().values())
    )
    assert ck_a.metadata["validation_metrics"]["val_auc"] == pytest.approx(float(rows[-1]["val_auc"]))


def test_early_stopping_ends_fit(tmp_path):
    cfg = make_cfg(tmp_path / "r", epochs=10, patience=1, lr=1e-12)
    prepare_run_dir(cfg.out)
    task = make_task(cfg)
    values = iter([0.5, 0.7, 0.6, 0.9, 0.9])
    task.evaluate = lambda model, ctx: {"val_auc": next(values)}
    res = fit(task, cfg)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 2
    assert [r["best"] for r in read_metrics_csv(tmp_path / "r" / "metrics.csv")] == ["1", "1", "0"]


def test_run_dir_rules(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists"):
        prepare_run_dir(d)
    with pytest.raises(RunDirError, match="not a training run directory"):
        prepare_run_dir(d, overwrite=True)
    assert (d / "notes.txt").exists()
    with pytest.raises(RunDirError, match="cannot resume"):
        prepare_run_dir(tmp_path / "nothing", resume=True)
    (d / "config.yaml").write_text("kind: breast\n")
    prepare_run_dir(d, overwrite=True)
    assert not (d / "notes.txt").exists()


def test_monitor_must_exist(tmp_path):
    cfg = make_cfg(tmp_path / "m", epochs=1, monitor="val_nope")
    prepare_run_dir(cfg.out)
    from breastscreen.errors import BreastscreenError

    with pytest.raises(BreastscreenError, match="val_nope"):
        fit(make_task(cfg), cfg)
