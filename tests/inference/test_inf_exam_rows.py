"""Lazy TTA rows (MultiViewSpec.exam_plan) and the NHWC layout of the Predictor agree with the exact path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from breastscreen import Predictor
from breastscreen.models import create_model, save_checkpoint
from breastscreen.preprocess.mammo import extract_window, standardize
from breastscreen.inference.predictor import default_batch_size
from breastscreen.specs import ImageSpec, MultiViewSpec, PreparedImage, USSpec, derive_seed

SCALE = 0.05
CHANNELS = ("image", "benign", "malignant")


def _image(seed: int, spec: MultiViewSpec, view: str) -> tuple[PreparedImage, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = spec.window_shape(view)
    pixels = rng.random((h + 20, w + 16)).astype(np.float32)
    record = {"scale": SCALE, "window": [4, 6, 4 + w, 6 + h], "mvdcn_window": [0, 0, w, h]}
    return PreparedImage(pixels, record), rng.random((2, h + 20, w + 16)).astype(np.float32)


def test_rows_taken_in_any_slices_equal_the_per_image_tta_copies() -> None:
    spec = MultiViewSpec(scale=SCALE, channels=CHANNELS)
    views, maps = {}, {}
    for i, (view, n) in enumerate((("L-CC", 2), ("R-CC", 1), ("L-MLO", 3))):  # R-MLO missing
        pairs = [_image(10 * i + k, spec, view) for k in range(n)]
        views[view], maps[view] = [p for p, _ in pairs], [m for _, m in pairs]
    n_tta = 3
    inputs, present = spec.exam_rows("E7", views, maps, n_tta=n_tta, seed=4)
    assert {v: x.shape[0] for v, x in inputs.items()} == {v: 9 for v in inputs}  # 3 combinations x 3 copies
    assert present["R-MLO"].tolist() == [False] * 9 and not inputs["R-MLO"].any()
    # row r = copy r % 3 of image (r // 3) % n, drawn from that image's own seed, as documented
    for view, images in views.items():
        per_image = [spec.view_inputs(im, view, maps[view][k], n=n_tta,
                                      rng=np.random.default_rng(derive_seed(4, "E7", view, k)))
                     for k, im in enumerate(images)]
        for r in range(9):
            assert np.array_equal(inputs[view][r], per_image[(r // n_tta) % len(images)][r % n_tta])
    assert not np.array_equal(inputs["L-CC"][0], inputs["L-CC"][1])  # copy 1 is jittered
    plan = spec.exam_plan("E7", views, maps, n_tta=n_tta, seed=4)
    for size in (1, 2, 4):
        parts = [plan.take(slice(s, s + size)) for s in range(0, plan.rows, size)]
        for view in inputs:
            assert np.array_equal(np.concatenate([p[0][view] for p in parts]), inputs[view])
            assert np.array_equal(np.concatenate([p[1][view] for p in parts]), present[view])


def test_training_draw_is_one_row_per_view() -> None:
    spec = MultiViewSpec(scale=SCALE, channels=CHANNELS)
    image, maps = _image(1, spec, "L-CC")
    a, pa = spec.exam_rows("E1", {"L-CC": [image, image]}, {"L-CC": [maps, maps]}, rng=np.random.default_rng(3))
    b, _ = spec.exam_rows("E1", {"L-CC": [image, image]}, {"L-CC": [maps, maps]}, rng=np.random.default_rng(3))
    assert a["L-CC"].shape == (1, 3, *spec.window_shape("L-CC")) and pa["L-CC"].tolist() == [True]
    assert pa["R-CC"].tolist() == [False] and np.array_equal(a["L-CC"], b["L-CC"])
    # the generator drives the image choice, then one window draw applied to image and maps alike
    rng = np.random.default_rng(3)
    assert int(rng.integers(2)) in (0, 1)
    jitter = spec._transform(spec.base_window(image, "L-CC"), True)
    copy = jitter({"image": image.pixels, "maps": maps}, rng)
    assert np.array_equal(a["L-CC"][0, 0], standardize(copy["image"]))
    assert np.array_equal(a["L-CC"][0, 1:], np.clip(copy["maps"], 0, 1))
    assert not np.array_equal(a["L-CC"][0, 0], standardize(extract_window(image.pixels, spec.base_window(image, "L-CC"))))


@pytest.mark.parametrize("name,kw", [("nyu-viewwise-heatmaps", {"num_filters": 4}),
                                     ("gmic-global", {"num_filters": 4})])
def test_channels_last_and_batch_size_do_not_change_predictions(tmp_path: Path, name: str, kw: dict) -> None:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    exam = generate_mammo_cohort(tmp_path / "raw", 1, seed=3, scale=0.03)[0]
    torch.manual_seed(0)
    model = create_model(name, **kw)
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors", {"scale": 0.03})
    heat = None
    if name.endswith("heatmaps"):
        rng = np.random.default_rng(0)
        cache: dict = {}

        def heat(exam_id: str, view: str, k: int, prepared: PreparedImage) -> np.ndarray:
            return cache.setdefault((view, k), rng.random((2, *prepared.pixels.shape)).astype(np.float32))
    ref = Predictor.load(str(ckpt), tta=3, seed=1, batch_size=8, channels_last=False).predict_exam(exam, heatmaps=heat)
    assert Predictor.load(str(ckpt), tta=3).batch_size == (1 if name.startswith("nyu") else 8)  # CPU defaults
    for bs in (1, 2):
        p = Predictor.load(str(ckpt), tta=3, seed=1, batch_size=bs)
        assert p.channels_last
        got = p.predict_exam(exam, heatmaps=heat)
        assert got.values.keys() == ref.values.keys()
        for c, v in ref.values.items():
            assert got.values[c] == pytest.approx(v, abs=1e-5), (bs, c)
    assert any(abs(v - 0.5) > 1e-4 for v in ref.values.values() if v is not None)  # a real, non-constant model


def test_default_batch_size_is_one_row_for_mammography_on_cpu_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_batch_size(MultiViewSpec(), cpu) == 1 and default_batch_size(ImageSpec(), cpu) == 8
    assert default_batch_size(MultiViewSpec(), cuda) == 8 and default_batch_size(USSpec(), cpu) == 8


def test_one_patch_batch_default_for_every_heatmap_caller(tmp_path: Path) -> None:
    from breastscreen.inference.engines import default_patch_batch_size
    from breastscreen.inference.options import PredictOptions
    from breastscreen.serve.config import ServeConfig

    assert default_patch_batch_size("cpu") == 16 and default_patch_batch_size(torch.device("cpu")) == 16
    assert default_patch_batch_size("cuda:1") == 256 and default_patch_batch_size(torch.device("cuda", 0)) == 256
    assert PredictOptions().patch_batch_size is None and PredictOptions().batch_size is None
    torch.manual_seed(0)
    breast = save_checkpoint(create_model("nyu-viewwise-heatmaps", num_filters=4), tmp_path / "b.safetensors",
                             {"scale": 0.03})
    patch = save_checkpoint(create_model("densenet-tiny"), tmp_path / "p.safetensors", {"scale": 0.03})
    p = Predictor.load(str(breast), patch_model=str(patch))
    assert p.patch_batch_size == 16 and p.batch_size == 1
    assert Predictor.load(str(breast), patch_model=str(patch), patch_batch_size=5).patch_batch_size == 5
    assert "patch_batch_size" in ServeConfig.model_fields and ServeConfig.model_fields["patch_batch_size"].default is None


def test_ensemble_members_see_the_same_rows_as_alone(tmp_path: Path) -> None:
    from breastscreen.synthetic.mammo import generate_mammo_cohort

    exam = generate_mammo_cohort(tmp_path / "raw", 1, seed=4, scale=0.03)[0]
    paths = []
    for i in range(2):
        torch.manual_seed(10 + i)
        paths.append(str(save_checkpoint(create_model("nyu-viewwise-image", num_filters=4),
                                         tmp_path / f"m{i}.safetensors", {"scale": 0.03})))
    both = Predictor.load(paths, tta=3, seed=2, batch_size=2).predict_exam(exam)
    for i, path in enumerate(paths):
        alone = Predictor.load(path, tta=3, seed=2, batch_size=2).predict_exam(exam)
        assert both.details["members"][i]["probs"] == pytest.approx(list(alone.values.values()), abs=1e-6)
    assert both.details["members"][0]["probs"] != pytest.approx(both.details["members"][1]["probs"], abs=1e-4)
