"""BUSI external testing: a BUSI-format folder -> manifest -> `breastscreen predict` -> `evaluate`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from breastscreen.data.cli import register as register_data
    from breastscreen.evaluation.cli import register as register_eval
    from breastscreen.inference.cli import register as register_inference

    app = typer.Typer()
    for reg in (register_data, register_inference, register_eval):
        reg(app)

    @app.callback()
    def _root() -> None:
        """test app"""

    return app


@pytest.fixture()
def busi(tmp_path):
    """A tiny folder in the BUSI layout: <class>/<class> (N).png with <class> (N)_mask.png."""
    rng = np.random.default_rng(0)
    root = tmp_path / "BUSI"
    for cls, n in (("benign", 2), ("malignant", 2), ("normal", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            img = np.zeros((120, 160), np.uint8)
            img[15:115, 10:150] = rng.integers(40, 200, size=(100, 140))
            mask = np.zeros_like(img)
            if cls != "normal":
                cv2.circle(img, (80, 60), 15, 10, -1)
                cv2.circle(mask, (80, 60), 15, 255, -1)
            cv2.imwrite(str(root / cls / f"{cls} ({i}).png"), img)
            cv2.imwrite(str(root / cls / f"{cls} ({i})_mask.png"), mask)
    import torch

    from breastscreen.models.checkpoint import save_checkpoint
    from breastscreen.models.registry import create_model

    torch.manual_seed(0)
    save_checkpoint(create_model("us-mil-tiny", input_size=64), tmp_path / "us.safetensors", {"family": "us"})
    return root


def _invoke(args):
    r = CliRunner().invoke(_app(), [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code == 0, r.output
    return r


def test_busi_folder_predicts_one_bag_per_image_with_attention_and_picture(busi, tmp_path):
    _invoke(["manifest", "adapt", "busi", busi, "--out", tmp_path / "busi.jsonl"])
    _invoke(["predict", tmp_path / "busi.jsonl", "--model", tmp_path / "us.safetensors", "--out", tmp_path / "pred",
             "--device", "cpu"])
    lines = [json.loads(line) for line in open(tmp_path / "pred" / "predictions.jsonl")]
    assert sorted(d["exam_id"] for d in lines) == sorted(
        ["busi-benign-1", "busi-benign-2", "busi-malignant-1", "busi-malignant-2", "busi-normal-1"])
    for d in lines:
        bag = d["breasts"]["U"]
        assert 0.0 <= bag["malignant"] <= 1.0 and bag["attention_malignant"] == [pytest.approx(1.0)]
    assert len(list((tmp_path / "pred" / "pictures").glob("*_U.png"))) == 5


def test_busi_evaluate_gives_breast_level_auroc(busi, tmp_path):
    _invoke(["manifest", "adapt", "busi", busi, "--out", tmp_path / "busi.jsonl"])
    _invoke(["predict", tmp_path / "busi.jsonl", "--model", tmp_path / "us.safetensors", "--out", tmp_path / "pred",
             "--device", "cpu", "--no-pictures"])
    _invoke(["evaluate", "--predictions", tmp_path / "pred" / "predictions.csv", "--labels", tmp_path / "busi.jsonl",
             "--out", tmp_path / "ev", "--bootstrap", "20", "--permutations", "0"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # every BUSI image is one breast-level unit: 5 units, 2 of them malignant
    assert metrics["breast"]["malignant"]["n"] == 5
    assert metrics["breast"]["malignant"]["n_positive"] == 2
    assert metrics["breast"]["benign"]["n_positive"] == 2


def test_busi_folder_one_command_each(busi, tmp_path):
    """`predict BUSI_DIR` adapts the folder itself and saves the manifest it used for `evaluate --labels`."""
    _invoke(["predict", busi, "--model", tmp_path / "us.safetensors", "--out", tmp_path / "pred", "--device", "cpu",
             "--no-pictures"])
    pred = tmp_path / "pred"
    header = (pred / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header == ["exam_id", "left_benign", "left_malignant", "right_benign", "right_malignant",
                      "unknown_benign", "unknown_malignant"]
    assert len((pred / "predictions.csv").read_text().splitlines()) == 6  # masks are not images
    assert not (pred / "errors.csv").read_text().strip().splitlines()[1:]
    _invoke(["evaluate", "--predictions", pred / "predictions.csv", "--labels", pred / "manifest.jsonl",
             "--out", tmp_path / "ev", "--bootstrap", "0", "--permutations", "0"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["breast"]["malignant"]["n"] == 5 and metrics["breast"]["malignant"]["n_positive"] == 2
    # a second run into the same folder must not silently replace the saved manifest
    r = CliRunner().invoke(_app(), ["predict", str(busi), "--model", str(tmp_path / "us.safetensors"),
                                    "--out", str(pred), "--device", "cpu", "--no-pictures"])
    assert r.exit_code != 0
