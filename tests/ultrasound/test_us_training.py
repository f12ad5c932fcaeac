"""KIND `us` through `breastscreen train` / `us-search`, the paper's space, and the predict pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from breastscreen.data.manifest import write_manifest

TINY = ["model=us-mil-tiny", "recipe.input_size=64", "recipe.prepare_size=72", "batch_size=4", "progress=false",
        "lr=1e-3"]


def _app() -> typer.Typer:
    from breastscreen.training.cli import register as register_training
    from breastscreen.ultrasound.cli import register as register_us

    app = typer.Typer()
    register_training(app)
    register_us(app)

    @app.callback()
    def _root() -> None:
        """test app"""

    return app


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    root = tmp_path_factory.mktemp("us_cohort")
    exams = generate_us_cohort(root / "c", 10, seed=4, max_images=2, prevalence=0.5, benign_prevalence=0.3)
    write_manifest(exams[:6], root / "train.jsonl")
    write_manifest(exams[6:], root / "val.jsonl")
    return root


def _run(args):
    result = CliRunner().invoke(_app(), args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_train_us_writes_run_directory(cohort, tmp_path):
    out = tmp_path / "run"
    r = _run(["train", "us", "--manifest", str(cohort / "train.jsonl"), "--val-manifest", str(cohort / "val.jsonl"),
              "--out", str(out), "epochs=2", *TINY])
    assert r.exit_code == 0, r.output
    assert {"best.safetensors", "last.safetensors", "metrics.csv", "config.yaml"} <= {p.name for p in out.iterdir()}
    header = open(out / "metrics.csv").readline().strip().split(",")
    assert {"val_auroc_malignant", "val_auroc_benign", "val_loss"} <= set(header)
    from breastscreen.models.checkpoint import load_checkpoint

    ck = load_checkpoint(str(out / "best.safetensors"))
    assert ck.spec.family == "us" and ck.spec.input_size == 64 and ck.model.config.input_size == 64
    assert ck.metadata["recipe"]["beta"] == pytest.approx(10**-1.5)


def test_train_us_refuses_missing_validation(cohort, tmp_path):
    r = CliRunner().invoke(_app(), ["train", "us", "--manifest", str(cohort / "train.jsonl"),
                                    "--out", str(tmp_path / "run"), *TINY])
    assert r.exit_code != 0
    assert "val-manifest" in str(r.exception)


def test_paper_space_file_matches_the_paper(tmp_path):
    r = _run(["us-space", str(tmp_path / "space.yaml")])
    assert r.exit_code == 0
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    assert space["lr"]["scale"] == "log" and np.log10(space["lr"]["low"]) == pytest.approx(-5.5)
    assert np.log10(space["lr"]["high"]) == pytest.approx(-4.0)
    assert np.log10(space["recipe.beta"]["low"]) == pytest.approx(-3.0)
    assert np.log10(space["recipe.beta"]["high"]) == pytest.approx(0.5)
    assert np.log10(space["weight_decay"]["low"]) == pytest.approx(-6.0)
    assert np.log10(space["weight_decay"]["high"]) == pytest.approx(-3.5)
    assert space["recipe.top_t"] == {"low": 0.1, "high": 0.5, "scale": "linear"}


def test_us_search_ranks_trials_and_ensembles_top_k(cohort, tmp_path):
    out = tmp_path / "search"
    r = _run(["us-search", "--manifest", str(cohort / "train.jsonl"), "--val-manifest", str(cohort / "val.jsonl"),
              "--out", str(out), "--trials", "3", "--top-k", "2", "epochs=1", *TINY])
    assert r.exit_code == 0, r.output
    ens = json.loads((out / "ensemble.json").read_text())
    assert len(ens["members"]) == 2
    search = json.loads((out / "search.json").read_text())
    values = {t["trial"]: t["value"] for t in search["trials"]}
    ranked = search["ranking"]
    assert [values[t] for t in ranked] == sorted(values.values(), reverse=True)
    assert ens["trials"] == ranked[:2]
    for t in search["trials"]:
        p = t["params"]
        assert 10**-5.5 <= p["lr"] <= 1e-4 and 0.1 <= p["recipe.top_t"] <= 0.5
    assert (out / "space.yaml").is_file()
