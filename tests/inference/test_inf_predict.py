"""Exam prediction end to end on tiny synthetic exams and tiny models (CPU, seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breastscreen.data.manifest import read_manifest, write_manifest
from breastscreen.inference.predict import PredictOptions, predict
from breastscreen.models import create_model, save_checkpoint

SCALE = 0.03


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_mammo_cohort(root / "raw", 3, seed=5, scale=SCALE)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for key, name, kw in [
        ("image", "nyu-viewwise-image", {"num_filters": 4}),
        ("image2", "nyu-viewwise-image", {"num_filters": 4}),
        ("heat", "nyu-viewwise-heatmaps", {"num_filters": 4}),
        ("mvdcn", "mvdcn", {"padding": 1, "width_multiplier": 0.125}),
        ("gmic", "gmic-global", {"num_filters": 4}),
        ("patch", "densenet-tiny", {}),
    ]:
        torch.manual_seed(len(out))
        model = create_model(name, **kw)
        out[key] = save_checkpoint(model, root / f"{key}.safetensors", {"scale": SCALE})
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _opts(**kw) -> PredictOptions:
    kw.setdefault("device", "cpu")
    kw.setdefault("pictures", False)
    return PredictOptions(**kw)


def test_corrupt_exam_is_reported_and_rest_predicted(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in (cohort / "raw").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    victim = sorted(folder.glob("*_L-CC.png"))[0]
    victim.write_bytes(b"\x89PNG broken")
    run = predict(folder, [str(checkpoints["image"])], tmp_path / "out", _opts(pictures=True))
    rows = _csv(tmp_path / "out" / "predictions.csv")
    errors = _csv(tmp_path / "out" / "errors.csv")
    assert len(rows) == 2 and len(errors) == 1 and not run.ok
    assert errors[0]["exam_id"] == victim.name.split("_")[0] and "L-CC" in errors[0]["reason"]
    assert set(rows[0]) == {"exam_id", "left_benign", "left_malignant", "right_benign", "right_malignant"}
    for r in rows:
        assert all(0.0 <= float(r[c]) <= 1.0 for c in r if c != "exam_id")
    assert len(list((tmp_path / "out" / "pictures").glob("*.png"))) == 2
    html = (tmp_path / "out" / "index.html").read_text()
    assert all(r["exam_id"] in html for r in rows) and errors[0]["exam_id"] in html
    line = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert line["provenance"]["models"][0]["sha256"] and line["provenance"]["tta"] == 1
    assert set(line["branch_probs"]) == {"CC", "MLO"}


def test_deterministic_and_seed_dependent(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    manifest = cohort / "raw" / "manifest.jsonl"
    predict(manifest, [str(checkpoints["image"])], tmp_path / "a", _opts(tta=2, seed=1))
    predict(manifest, [str(checkpoints["image"])], tmp_path / "b", _opts(tta=2, seed=1))
    predict(manifest, [str(checkpoints["image"])], tmp_path / "c", _opts(tta=2, seed=2))
    a, b, c = ((tmp_path / d / "predictions.csv").read_text() for d in "abc")
    assert a == b
    assert a != c  # other jitter draws


def test_ensemble_is_mean_of_members(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    manifest = cohort / "raw" / "manifest.jsonl"
    ens = tmp_path / "ensemble.json"
    ens.write_text(json.dumps({"members": [{"path": str(checkpoints["image"])}, {"path": checkpoints["image2"].name}]}))
    (tmp_path / checkpoints["image2"].name).write_bytes(checkpoints["image2"].read_bytes())  # relative member path
    run = predict(manifest, [str(ens)], tmp_path / "e", _opts())
    assert len(run.predictions) == 3
    for pred in run.predictions:
        members = [np.array(m["probs"]) for m in pred.details["members"]]
        assert len(members) == 2 and not np.allclose(members[0], members[1])
        mean = (members[0] + members[1]) / 2
        assert [pred.values[c] for c in ("left_benign", "left_malignant", "right_benign", "right_malignant")] == \
            pytest.approx(mean.tolist(), abs=1e-6)
    provenance = json.loads((tmp_path / "e" / "predictions.jsonl").read_text().splitlines()[0])["provenance"]
    assert [m["from"].endswith("members[1]") for m in provenance["models"]] == [False, True]


def test_missing_view_still_predicted(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    exams = read_manifest(cohort / "raw" / "manifest.jsonl")
    exams[0].views["R-MLO"] = []
    exams[1].views["L-CC"] = exams[1].views["L-CC"] * 2  # two images of one view
    write_manifest(exams, tmp_path / "m.jsonl")
    run = predict(tmp_path / "m.jsonl", [str(checkpoints["image"])], tmp_path / "o", _opts())
    assert run.ok and len(run.predictions) == 3
    by_id = {p.exam_id: p for p in run.predictions}
    assert by_id[exams[0].exam_id].details["missing_views"] == ["R-MLO"]
    assert by_id[exams[1].exam_id].details["images_per_view"]["L-CC"] == 2


def test_heatmap_model_with_patch_model_and_heatmaps_dir(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    manifest = cohort / "raw" / "manifest.jsonl"
    run = predict(manifest, [str(checkpoints["heat"])], tmp_path / "o",
                  _opts(patch_model=str(checkpoints["patch"]), pictures=True))
    assert run.ok and len(list((tmp_path / "o" / "heatmaps").glob("*.npz"))) == 12
    again = predict(manifest, [str(checkpoints["heat"])], tmp_path / "o2",
                    _opts(heatmaps_dir=str(tmp_path / "o" / "heatmaps")))
    assert [p.values for p in again.predictions] == [p.values for p in run.predictions]
    from breastscreen.errors import BreastscreenError

    with pytest.raises(BreastscreenError, match="heatmaps"):
        predict(manifest, [str(checkpoints["heat"])], tmp_path / "o3", _opts())


def test_birads_and_saliency_families(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    manifest = cohort / "raw" / "manifest.jsonl"
    predict(manifest, [str(checkpoints["mvdcn"])], tmp_path / "b", _opts(tta=2))
    rows = _csv(tmp_path / "b" / "predictions.csv")
    assert len(rows) == 3 and rows[0]["left_malignant"] == ""
    p = np.array([float(rows[0][f"birads_{k}"]) for k in "012"])
    assert p.sum() == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["entropy"]) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)
    run = predict(manifest, [str(checkpoints["gmic"])], tmp_path / "g", _opts(tta=2, pictures=True))
    assert run.ok and run.predictions[0].details["per_view"]["L-CC"][0]["malignant"] is not None
    assert len(list((tmp_path / "g" / "pictures").glob("*.png"))) == 3


def test_mixed_families_rejected(checkpoints: dict, cohort: Path, tmp_path: Path) -> None:
    from breastscreen.errors import CheckpointError

    with pytest.raises(CheckpointError, match="agree"):
        predict(cohort / "raw" / "manifest.jsonl", [str(checkpoints["image"]), str(checkpoints["mvdcn"])],
                tmp_path / "x", _opts())


def test_existing_predictions_refused_and_overwrite_redoes_changed_inputs(cohort: Path, checkpoints: dict,
                                                                         tmp_path: Path) -> None:
    from breastscreen.errors import BreastscreenError

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in (cohort / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    manifest = raw / "manifest.jsonl"
    opts = _opts(patch_model=str(checkpoints["patch"]))
    first = predict(manifest, [str(checkpoints["heat"])], tmp_path / "o", opts)
    before = (tmp_path / "o" / "predictions.csv").read_text()
    with pytest.raises(BreastscreenError, match=r"o already holds predictions .*--overwrite"):
        predict(manifest, [str(checkpoints["heat"])], tmp_path / "o", opts)
    assert (tmp_path / "o" / "predictions.csv").read_text() == before
    # Replace one source image (same path, other content): its preprocessed image and heatmaps are redone.
    exams = read_manifest(manifest)
    target, donor = exams[0].views["L-CC"][0].path, exams[1].views["L-CC"][0].path
    Path(target).write_bytes(Path(donor).read_bytes())
    pre = tmp_path / "o" / "preprocessed" / "images" / Path(target).name
    heat = tmp_path / "o" / "heatmaps" / f"{exams[0].exam_id}_L-CC_0.npz"
    old_pre, old_heat = pre.read_bytes(), heat.read_bytes()
    kept = tmp_path / "o" / "heatmaps" / f"{exams[2].exam_id}_R-MLO_0.npz"
    kept_mtime = kept.stat().st_mtime_ns
    again = predict(manifest, [str(checkpoints["heat"])], tmp_path / "o", opts, overwrite=True)
    assert pre.read_bytes() != old_pre and heat.read_bytes() != old_heat
    assert kept.stat().st_mtime_ns == kept_mtime  # unchanged inputs are reused
    by_id = {p.exam_id: p.values for p in again.predictions}
    assert by_id[exams[0].exam_id] != first.predictions[0].values
    assert by_id[exams[2].exam_id] == {p.exam_id: p.values for p in first.predictions}[exams[2].exam_id]


def test_model_precision_bf16_close_to_fp32_and_recorded(cohort: Path, checkpoints: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from breastscreen.inference import engines

    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: True)
    manifest = cohort / "raw" / "manifest.jsonl"
    exact = predict(manifest, [str(checkpoints["image"])], tmp_path / "f", _opts())
    fast = predict(manifest, [str(checkpoints["image"])], tmp_path / "b", _opts(model_precision="bf16"))
    a = np.array([list(p.values.values()) for p in exact.predictions], dtype=float)
    b = np.array([list(p.values.values()) for p in fast.predictions], dtype=float)
    # bfloat16 keeps ~3 significant digits: close to, but not equal to, fp32
    assert 0.0 < np.abs(a - b).max() <= 0.02
    line = json.loads((tmp_path / "b" / "predictions.jsonl").read_text().splitlines()[0])
    assert line["provenance"]["precision"] == "bf16"
    # without native bf16 the run is fp32, bit for bit, and says so
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    fallback = predict(manifest, [str(checkpoints["image"])], tmp_path / "n", _opts(model_precision="bf16"))
    assert [p.values for p in fallback.predictions] == [p.values for p in exact.predictions]
    prov = json.loads((tmp_path / "n" / "predictions.jsonl").read_text().splitlines()[0])["provenance"]
    assert prov["precision"] == "fp32" and "no native bf16" in prov["precision_note"]
    from breastscreen.errors import BreastscreenError

    with pytest.raises(BreastscreenError, match="--model-precision: .*must be fp32 or bf16"):
        _opts(model_precision="fp16")


def test_heatmap_engine_options_reach_on_the_fly_heatmaps(cohort: Path, checkpoints: dict, tmp_path: Path) -> None:
    import importlib.util

    from breastscreen.data.heatmaps import read_heatmap_file
    from breastscreen.errors import BreastscreenError

    manifest = cohort / "raw" / "manifest.jsonl"
    with pytest.raises(BreastscreenError, match="int8 runs on --backend openvino or onnxruntime"):
        predict(manifest, [str(checkpoints["heat"])], tmp_path / "x",
                _opts(patch_model=str(checkpoints["patch"]), heatmap_precision="int8"))
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed")
    exact = predict(manifest, [str(checkpoints["heat"])], tmp_path / "e", _opts(patch_model=str(checkpoints["patch"])))
    fast = predict(manifest, [str(checkpoints["heat"])], tmp_path / "o",
                   _opts(patch_model=str(checkpoints["patch"]), heatmap_backend="onnxruntime"))
    _, meta = read_heatmap_file(sorted((tmp_path / "o" / "heatmaps").glob("*.npz"))[0])
    assert (meta["backend"], meta["precision"], meta["skip_background"]) == ("onnxruntime", "fp32", True)
    a = np.array([list(p.values.values()) for p in exact.predictions], dtype=float)
    b = np.array([list(p.values.values()) for p in fast.predictions], dtype=float)
    assert np.abs(a - b).max() <= 1e-3  # ONNX Runtime fp32 heatmaps: the same up to float16 file rounding
    prov = json.loads((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()[0])["provenance"]
    assert (prov["heatmaps"]["backend"], prov["heatmaps"]["precision"]) == ("onnxruntime", "fp32")


def test_predictor_warm_up_builds_the_heatmap_engine_once(cohort: Path, checkpoints: dict) -> None:
    from breastscreen import Predictor

    exam = read_manifest(cohort / "raw" / "manifest.jsonl")[0]
    cold = Predictor.load(str(checkpoints["heat"]), "cpu", patch_model=str(checkpoints["patch"]))
    warm = Predictor.load(str(checkpoints["heat"]), "cpu", patch_model=str(checkpoints["patch"]))
    warm.warm_up()
    built = warm._inferers[True]
    assert set(warm._inferers) == {True} and not cold._inferers
    assert warm.predict_exam(exam).values == cold.predict_exam(exam).values
    assert warm._inferers[True] is built  # the engine built at warm-up is the one used
    Predictor.load(str(checkpoints["image"]), "cpu").warm_up()  # no patch model: nothing to build
