"""Train/serve parity: for every family with a validation loop, the validation tensor equals the
Predictor's tensor exactly and the validation loop's probability equals ``Predictor.predict_exam``'s."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from breastscreen.inference.predictor import Member, Predictor
from breastscreen.inference.ensemble import MemberRef
from breastscreen.training.loop import DistInfo, EvalContext
from breastscreen.training.recipes import get_recipe
from breastscreen.training.runner import build_config

SCALE = 0.0625


@pytest.fixture(scope="module")
def mammo(tmp_path_factory):
    from mammo_cohorts import make_mammo_cohort

    def edit(exams):
        # Exam 0 gets a second L-CC image and loses its R-MLO: multi-image views and missing views
        # must be handled the same way in validation and prediction.
        e0 = exams[0]
        e0.views["L-CC"] = e0.views["L-CC"] + [exams[1].views["L-CC"][0]]
        del e0.views["R-MLO"]

    c = make_mammo_cohort(tmp_path_factory.mktemp("parity"), 5, seed=9, scale=SCALE, edit=edit)
    return {"manifest": str(c["pre"]), "raw": str(c["raw"]), "maps": c["maps"]}


def _validation(kind: str, manifest: str, out, overrides: list[str]):
    cfg = build_config(kind, manifest, manifest, str(out), overrides=[*overrides, "device=cpu", "progress=false"])
    torch.manual_seed(0)
    task = get_recipe(kind).build(cfg, DistInfo(), None)
    model = task.model.eval()
    ctx = EvalContext(device=torch.device("cpu"), dist=DistInfo(), epoch=0, batch_size=2, num_workers=0,
                      amp=False, progress=False)
    task.evaluate(model, ctx)
    member = Member(MemberRef("in-memory"), model, cfg.model or kind, "", {}, task.spec)
    return task, ctx, member


def _check(task, ctx, predictor: Predictor, exams, heatmaps=None) -> None:
    rows = {r.exam_id: r for r in ctx.predictions}
    assert len(rows) == len(exams)
    for exam in exams:
        got = predictor.predict_exam(exam, heatmaps=heatmaps)
        for col in ctx.prediction_columns:
            a, b = rows[exam.exam_id].values[col], got.values[col]
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), (exam.exam_id, col, a, b)


@pytest.mark.parametrize("kind,model,maps", [
    ("breast", "nyu-viewwise", False), ("breast", "nyu-viewwise", True),
    ("birads", "nyu-birads", False), ("birads", "mvdcn", False),
])
def test_multiview_validation_equals_predictor(mammo, tmp_path, kind, model, maps):
    from breastscreen.data.types import MG_VIEWS
    from breastscreen.inference.predict import heatmap_files

    args = [f"model={model}", "batch_size=2"]
    args += ["model_args.num_filters=4"] if model.startswith("nyu") else ["model_args.width_multiplier=0.125"]
    if maps:
        args.append(f"recipe.heatmaps={mammo['maps']}")
    task, ctx, member = _validation(kind, mammo["manifest"], tmp_path / "run", args)
    val_set = task.train_set.__class__(task.train_set.exams, task.spec, task.train_set.heatmaps, augment=False)
    predictor = Predictor([member])
    source = heatmap_files(mammo["maps"]) if maps else None
    # the tensors: validation item == the Predictor's input rows (tta 1)
    for i, exam in enumerate(val_set.exams):
        item = val_set[i]
        prepared, views_maps = predictor._mammo_views(exam.exam_id, {v: exam.views.get(v, []) for v in MG_VIEWS}, source)
        inputs, present = task.spec.exam_rows(exam.exam_id, prepared, views_maps)
        for v in MG_VIEWS:
            assert np.array_equal(item["views"][v].numpy(), inputs[v]), (exam.exam_id, v)
            assert np.array_equal(item["present"][v].numpy(), present[v])
    assert val_set[0]["views"]["L-CC"].shape[0] == 2 and not val_set[0]["present"]["R-MLO"].any()
    _check(task, ctx, predictor, val_set.exams, source)


def test_multiview_predictor_on_raw_images_equals_preprocessed(mammo, tmp_path):
    """In-memory preprocessing of raw files gives exactly the preprocessed-manifest result."""
    from breastscreen.data.manifest import read_manifest

    task, ctx, member = _validation("breast", mammo["manifest"], tmp_path / "run", ["model_args.num_filters=4"])
    predictor = Predictor([member])
    raw = {e.exam_id: e for e in read_manifest(mammo["raw"])}
    for exam in task.train_set.exams[:2]:
        a = predictor.predict_exam(exam).values
        b = predictor.predict_exam(raw[exam.exam_id]).values
        assert a == b


def test_ultrasound_validation_equals_predictor(tmp_path):
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.synthetic.ultrasound import generate_us_cohort
    from breastscreen.training.bag_dataset import collate_bags

    exams = generate_us_cohort(tmp_path / "c", 6, seed=3, max_images=3, prevalence=0.5, benign_prevalence=0.3)
    write_manifest(exams, tmp_path / "m.jsonl")
    task, ctx, member = _validation("us", str(tmp_path / "m.jsonl"), tmp_path / "run",
                                    ["model=us-mil-tiny", "recipe.input_size=64", "recipe.prepare_size=72"])
    predictor = Predictor([member])
    val = task.train_set.__class__(task.train_set.breasts, task.train_set.cache, task.spec, train=False)
    exams = read_manifest(tmp_path / "m.jsonl")
    by_id = {e.exam_id: e for e in exams}
    for i, breast in enumerate(val.breasts):
        from breastscreen.specs import prepare_bag

        kept, _ = prepare_bag(task.spec, by_id[breast.exam_id].views[breast.view])
        assert np.array_equal(val[i]["images"].numpy(), task.spec.tta_inputs(breast.breast_id, kept, 1)[0])
    assert collate_bags([val[0]])["images"].shape[0] == 1
    _check(task, ctx, predictor, exams)


def test_predictor_accepts_arrays_and_datasets_and_is_thread_safe(tmp_path):
    """Paths, numpy arrays and pydicom Datasets of the same pixels give the same prediction."""
    import concurrent.futures

    import pydicom

    from breastscreen.data.readers import load_image
    from breastscreen.synthetic.ultrasound import generate_us_cohort

    exams = generate_us_cohort(tmp_path / "d", 2, seed=8, max_images=2, fmt="dicom", prevalence=0.6, benign_prevalence=0.3)
    predictor = Predictor.load("us-busbra-mil")
    exam = exams[0]
    by_path = predictor.predict_exam(exam).values
    as_arrays = {v: [load_image(im.path).pixels for im in ims] for v, ims in exam.views.items()}
    as_datasets = {v: [pydicom.dcmread(im.path) for im in ims] for v, ims in exam.views.items()}
    assert predictor.predict_exam(as_arrays, exam_id=exam.exam_id).values == pytest.approx(by_path, abs=1e-6)
    assert predictor.predict_exam(as_datasets, exam_id=exam.exam_id).values == pytest.approx(by_path, abs=1e-6)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: predictor.predict_exam(exam).values, range(4)))
    assert all(r == by_path for r in results)
