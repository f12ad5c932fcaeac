"""The all-convolutional system end to end on a tiny synthetic cohort: roi-patch -> whole-image ->
predict (per-image table, parity with validation) -> evaluate at image level; stages and bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.training.runner import train

SCALE = 0.0625
SIZE = "recipe.image_size=[160,112]"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from breastscreen.data.manifest import read_manifest
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    root = tmp_path_factory.mktemp("allconv")
    for name, seed in (("train", 11), ("val", 12)):
        generate_mammo_cohort(root / f"raw-{name}", n_exams=6, seed=seed, scale=SCALE, prevalence=0.6,
                              benign_prevalence=0.5)
        preprocess_manifest(read_manifest(root / f"raw-{name}" / "manifest.jsonl"), root / name, scale=SCALE)
    return root


@pytest.fixture(scope="module")
def roi_run(cohort):
    out = cohort / "roi"
    train("roi-patch", manifest=str(cohort / "train" / "manifest.jsonl"),
          val_manifest=str(cohort / "val" / "manifest.jsonl"), out=str(out),
          overrides=["model=resnet-tiny-patch", SIZE, "recipe.patch_set=S1", "epochs=1", "batch_size=8",
                     "device=cpu", "progress=false"])
    return out


def test_roi_patch_run_stores_its_spec_and_five_classes(roi_run):
    from breastscreen.models.checkpoint import load_checkpoint

    ck = load_checkpoint(str(roi_run / "best.safetensors"))
    assert ck.spec.family == "roi-patch" and ck.spec.image_size == (160, 112)
    assert ck.spec.patch_size == round(224 * 160 / 1152) and len(ck.spec.classes) == 5
    assert ck.model.config.num_classes == 5 and ck.metadata["n_train_patches"] > 0


def test_whole_image_from_roi_patch_predicts_and_evaluates_per_image(cohort, roi_run, tmp_path):
    from breastscreen.evaluation.evaluate import EvalConfig, evaluate
    from breastscreen.inference.predict import PredictOptions, predict
    from breastscreen.models.checkpoint import load_checkpoint

    run = tmp_path / "whole"
    outcome = train("whole-image", manifest=str(cohort / "train" / "manifest.jsonl"),
                    val_manifest=str(cohort / "val" / "manifest.jsonl"), out=str(run),
                    overrides=[f"init_from={roi_run / 'best.safetensors'}", "model_args.top_blocks=[[8,16,1]]",
                               "recipe.stage_epochs=[1,1]", "epochs=2", "device=cpu", "progress=false"])
    rows = outcome.results[0].history
    assert [r["lr"] for r in rows] == pytest.approx([1e-4, 1e-5])  # the paper's two stages
    ck = load_checkpoint(str(run / "best.safetensors"))
    assert ck.spec.family == "image" and ck.spec.input == "resize" and ck.spec.image_size == (160, 112)

    pred = tmp_path / "pred"
    predict(str(cohort / "val" / "manifest.jsonl"), [str(run / "best.safetensors")], pred,
            PredictOptions(tta=1, device="cpu", pictures=False))
    val = {r["exam_id"]: r for r in csv.DictReader(open(run / "val_predictions.csv"))}
    got = {r["exam_id"]: r for r in csv.DictReader(open(pred / "predictions.csv"))}
    assert val.keys() == got.keys()
    for eid in val:
        for c in ("left_malignant", "right_malignant"):
            assert float(val[eid][c]) == pytest.approx(float(got[eid][c]), abs=1e-5)
    images = list(csv.DictReader(open(pred / "image_predictions.csv")))
    assert len(images) == 24 and images[0].keys() == {"exam_id", "view", "image", "benign", "malignant"}
    import pandas as pd

    from breastscreen.evaluation.io import labels_from_exams, validate_predictions
    from breastscreen.data.manifest import read_manifest

    result = evaluate(validate_predictions(pd.read_csv(pred / "image_predictions.csv")),
                      labels_from_exams(read_manifest(cohort / "val" / "manifest.jsonl")),
                      config=EvalConfig(level="image", n_bootstrap=20))
    assert result.metrics["image"]["malignant"]["auroc"]["value"] == pytest.approx(
        _image_auc(images, cohort), abs=1e-9)

    # transfer: the whole-image model fine-tuned with image labels only (another "dataset" here)
    tuned = tmp_path / "tuned"
    train("whole-image", manifest=str(cohort / "val" / "manifest.jsonl"),
          val_manifest=str(cohort / "train" / "manifest.jsonl"), out=str(tuned),
          overrides=[f"init_from={run / 'best.safetensors'}", "epochs=1", "lr=1e-5", "device=cpu", "progress=false"])
    base, new = load_checkpoint(str(run / "best.safetensors")), load_checkpoint(str(tuned / "last.safetensors"))
    assert new.config == base.config and new.spec.image_size == base.spec.image_size
    assert new.metadata["init"] == "image"


def _image_auc(images, cohort) -> float:
    from sklearn.metrics import roc_auc_score

    from breastscreen.data.manifest import read_manifest

    exams = {e.exam_id: e for e in read_manifest(cohort / "val" / "manifest.jsonl")}
    y = [exams[r["exam_id"]].label(r["view"][0]).malignant for r in images]
    s = [float(r["malignant"]) for r in images]
    return float(roc_auc_score(y, s))


def test_stage_one_trains_only_the_top_layers_on_the_copied_patch_trunk(cohort, roi_run, tmp_path):
    from breastscreen.models.checkpoint import load_checkpoint

    run = tmp_path / "stage1"
    train("whole-image", manifest=str(cohort / "train" / "manifest.jsonl"),
          val_manifest=str(cohort / "val" / "manifest.jsonl"), out=str(run),
          overrides=[f"init_from={roi_run / 'best.safetensors'}", "model_args.top_blocks=[[8,16,1]]",
                     "recipe.stage_epochs=[1,1]", "epochs=1", "device=cpu", "progress=false"])
    roi = dict(load_checkpoint(str(roi_run / "best.safetensors")).model.named_parameters())
    whole = load_checkpoint(str(run / "last.safetensors")).model
    trunk = dict(whole.patch.named_parameters())
    copied = [k for k in roi if not k.startswith("head.")]
    assert copied and all(torch.equal(trunk[k], roi[k]) for k in copied)  # frozen in stage 1, copied exactly


def test_whole_image_refuses_a_wrong_init_checkpoint(cohort, tmp_path):
    from breastscreen.models import create_model, save_checkpoint

    other = save_checkpoint(create_model("nyu-viewwise", num_filters=4), tmp_path / "nyu.safetensors", {"scale": SCALE})
    with pytest.raises(BreastscreenError, match="multiview model cannot start a whole-image model"):
        train("whole-image", manifest=str(cohort / "train" / "manifest.jsonl"),
              val_manifest=str(cohort / "val" / "manifest.jsonl"), out=str(tmp_path / "w"),
              overrides=[f"init_from={other}", "device=cpu", "progress=false"])


def test_batch_balanced_loss_weighs_each_present_class_equally():
    from breastscreen.training.image_datasets import batch_balanced_cross_entropy

    logits = torch.zeros(4, 3)
    logits[:, 0] = 2.0
    target = torch.tensor([0, 0, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([4 / 6, 2.0, 0.0]))
    assert float(batch_balanced_cross_entropy(logits, target)) == pytest.approx(float(expected))
    assert np.isfinite(float(batch_balanced_cross_entropy(logits, torch.tensor([2, 2, 2, 2]))))


def test_roi_patch_without_any_usable_roi_names_the_manifest(cohort, tmp_path):
    from breastscreen.data.manifest import read_manifest, write_manifest

    exams = read_manifest(cohort / "train" / "manifest.jsonl")
    for e in exams:
        for _, im in e.iter_images():
            im.masks, im.rois = [], []
    write_manifest(exams, tmp_path / "no_rois.jsonl")
    with pytest.raises(BreastscreenError, match=r"no_rois\.jsonl: no training image has a usable lesion ROI"):
        train("roi-patch", manifest=str(tmp_path / "no_rois.jsonl"), val_manifest=str(cohort / "val" / "manifest.jsonl"),
              out=str(tmp_path / "r"), overrides=["model=resnet-tiny-patch", SIZE, "device=cpu", "progress=false"])


def test_whole_image_size_too_small_for_the_trunk_is_refused(cohort, roi_run, tmp_path):
    with pytest.raises(BreastscreenError, match=r"whole image of size \[16, 16\].*too small"):
        train("whole-image", manifest=str(cohort / "train" / "manifest.jsonl"),
              val_manifest=str(cohort / "val" / "manifest.jsonl"), out=str(tmp_path / "w"),
              overrides=["model=allconv-vgg16", "model_args.trunk=vgg-tiny-patch", "recipe.image_size=[16,16]",
                         "device=cpu", "progress=false"])
