"""Lesion-level classifier (Wu et al. 2020): spec geometry, the four commands end to end, parity, bad lesions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.specs.lesion import LesionSpec, lesion_score, lesion_windows, window_scores


# ---------------------------------------------------------------- spec geometry (fast)

def test_windows_are_deterministic_inside_and_touch_the_lesion() -> None:
    region = np.zeros((60, 40), bool)
    region[30:34, 5:9] = True
    a = lesion_windows(region, 50, (8.0, 24.0), seed=3)
    b = lesion_windows(region, 50, (8.0, 24.0), seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, lesion_windows(region, 50, (8.0, 24.0), seed=4))
    assert (a[:, :2] >= 0).all() and (a[:, 2] <= 60).all() and (a[:, 3] <= 40).all()
    sides = a[:, 2] - a[:, 0]
    np.testing.assert_allclose(sides, a[:, 3] - a[:, 1])
    assert sides.min() >= 8 and sides.max() <= 24
    for y0, x0, y1, x1 in a:  # every window holds a lesion pixel
        assert region[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))].any()
    # windows larger than the image shrink to it
    big = lesion_windows(region, 5, (100.0, 120.0), seed=0)
    np.testing.assert_allclose(big[:, 2] - big[:, 0], 40.0)


def test_empty_region_is_refused() -> None:
    with pytest.raises(BreastscreenError, match="empty"):
        lesion_windows(np.zeros((10, 10), bool), 3, (2.0, 4.0), seed=0)


def test_scores_normalise_malignant_and_benign() -> None:
    probs = np.array([[0.3, 0.1, 0.5, 0.1],   # malignant, benign, outside, negative
                      [0.0, 0.2, 0.8, 0.0],
                      [0.0, 0.0, 1.0, 0.0]])
    np.testing.assert_allclose(window_scores(probs), [[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]])
    m, b = lesion_score(probs)
    assert m == pytest.approx((0.75 + 0.0 + 0.5) / 3) and m + b == pytest.approx(1.0)


def test_batched_window_inputs_equal_one_by_one() -> None:
    from breastscreen.training.recipes.lesion import AggWindowDataset, _Image

    spec = LesionSpec(scale=0.25, patch_size=16, grid_size=(4, 3), embedding_dim=3)
    rng = np.random.default_rng(0)
    images = [_Image(None, "L-CC", 0, f"e{k}", (40, 30), rng.random((2, 4, 3)).astype(np.float32)) for k in range(3)]
    n = 12
    y0, x0 = rng.uniform(0, 20, n), rng.uniform(0, 15, n)
    side = rng.uniform(4, 12, n)
    boxes = np.stack([y0, x0, y0 + side, x0 + side], axis=1)
    ds = AggWindowDataset(spec, images, rng.integers(0, 3, n), boxes, rng.standard_normal((n, 3)).astype(np.float32),
                          rng.integers(0, 4, n))
    order = [5, 0, 11, 3, 3, 7]
    batched = ds.__getitems__(order)
    for i, (x, y) in zip(order, batched):
        x1, y1 = ds[i]
        im = images[int(ds.image_idx[i])]
        direct = spec.agg_inputs(boxes[i:i + 1], im.shape, im.saliency, ds.embeddings[i:i + 1])[0]
        assert y == y1 and torch.equal(x, x1) and np.array_equal(x.numpy(), direct)


def test_agg_inputs_channel_order_and_values() -> None:
    spec = LesionSpec(scale=0.25, patch_size=64, grid_size=(4, 2), maps=("embedding", "saliency", "location"),
                      embedding_dim=3)
    assert spec.maps == ("saliency", "location", "embedding") and spec.in_channels == 6
    sal = np.stack([np.full((4, 2), 0.2), np.full((4, 2), 0.7)]).astype(np.float32)
    # image 40 x 20 -> cells of 10 x 10; the window covers cell (0, 0) fully and half of cell (1, 0)
    boxes = np.array([[0.0, 0.0, 15.0, 10.0]])
    emb = np.array([[1.0, -2.0, 3.0]], np.float32)
    x = spec.agg_inputs(boxes, (40, 20), sal, emb)
    assert x.shape == (1, 6, 4, 2)
    np.testing.assert_allclose(x[0, 0], 0.2) and np.testing.assert_allclose(x[0, 1], 0.7)
    np.testing.assert_allclose(x[0, 2], [[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(x[0, 3:, 0, 0], [1.0, -2.0, 3.0])
    np.testing.assert_allclose(x[0, 3:, 1, 0], [1.0, -2.0, 3.0])
    np.testing.assert_allclose(x[0, 3:, 2:], 0.0)
    with pytest.raises(BreastscreenError, match="context model"):
        spec.agg_inputs(boxes, (40, 20), None, emb)
    with pytest.raises(ValueError, match="subset"):
        LesionSpec(maps=("saliency", "texture"))


# ---------------------------------------------------------------- the four commands (one small cohort)

@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    root = tmp_path_factory.mktemp("lesion_cohort")
    exams = generate_mammo_cohort(root / "raw", n_exams=14, seed=5, scale=0.125, prevalence=0.5,
                                  benign_prevalence=0.6)
    write_manifest(exams, root / "raw" / "manifest.jsonl")
    pre = preprocess_manifest(read_manifest(root / "raw" / "manifest.jsonl"), root / "pre", scale=0.125)
    pre = read_manifest(root / "pre" / "manifest.jsonl")
    write_manifest(pre[:9], root / "pre" / "train.jsonl")
    write_manifest(pre[9:], root / "pre" / "val.jsonl")
    return {"root": root, "train": root / "pre" / "train.jsonl", "val": root / "pre" / "val.jsonl"}


@pytest.fixture(scope="module")
def trained(cohort: dict[str, Path]) -> dict[str, Path]:
    from breastscreen.training.runner import train

    from breastscreen.data.lesions import manifest_lesions
    from breastscreen.data.manifest import read_manifest

    outcomes = {r.outcome for r in manifest_lesions(read_manifest(cohort["val"]))}
    assert outcomes == {"benign", "malignant"}, "the fixture cohort must have both outcomes in validation"
    root = cohort["root"] / "runs"
    common = ["device=cpu", "progress=false", "amp=false"]
    train("patch", str(cohort["train"]), str(cohort["val"]), str(root / "floc"),
          overrides=["model=densenet-tiny-embed", "recipe.lesion_validation=true", "monitor=val_lesion_auc",
                     "recipe.epoch_size=120", "recipe.lesion_windows=6", "epochs=1", "batch_size=40", "lr=1e-3",
                     *common])
    train("context", str(cohort["train"]), str(cohort["val"]), str(root / "ctx"),
          overrides=["model_args.num_filters=4", "epochs=1", "lr=1e-3", *common])
    train("lesion", str(cohort["train"]), str(cohort["val"]), str(root / "agg"),
          overrides=[f"recipe.patch_model={root / 'floc' / 'best.safetensors'}",
                     f"recipe.context_model={root / 'ctx' / 'best.safetensors'}", "recipe.windows_per_lesion=8",
                     "recipe.windows=6", "epochs=2", "lr=1e-3", *common])
    return {"floc": root / "floc" / "best.safetensors", "ctx": root / "ctx" / "best.safetensors",
            "agg": root / "agg" / "best.safetensors", "agg_run": root / "agg", "floc_run": root / "floc"}


def _best_metric(run: Path, name: str) -> float:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    best = max(rows, key=lambda r: float(r[name]))
    return float(best[name])


def _auc(rows: list[dict]) -> float:
    from breastscreen.evaluation.metrics import roc_auc

    y = np.array([int(r["outcome"] == "malignant") for r in rows])
    return roc_auc(y, np.array([r["malignant"] for r in rows], dtype=float))


def test_predict_lesions_agrees_with_training_validation(cohort: dict[str, Path], trained: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from breastscreen.inference.lesion_runner import predict_lesions
    from breastscreen.models.checkpoint import load_checkpoint

    run = predict_lesions(cohort["val"], tmp_path / "full", str(trained["floc"]), str(trained["ctx"]),
                          str(trained["agg"]), pictures=True)
    assert run.rows and not run.errors
    ck = load_checkpoint(trained["agg"])
    spec = ck.spec
    counts = ck.metadata["train_window_counts"]
    # lesion windows (8 per training lesion) and as many outside/negative windows, split evenly
    assert counts["outside"] > 0 and counts["negative"] > 0
    assert counts["outside"] + counts["negative"] == counts["malignant"] + counts["benign"]
    assert spec.family == "lesion" and spec.windows == 6 and spec.maps == ("saliency", "location", "embedding")
    for r in run.rows:
        assert r["malignant"] + r["benign"] == pytest.approx(1.0)
    # the validation AUC of the kept epoch is what predict-lesions gives on the same lesions
    assert _auc(run.rows) == pytest.approx(_best_metric(trained["agg_run"], "val_lesion_auc"), abs=1e-12)
    header = next(csv.reader(open(tmp_path / "full" / "lesions.csv")))
    assert header == ["exam_id", "patient_id", "view", "image", "lesion_id", "outcome", "kind", "malignant", "benign"]
    assert len(list((tmp_path / "full" / "lesions").glob("*.png"))) == len(run.rows)
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["mode"].startswith("local + saliency") and info["n_lesions"] == len(run.rows)

    # local only: f_loc alone, same windows; agrees with f_loc's own lesion validation
    local = predict_lesions(cohort["val"], tmp_path / "local", str(trained["floc"]), windows=6, pictures=False)
    assert [r["lesion_id"] for r in local.rows] == [r["lesion_id"] for r in run.rows]
    assert _auc(local.rows) == pytest.approx(_best_metric(trained["floc_run"], "val_lesion_auc"), abs=1e-12)

    # the same command again with --resume reuses the cached features and gives the same numbers
    again = predict_lesions(cohort["val"], tmp_path / "full", str(trained["floc"]), str(trained["ctx"]),
                            str(trained["agg"]), pictures=False, resume=True)
    assert [r["malignant"] for r in again.rows] == [r["malignant"] for r in run.rows]
    with pytest.raises(BreastscreenError, match="--resume"):
        predict_lesions(cohort["val"], tmp_path / "full", str(trained["floc"]))


def test_bad_lesions_are_reported_and_the_batch_goes_on(cohort: dict[str, Path], trained: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.data.types import ROI
    from breastscreen.inference.lesion_runner import predict_lesions

    exams = read_manifest(cohort["val"])
    n_good = sum(1 for e in exams for _, im in e.iter_images() for _ in (im.masks or im.rois))
    target = next(im for e in exams for _, im in e.iter_images())
    h, w = target.preprocessing["output_shape"]
    target.masks, target.rois = [], [ROI((w + 10, h + 10, w + 30, h + 30), "benign", "mass", lesion_id="far")]
    write_manifest(exams, tmp_path / "bad.jsonl")
    run = predict_lesions(tmp_path / "bad.jsonl", tmp_path / "out", str(trained["floc"]), windows=4, pictures=False)
    assert len(run.errors) == 1 and run.errors[0][3] == "far" and "no pixel inside" in run.errors[0][4]
    assert len(run.rows) >= n_good - 2  # only the edited image's lesions are gone
    rows = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert rows[0]["lesion_id"] == "far"


def test_lesion_model_refuses_other_feature_models(cohort: dict[str, Path], trained: dict[str, Path],
                                                   tmp_path: Path) -> None:
    from breastscreen.inference.lesions import LesionPredictor

    with pytest.raises(BreastscreenError, match="context-model"):
        LesionPredictor.load(str(trained["floc"]), None, str(trained["agg"]))
    import torch

    from breastscreen.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(trained["floc"])
    with torch.no_grad():
        next(ck.model.parameters()).add_(0.01)
    other = tmp_path / "other_floc.safetensors"
    save_checkpoint(ck.model, other, ck.metadata, spec=ck.spec)
    with pytest.raises(BreastscreenError, match="another local module"):
        LesionPredictor.load(str(other), str(trained["ctx"]), str(trained["agg"]))
    with pytest.raises(BreastscreenError, match="not a lesion model"):
        LesionPredictor.load(str(trained["floc"]), str(trained["ctx"]), str(trained["ctx"]))


def test_train_lesion_needs_its_models(cohort: dict[str, Path], tmp_path: Path) -> None:
    from breastscreen.training.runner import train

    with pytest.raises(BreastscreenError, match="patch_model"):
        train("lesion", str(cohort["train"]), str(cohort["val"]), str(tmp_path / "x"), overrides=["device=cpu"])


def test_unusable_training_lesions_are_listed_and_training_goes_on(cohort: dict[str, Path], trained: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    from breastscreen.data.lesions import manifest_lesions
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.training.runner import train

    exams = read_manifest(cohort["train"])
    with_masks = [im for e in exams for _, im in e.iter_images() if im.masks]
    n_lesions = len([r for r in manifest_lesions(exams) if r.outcome])
    with_masks[0].masks[0].label = None          # outcome unknown
    with_masks[0].rois = [r for r in with_masks[0].rois if r.lesion_id != with_masks[0].masks[0].lesion_id]
    h, w = with_masks[1].preprocessing["output_shape"]
    lid = with_masks[1].masks[0].lesion_id
    with_masks[1].masks = [m for m in with_masks[1].masks if m.lesion_id != lid]
    from breastscreen.data.types import ROI

    with_masks[1].rois = [r for r in with_masks[1].rois if r.lesion_id != lid] + [ROI((w + 5, h + 5, w + 9, h + 9),
                                                                                     "benign", "mass", lesion_id=lid)]
    write_manifest(exams, tmp_path / "train.jsonl")
    run = tmp_path / "agg"
    train("lesion", str(tmp_path / "train.jsonl"), str(cohort["val"]), str(run),
          overrides=[f"recipe.patch_model={trained['floc']}", f"recipe.context_model={trained['ctx']}",
                     "recipe.windows_per_lesion=4", "recipe.windows=6", "epochs=1", "device=cpu", "progress=false"])
    rows = list(csv.DictReader(open(run / "skipped_lesions.csv")))
    assert len(rows) == 2, rows
    assert any("no outcome" in r["reason"] for r in rows) and any("no pixel inside" in r["reason"] for r in rows)
    assert {r["lesion"].rsplit("/", 1)[-1] for r in rows} == {with_masks[0].masks[0].lesion_id, lid}
    assert (run / "best.safetensors").is_file() and n_lesions >= 3
