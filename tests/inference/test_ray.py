"""`heatmaps` and `predict` with --ray: same files as a single-process run, resume, retries (local Ray, 2 CPUs).

Skipped where Ray is not installed (`make test` installs the `ray` extra); the missing-Ray
message and the option checks run everywhere.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.errors import BreastscreenError
from breastscreen.labels import PATCH_CLASSES
from breastscreen.inference.ray_runner import FAULT_ENV, RAY_MISSING, RayOptions, RayWorkError
from breastscreen.models import create_model, save_checkpoint

SCALE = 0.03


def _have_ray() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: a test blanked sys.modules["ray"]
        return False


HAVE_RAY = _have_ray()
# Tests that need Ray are also marked slow: a local Ray and its worker processes take tens of
# seconds to start on a 2-core machine.
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'breastscreen[ray]')")


# --------------------------------------------------------------------------- without Ray


def test_missing_ray_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    from breastscreen.cli import main

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setattr("sys.argv", ["breastscreen", "heatmaps", str(tmp_path / "m.jsonl"), "--model", "demo-patch",
                                     "--out", str(tmp_path / "out"), "--ray"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {RAY_MISSING}"
    assert not (tmp_path / "out").exists()


def test_ray_option_checks() -> None:
    from breastscreen.inference.cli import ray_options

    assert ray_options(False, None, None, 0.0) is None
    with pytest.raises(BreastscreenError, match="need --ray"):
        ray_options(False, None, 2, 0.0)
    with pytest.raises(BreastscreenError, match="local Ray only"):
        RayOptions(address="auto", num_cpus=2)
    with pytest.raises(BreastscreenError, match="--ray-cpus must be >= 1"):
        RayOptions(num_cpus=0)


def test_unreachable_cluster_fails_fast() -> None:
    from breastscreen.inference.ray_runner import check_reachable

    with socket.socket() as free:  # a loopback port that nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    match = rf"could not connect to Ray at ray://127.0.0.1:{port}: .*ray start --head"
    with pytest.raises(BreastscreenError, match=match):
        check_reachable(f"ray://127.0.0.1:{port}", timeout=2)
    check_reachable("auto")  # left to Ray


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module; the code under test reuses it instead of starting its own."""
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'breastscreen[ray]')")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 synthetic exams (12 images): raw and preprocessed manifests, the latter with one unreadable image."""
    from breastscreen.data.manifest import read_manifest, write_manifest
    from breastscreen.preprocess.pipeline import preprocess_manifest
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    root = tmp_path_factory.mktemp("ray_cohort")
    generate_mammo_cohort(root / "raw", 3, seed=5, scale=SCALE)
    preprocess_manifest(read_manifest(root / "raw" / "manifest.jsonl"), root / "pre", scale=SCALE)
    exams = read_manifest(root / "pre" / "manifest.jsonl")
    bad = root / "pre" / "garbage.png"
    bad.write_bytes(b"\x89PNG not really")
    exams[1].views["R-MLO"][0].path = str(bad)
    write_manifest(exams, root / "pre" / "with_bad.jsonl")
    return {"raw": root / "raw" / "manifest.jsonl", "pre": root / "pre" / "with_bad.jsonl"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ray_models")
    torch.manual_seed(0)
    patch = save_checkpoint(create_model("densenet-tiny"), root / "patch.safetensors", {"scale": SCALE})
    torch.manual_seed(1)
    heat = save_checkpoint(create_model("nyu-viewwise-heatmaps", num_filters=4), root / "heat.safetensors",
                           {"scale": SCALE})
    return {"patch": str(patch), "heat": str(heat)}


def _heatmaps(cohort: dict, models: dict, out: Path, **kw):
    from breastscreen.inference.heatmap_runner import run_heatmaps

    return run_heatmaps(cohort["pre"], models["patch"], out, device="cpu", images_per_chunk=3, **kw)


def _predict(cohort: dict, models: dict, out: Path, **kw):
    from breastscreen.inference.predict import PredictOptions, predict

    opts = {"device": "cpu", "pictures": False, "patch_model": models["patch"]} | kw.pop("opts", {})
    return predict(cohort["raw"], [models["heat"]], out, PredictOptions(**opts), **kw)


def _same_heatmap_files(a: Path, b: Path, own_images: tuple[Path, Path] | None = None) -> None:
    """Same heatmap files; ``own_images``: the two runs preprocessed into these folders (paths, times differ)."""
    from breastscreen.data.heatmaps import read_heatmap_file

    names = sorted(p.name for p in a.glob("*.npz"))
    assert names and names == sorted(p.name for p in b.glob("*.npz"))
    for name in names:
        maps_a, meta_a = read_heatmap_file(a / name)
        maps_b, meta_b = read_heatmap_file(b / name)
        assert np.array_equal(maps_a, maps_b), name
        if own_images:
            meta_a, meta_b = (json.dumps({k: v for k, v in m.items() if k != "image_mtime_ns"}).replace(str(d), "OUT")
                              for m, d in zip((meta_a, meta_b), own_images))
        assert meta_a == meta_b, name


def _same_predictions(a: Path, b: Path) -> None:
    for name in ("predictions.csv", "errors.csv", "predictions.jsonl", "run.json"):
        text_a = (a / name).read_text().replace(str(a), "OUT")
        assert text_a == (b / name).read_text().replace(str(b), "OUT"), name
    results = sorted(p.name for p in (a / "exam_results").glob("*.json"))
    assert results == sorted(p.name for p in (b / "exam_results").glob("*.json"))
    for name in results:
        # The fingerprint hashes file paths and times, which differ between two output folders.
        rec_a, rec_b = (json.loads((d / "exam_results" / name).read_text()) for d in (a, b))
        assert rec_a.pop("fingerprint") and rec_b.pop("fingerprint")
        assert rec_a == rec_b, name


@pytest.fixture(scope="module")
def single(cohort: dict, models: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The single-process outputs every Ray run is compared with."""
    root = tmp_path_factory.mktemp("single")
    _heatmaps(cohort, models, root / "hm")
    _predict(cohort, models, root / "pred")
    return {"hm": root / "hm", "pred": root / "pred"}


# --------------------------------------------------------------------------- with Ray


@needs_ray
@pytest.mark.slow
def test_heatmaps_cli_ray_equals_single_process_and_resume(ray_local, cohort: dict, models: dict, single: dict,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "hm"
    args = ["heatmaps", str(cohort["pre"]), "--model", models["patch"], "--out", str(out), "--device", "cpu",
            "--images-per-chunk", "3", "--ray"]
    with caplog.at_level(logging.WARNING, logger="breastscreen"):
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # the unreadable image, as without --ray
    assert "11 computed, 0 reused, 1 failed" in res.output
    assert not [r for r in caplog.records if "resubmitted" in r.message]  # a bad image is not retried
    _same_heatmap_files(single["hm"], out)
    for name in ("heatmaps.jsonl", "errors.csv"):
        assert (out / name).read_bytes() == (single["hm"] / name).read_bytes(), name
    rows = list(csv.DictReader(open(out / "errors.csv")))
    assert len(rows) == 1 and rows[0]["path"].endswith("garbage.png")
    assert (out / "manifest.jsonl").read_text().replace(str(out.resolve()), "OUT") == \
        (single["hm"] / "manifest.jsonl").read_text().replace(str(single["hm"].resolve()), "OUT")

    # Resume after one file is lost: only that one is made again, the others are not touched.
    lost = sorted(out.glob("*.npz"))[4]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz") if p != lost}
    lost.unlink()
    run = _heatmaps(cohort, models, out, resume=True, ray=RayOptions())
    assert run.computed == [lost.name] and len(run.reused) == 10
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz") if p != lost} == mtimes
    _same_heatmap_files(single["hm"], out)


@needs_ray
@pytest.mark.slow
def test_predict_ray_equals_single_process_and_resume(ray_local, cohort: dict, models: dict, single: dict,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "pred"
    run = _predict(cohort, models, out, ray=RayOptions())
    assert run.ok and len(run.predictions) == 3
    _same_predictions(single["pred"], out)
    # --patch-model heatmaps are made on Ray too.
    _same_heatmap_files(single["pred"] / "heatmaps", out / "heatmaps", (single["pred"], out))

    lost = sorted((out / "exam_results").glob("*.json"))[1]
    lost.unlink()
    seen: list[str] = []
    _predict(cohort, models, out, ray=RayOptions(), resume=True,
             progress=lambda stage, exam: seen.append(exam) if stage == "predict" else None)
    assert seen == [lost.stem]
    _same_predictions(single["pred"], out)


@needs_ray
@pytest.mark.slow
def test_predict_bad_exam_reported_not_retried(ray_local, cohort: dict, models: dict, single: dict,
                                               tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    maps = tmp_path / "maps"
    shutil.copytree(single["pred"] / "heatmaps", maps)
    missing = sorted(maps.glob("*_L-MLO_0.npz"))[0]
    missing.unlink()  # the worker cannot read this exam's heatmaps: a problem of the exam's data
    opts = {"patch_model": None, "heatmaps_dir": str(maps)}
    ref = _predict(cohort, models, tmp_path / "a", opts=opts)
    with caplog.at_level(logging.WARNING, logger="breastscreen"):
        run = _predict(cohort, models, tmp_path / "b", opts=opts, ray=RayOptions())
    assert len(run.errors) == 1 and "heatmap file missing" in run.errors[0][1]
    assert [p.exam_id for p in run.predictions] == [p.exam_id for p in ref.predictions] and len(ref.predictions) == 2
    assert not [r for r in caplog.records if "resubmitted" in r.message]
    _same_predictions(tmp_path / "a", tmp_path / "b")


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_failed_worker_is_retried(ray_local, cohort: dict, models: dict, single: dict, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str) -> None:
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAULT_ENV, f"{mode}:{marker}")
    with caplog.at_level(logging.WARNING, logger="breastscreen"):
        run = _predict(cohort, models, tmp_path / "pred", ray=RayOptions())
    assert marker.exists()  # the failure did happen
    assert run.ok and len(run.predictions) == 3
    _same_predictions(single["pred"], tmp_path / "pred")
    _same_heatmap_files(single["pred"] / "heatmaps", tmp_path / "pred" / "heatmaps",
                        (single["pred"], tmp_path / "pred"))
    resubmitted = [r for r in caplog.records if "resubmitted" in r.message]
    # A dying worker is retried by Ray itself; an error raised in a worker is resubmitted by the driver.
    assert len(resubmitted) == (1 if mode == "raise" else 0)


@needs_ray
@pytest.mark.slow
def test_retries_are_bounded(ray_local, cohort: dict, models: dict, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, f"raise:{tmp_path / 'failed-once'}")
    with pytest.raises(RayWorkError, match="heatmap chunk .* failed in 1 attempts.*injected"):
        _heatmaps(cohort, models, tmp_path / "hm", ray=RayOptions(max_retries=0))


@needs_ray
@pytest.mark.slow
def test_other_checkpoint_on_a_worker_stops_the_run(ray_local, cohort: dict, models: dict) -> None:
    from breastscreen.data.manifest import read_manifest
    from breastscreen.inference.heatmap_runner import heatmap_items
    from breastscreen.inference.ray_runner import HeatmapJob, map_heatmap_chunks

    items = heatmap_items(read_manifest(cohort["pre"]))[:2]
    job = HeatmapJob(model_ref=models["patch"], sha256="0" * 64, patch=8, stride=2, batch_size=64, device="cpu",
                     amp=None, skip_background=False, class_names=PATCH_CLASSES)
    with pytest.raises(BreastscreenError, match="every node must see the same model files"):
        list(map_heatmap_chunks(RayOptions(), job, [("chunk0", items)]))
