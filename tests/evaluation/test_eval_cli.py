"""`breastscreen evaluate` on a small synthetic cohort with simulated readers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.errors import BreastscreenError
from breastscreen.evaluation.simulate import simulate_cohort


def _write(tmp_path, n=120, seed=5):
    d = simulate_cohort(n, seed=seed, n_readers=3)
    for k, v in d.items():
        v.to_csv(tmp_path / f"{k}.csv", index=False)
    return d


def test_cli_evaluate_writes_metrics_report_and_plots(tmp_path):
    d = _write(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(tmp_path / "predictions.csv"), "--labels", str(tmp_path / "labels.csv"),
            "--readers", str(tmp_path / "readers.csv"), "--bootstrap", "40", "--permutations", "100",
            "--subgroup", "device", "--seed", "3", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    p, l = d["predictions"], d["labels"]
    y = np.r_[l["left_malignant"], l["right_malignant"]]
    s = np.r_[p["left_malignant"], p["right_malignant"]]
    assert abs(m["breast"]["malignant"]["auroc"]["value"] - roc_auc_score(y, s)) < 1e-12
    assert m["meta"]["bootstrap"]["n_resamples"] == 40
    for name in ("roc_pr", "readers_roc_pr", "hybrid_lambda", "subgroups", "birads_kept_fraction", "correlation"):
        png = out / f"{name}.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "Reader study" in html and "<script" not in html
    assert set(m["subgroups"]) >= {"age_band", "density", "device"}
    # Same seed, same numbers; an existing metrics.json is not overwritten without --overwrite.
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code != 0 and isinstance(r2.exception, BreastscreenError) and "exists" in str(r2.exception)
    r3 = CliRunner().invoke(app, args + ["--overwrite"])
    assert r3.exit_code == 0, r3.output
    assert json.loads((out / "metrics.json").read_text()) == m


def test_cli_errors_exit_2_with_a_message(tmp_path):
    d = _write(tmp_path, n=30)
    d["predictions"].drop(columns=["right_benign"]).to_csv(tmp_path / "bad.csv", index=False)
    cmd = [sys.executable, "-c", "from breastscreen.cli import main; main()", "evaluate", "--predictions",
           str(tmp_path / "bad.csv"), "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "missing column(s) right_benign" in res.stderr
