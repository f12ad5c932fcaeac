"""`breastscreen evaluate --masks`: pointing game and IoU of ultrasound saliency maps against lesion masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.data.manifest import write_manifest
from breastscreen.data.types import BreastLabel, Exam, ImageRef, LesionMask, Modality
from breastscreen.evaluation.io import EvaluationInputError
from breastscreen.evaluation.localisation import localisation_from_predictions, saliency_iou

H, W, SIZE = 100, 80, 50


def _cohort(tmp: Path) -> tuple[list[Exam], dict[str, np.ndarray]]:
    """Six one-image L-US exams; E0 and E1 malignant with a top-left lesion, E2 malignant but not predicted."""
    rng = np.random.default_rng(0)
    mask = np.zeros((H, W), np.uint8)
    mask[:50, :40] = 255  # the top-left quadrant of the image
    exams, maps = [], {}
    for i in range(6):
        img = tmp / f"E{i}.png"
        cv2.imwrite(str(img), rng.integers(40, 200, (H, W)).astype(np.uint8))
        malignant = i < 3
        masks = []
        if i < 4:
            cv2.imwrite(str(tmp / f"E{i}_mask.png"), mask)
            masks = [LesionMask(str(tmp / f"E{i}_mask.png"), "malignant" if malignant else "benign", "mass", "L1")]
        exams.append(Exam(f"E{i}", Modality.US, {"L-US": [ImageRef(str(img), masks=masks)]},
                          labels={"L": BreastLabel(int(not malignant), int(malignant))}))
    hot_top_left = np.zeros((4, 4), np.float32)
    hot_top_left[:2, :2] = 1.0  # on the lesion
    hot_bottom_right = np.zeros((4, 4), np.float32)
    hot_bottom_right[3, 3] = 1.0  # away from it
    maps = {"E0": hot_top_left, "E1": hot_bottom_right}
    return exams, maps


def _run(tmp: Path, exams: list[Exam], maps: dict[str, np.ndarray]) -> Path:
    """predictions.csv + predictions.jsonl as `breastscreen predict` writes them (E2 not predicted)."""
    pred = tmp / "pred"
    pred.mkdir()
    with open(pred / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["exam_id", "left_benign", "left_malignant", "right_benign", "right_malignant"])
        for i, e in enumerate(exams):
            if e.exam_id != "E2":
                w.writerow([e.exam_id, 0.3, 0.8 if i < 3 else 0.1 + 0.05 * i, "", ""])
    with open(pred / "predictions.jsonl", "w") as fh:
        for e in exams:
            if e.exam_id == "E2":
                continue
            sal = maps.get(e.exam_id, np.full((4, 4), 0.1, np.float32))
            breast = {"benign": 0.3, "malignant": 0.5, "images": [e.views["L-US"][0].path],
                      "saliency_malignant": [sal.tolist()], "saliency_benign": [sal.tolist()],
                      "crop_boxes": [[0, 0, W, H]], "original_shapes": [[H, W]], "prepared_size": SIZE}
            fh.write(json.dumps({"exam_id": e.exam_id, "breasts": {"L": breast}}) + "\n")
    return pred


def test_localisation_from_files_on_a_crafted_case(tmp_path):
    exams, maps = _cohort(tmp_path)
    write_manifest(exams, tmp_path / "m.jsonl")
    pred = _run(tmp_path, exams, maps)
    r = localisation_from_predictions(pred / "predictions.jsonl", tmp_path / "m.jsonl")
    prepared_mask = np.zeros((SIZE, SIZE), bool)
    prepared_mask[:25, :25] = True
    iou0 = saliency_iou(maps["E0"], prepared_mask)
    assert iou0 > 0.9 and saliency_iou(maps["E1"], prepared_mask) == 0.0
    assert (r["n_images"], r["pointing_game"]) == (2, 0.5)  # E0 hits, E1 misses
    assert r["mean_iou"] == pytest.approx(iou0 / 2)
    assert (r["n_masked_images"], r["n_masked_images_without_map"]) == (3, 1)  # E2 was not predicted; E3 is benign


def test_evaluate_reports_pointing_game_and_iou(tmp_path):
    exams, maps = _cohort(tmp_path)
    write_manifest(exams, tmp_path / "m.jsonl")
    pred = _run(tmp_path, exams, maps)
    args = ["evaluate", "--predictions", str(pred / "predictions.csv"), "--labels", str(tmp_path / "m.jsonl"),
            "--masks", str(tmp_path / "m.jsonl"), "--bootstrap", "20", "--permutations", "0", "--allow-missing",
            "--out", str(tmp_path / "eval")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    loc = json.loads((tmp_path / "eval" / "metrics.json").read_text())["localisation"]["malignant"]
    assert loc["pointing_game"] == 0.5 and loc["n_images"] == 2 and loc["mean_iou"] > 0.45
    assert "pointing game 0.500" in r.output
    assert "Localisation" in (tmp_path / "eval" / "report.html").read_text()


def test_masks_errors_name_the_file(tmp_path):
    exams, maps = _cohort(tmp_path)
    write_manifest(exams, tmp_path / "m.jsonl")
    pred = _run(tmp_path, exams, maps)
    (pred / "predictions.jsonl").unlink()
    with pytest.raises(EvaluationInputError, match="predictions.jsonl: not found"):
        localisation_from_predictions(pred / "predictions.jsonl", tmp_path / "m.jsonl")
    (pred / "predictions.jsonl").write_text(json.dumps({"exam_id": "E0", "breasts": {"L": {"images": []}}}) + "\n")
    with pytest.raises(EvaluationInputError, match="no saliency maps"):
        localisation_from_predictions(pred / "predictions.jsonl", tmp_path / "m.jsonl")
    r = CliRunner().invoke(app, ["evaluate", "--level", "lesion", "-p", str(pred / "predictions.csv"),
                                 "--masks", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "e2")])
    assert r.exit_code != 0 and "--masks" in str(r.exception)


def test_predict_writes_saliency_maps_that_evaluate_reads(tmp_path):
    import torch

    from breastscreen.inference.predict import PredictOptions, predict
    from breastscreen.models import create_model, save_checkpoint

    exams, _ = _cohort(tmp_path)
    write_manifest(exams, tmp_path / "m.jsonl")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("us-mil-tiny", input_size=64), tmp_path / "us.safetensors", {})
    run = predict(tmp_path / "m.jsonl", [str(ckpt)], tmp_path / "out", PredictOptions(device="cpu", pictures=False))
    assert run.ok, run.errors
    line = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    b = line["breasts"]["L"]
    assert np.asarray(b["saliency_malignant"]).shape == (1, 2, 2) and b["crop_boxes"][0][2] <= W
    assert b["original_shapes"] == [[H, W]] and isinstance(b["prepared_size"], int)
    r = localisation_from_predictions(tmp_path / "out" / "predictions.jsonl", tmp_path / "m.jsonl")
    assert r["n_images"] == 3 and 0.0 <= r["mean_iou"] <= 1.0


def test_masks_of_a_preprocessed_manifest_give_the_same_localisation(tmp_path):
    """`breastscreen preprocess` cuts masks to the crop; evaluate --masks puts them back at the crop box."""
    import torch

    from breastscreen.inference.predict import PredictOptions, predict
    from breastscreen.models import create_model, save_checkpoint
    from breastscreen.preprocess.pipeline import preprocess_manifest

    from breastscreen.synthetic.ultrasound import generate_us_cohort

    exams = generate_us_cohort(tmp_path / "c", 6, seed=3, max_images=2, prevalence=0.6, benign_prevalence=0.3)
    write_manifest(exams, tmp_path / "m.jsonl")
    pre, _ = preprocess_manifest(exams, tmp_path / "pre")
    write_manifest(pre, tmp_path / "pre.jsonl")
    cut = [im for e in pre for _, im in e.iter_images() if im.masks
           and list(im.preprocessing["crop_box"][2:]) != list(im.preprocessing["original_shape"][::-1])]
    assert cut  # some masked images are cropped, so their stored masks are smaller than the original
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("us-mil-tiny", input_size=64), tmp_path / "us.safetensors", {})
    results = []
    for name in ("m", "pre"):
        run = predict(tmp_path / f"{name}.jsonl", [str(ckpt)], tmp_path / f"out-{name}",
                      PredictOptions(device="cpu", pictures=False))
        assert run.ok, run.errors
        results.append(localisation_from_predictions(tmp_path / f"out-{name}" / "predictions.jsonl",
                                                     tmp_path / f"{name}.jsonl"))
    raw, done = results
    assert done["n_images"] == raw["n_images"] > 0
    assert done["pointing_game"] == raw["pointing_game"] and done["mean_iou"] == pytest.approx(raw["mean_iou"])
