"""Recipes on a tiny synthetic, preprocessed cohort: one step lowers the loss for every KIND; CLI runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from breastscreen.training.loop import DistInfo
from breastscreen.training.recipes import get_recipe
from breastscreen.training.runner import build_config

SCALE = 0.0625


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mammo_cohorts import make_mammo_cohort

    root = tmp_path_factory.mktemp("cohort")
    c = make_mammo_cohort(root, 6, seed=5, scale=SCALE)
    return {"manifest": str(c["pre"]), "maps": str(c["maps"]), "root": root}


_TINY = {
    "patch": ["model=densenet-tiny", "batch_size=16", "epoch_size=32",
              "recipe.composition={malignant: 1, benign: 1, outside: 1, negative: 1}"],
    "birads": ["model_args.num_filters=4", "batch_size=3"],
    "breast": ["model_args.num_filters=4", "batch_size=3"],
}


@pytest.mark.parametrize("kind,maps", [("patch", False), ("birads", False), ("breast", False), ("breast", True)])
def test_one_step_decreases_loss(cohort, tmp_path, kind, maps):
    extra = [f"recipe.heatmaps={cohort['maps']}"] if maps else []
    cfg = build_config(kind, cohort["manifest"], cohort["manifest"], str(tmp_path / "run"),
                       overrides=_TINY[kind] + extra + ["device=cpu", "lr=1e-4"])
    torch.manual_seed(0)
    task = get_recipe(kind).build(cfg, DistInfo(), None)
    task.train_set.set_epoch(0) if hasattr(task.train_set, "set_epoch") else None
    batch = next(iter(DataLoader(task.train_set, batch_size=cfg.batch_size, sampler=task.sampler,
                                 collate_fn=task.collate_fn)))
    model = task.model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def loss_now():
        torch.manual_seed(1)  # same input noise both times
        return task.compute_loss(model, batch, torch.device("cpu"))

    before = loss_now()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_now()
    assert torch.isfinite(before) and after.item() < before.item()
    if maps:
        assert model.config.in_channels == 3 and task.metadata["channels"] == ["image", "benign", "malignant"]


def test_cli_birads_then_breast_ensemble(cohort, tmp_path):
    from typer.testing import CliRunner

    from breastscreen.cli import app
    from breastscreen.models.checkpoint import load_checkpoint
    from breastscreen.training.loop import read_metrics_csv

    runner = CliRunner()
    m = cohort["manifest"]
    r = runner.invoke(app, ["train", "birads", "-m", m, "-v", m, "-o", str(tmp_path / "bi"), "epochs=1",
                            "model_args.num_filters=4", "batch_size=3", "progress=false"])
    assert r.exit_code == 0, r.output
    bi = tmp_path / "bi" / "best.safetensors"
    r = runner.invoke(app, ["train", "breast", "-m", m, "-v", m, "-o", str(tmp_path / "ens"), "--n-models", "2",
                            "--heatmaps", cohort["maps"], "epochs=1", "model_args.num_filters=4", "batch_size=3",
                            f"init_from={bi}", "progress=false"])
    assert r.exit_code == 0, r.output
    ens = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert [x["path"] for x in ens["members"]] == ["member_0/best.safetensors", "member_1/best.safetensors"]
    ck = load_checkpoint(tmp_path / "ens" / "member_0" / "best.safetensors")
    assert ck.metadata["channels"] == ["image", "benign", "malignant"] and ck.metadata["scale"] == SCALE
    assert "val_auc" in ck.metadata["validation_metrics"]
    assert len(read_metrics_csv(tmp_path / "ens" / "member_1" / "metrics.csv")) == 1
    # an existing run directory is refused
    r = runner.invoke(app, ["train", "birads", "-m", m, "-v", m, "-o", str(tmp_path / "bi"), "epochs=1"])
    assert r.exit_code != 0 and "already exists" in str(r.exception) + r.output


def test_ensemble_members_differ_only_in_fc_layers(cohort, tmp_path):
    from breastscreen.training.recipes.common import build_model

    cfg = build_config("breast", cohort["manifest"], cohort["manifest"], str(tmp_path / "x"),
                       overrides=["model_args.num_filters=4"])
    torch.manual_seed(cfg.seed)
    a = build_model(cfg, "nyu-viewwise", 0).state_dict()
    torch.manual_seed(cfg.seed)
    b = build_model(cfg, "nyu-viewwise", 1).state_dict()
    same = {k for k in a if torch.equal(a[k], b[k])}
    differ = set(a) - same
    assert differ and all(k.startswith(("hidden.", "output.")) for k in differ)
    assert all(k.startswith("columns.") for k in same if "weight" in k and "bn" not in k and k.count(".") > 2)


def test_search_ranks_trials(cohort, tmp_path):
    from breastscreen.training.search import run_search, sample_trial, parse_space

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-5, high: 1.0e-3, scale: log}\nrecipe.jitter_px: {low: 0, high: 50, scale: linear}\n")
    specs = parse_space({"lr": {"low": 1e-5, "high": 1e-3, "scale": "log"}})
    assert sample_trial(specs, 0, 3) == sample_trial(specs, 0, 3)
    assert 1e-5 <= sample_trial(specs, 0, 1)["lr"] <= 1e-3
    res = run_search("breast", space, trials=2, out=tmp_path / "s", manifest=cohort["manifest"],
                     val_manifest=cohort["manifest"], overrides=["epochs=1", "model_args.num_filters=4",
                                                                 "batch_size=3", "progress=false"], top_k=1)
    data = json.loads((tmp_path / "s" / "search.json").read_text())
    assert len(data["trials"]) == 2 and data["ranking"][0] == res.top[0]["trial"]
    values = [t["value"] for t in res.ranked]
    assert values == sorted(values, reverse=True)
    ens = json.loads((tmp_path / "s" / "ensemble.json").read_text())
    assert len(ens["members"]) == 1


def test_birads_train_fraction_keeps_a_seeded_subset(cohort, tmp_path):
    """MV-DCN's training-set-size study: recipe.train_fraction keeps a seeded subset of the usable exams."""
    from breastscreen.training.datasets import birads_target, load_exams

    usable = [e for e in load_exams(cohort["manifest"]) if birads_target(e) is not None]
    sizes = []
    for seed in (0, 0, 1):
        cfg = build_config("birads", cohort["manifest"], cohort["manifest"], str(tmp_path / f"r{seed}"),
                           overrides=["model=mvdcn", "recipe.train_fraction=0.5", f"seed={seed}", "device=cpu"])
        task = get_recipe("birads").build(cfg, DistInfo(), None)
        ids = [e.exam_id for e in task.train_set.exams]
        assert task.metadata["training_data"]["train_fraction"] == 0.5
        sizes.append(ids)
    assert len(sizes[0]) == round(0.5 * len(usable)) and sizes[0] == sizes[1]
