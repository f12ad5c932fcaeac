"""Ultrasound exams through predict: per-breast probabilities, attention, pictures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import Exam, ImageRef, Modality
from breastscreen.inference.predict import PredictOptions, predict
from breastscreen.models import create_model, save_checkpoint


def _us_image(rng: np.random.Generator, path: Path) -> None:
    img = np.zeros((90, 120), np.uint8)
    img[10:80, 15:105] = rng.integers(40, 200, size=(70, 90))  # field of view; zeros around it
    Image.fromarray(img).save(path)


def test_us_exam_prediction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    views = {"L-US": [], "R-US": []}
    for side, n in (("L-US", 3), ("R-US", 1)):
        for k in range(n):
            p = tmp_path / f"P1_{side}_{k}.png"
            _us_image(rng, p)
            views[side].append(ImageRef(path=str(p)))
    write_manifest([Exam(exam_id="P1", modality=Modality.US, views=views)], tmp_path / "m.jsonl")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("us-mil-tiny", input_size=64), tmp_path / "us.safetensors", {})
    run = predict(tmp_path / "m.jsonl", [str(ckpt)], tmp_path / "out",
                  PredictOptions(device="cpu", tta=2, pictures=True))
    assert run.ok, run.errors
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 1 and all(0 <= float(rows[0][c]) <= 1 for c in rows[0] if c != "exam_id")
    line = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    att = line["breasts"]["L"]["attention_malignant"]
    assert len(att) == 3 and abs(sum(att) - 1) < 1e-5
    assert sorted(p.name for p in (tmp_path / "out" / "pictures").glob("*.png")) == ["P1_L.png", "P1_R.png"]


def test_unknown_side_bags_are_scored_sorted_and_shown(tmp_path: Path) -> None:
    """U-US bags (no laterality, e.g. BUS-BRA, BUSI) carry their probabilities into every table.

    They live in ``details["breasts"]["U"]``: the HTML page showed empty score cells, no
    unknown-side columns and id order, and the JSONL ``probabilities`` lacked them.
    """
    import re

    rng = np.random.default_rng(1)
    exams = []
    for e in range(4):
        p = tmp_path / f"E{e}.png"
        _us_image(rng, p)
        exams.append(Exam(exam_id=f"E{e}", modality=Modality.US, views={"U-US": [ImageRef(path=str(p))]}))
    write_manifest(exams, tmp_path / "m.jsonl")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("us-mil-tiny", input_size=64), tmp_path / "us.safetensors", {})
    run = predict(tmp_path / "m.jsonl", [str(ckpt)], tmp_path / "out", PredictOptions(device="cpu", pictures=True))
    assert run.ok, run.errors
    csv_rows = {r["exam_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    malignant = {k: float(r["unknown_malignant"]) for k, r in csv_rows.items()}
    assert len(set(malignant.values())) == 4  # distinct, so the order below is meaningful
    for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["probabilities"]["unknown_malignant"] == rec["breasts"]["U"]["malignant"]
        assert abs(rec["probabilities"]["unknown_malignant"] - malignant[rec["exam_id"]]) < 1e-6
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<th>unknown_malignant</th>" in page and "<th>unknown_benign</th>" in page
    order = re.findall(r"<td class='id'>(E\d)", page)
    assert order == sorted(malignant, key=lambda k: -malignant[k])
    for k, v in malignant.items():  # score column = the bag's malignant probability
        assert re.search(rf"<td class='id'>{k}</td><td>{v:.3f}</td>", page)
