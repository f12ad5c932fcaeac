"""Every heatmap backend, precision and mode against the exact torch fp32 result on a tiny model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.inference import engines
from breastscreen.inference.engines import EngineOptions, build_engine, check_engine_options
from breastscreen.inference.fullconv import coverage_weights, fullconv_logits, trunk_features
from breastscreen.inference.heatmaps import SlidingWindowHeatmapper
from breastscreen.inference.strides import window_offsets
from breastscreen.models import create_model

PATCH = 32


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("densenet-tiny").eval()
    # Non-trivial batch-norm statistics, as a trained model has, so that the paths can disagree.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _image(seed: int = 1, shape: tuple[int, int] = (70, 58)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    img[:, shape[1] * 2 // 3:] = -2.0  # background strip
    mask = np.zeros(shape, dtype=np.uint8)
    mask[:, : shape[1] * 2 // 3] = 1
    return img, mask


def _heatmap(model: torch.nn.Module, **kwargs: object) -> np.ndarray:
    img, mask = _image()
    inferer = SlidingWindowHeatmapper(model, PATCH, 9, batch_size=5, standardize=False, **kwargs)
    return inferer.heatmaps([img], [mask] if kwargs.get("skip_background") else None)[0].maps


def _has(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


CASES = [
    ("torch", "fp32", True, 1e-5),
    ("onnxruntime", "fp32", False, 1e-5),
    ("openvino", "fp32", False, 1e-5),
]


@pytest.mark.parametrize("backend,precision,channels_last,tol", CASES)
def test_backend_matches_exact(backend: str, precision: str, channels_last: bool, tol: float) -> None:
    if backend != "torch" and not _has(backend):
        pytest.skip(f"{backend} not installed (pip install 'breastscreen[fast]')")
    model = _model()
    exact = _heatmap(model)
    fast = _heatmap(model, backend=backend, precision=precision, channels_last=channels_last)
    assert fast.shape == exact.shape
    assert np.abs(fast - exact).max() <= tol
    # the checkpoint's own module is not converted by the channels_last copy
    assert next(model.parameters()).is_contiguous()


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_close_to_exact(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend != "torch" and not _has(backend):
        pytest.skip(f"{backend} not installed")
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: True)
    model = _model()
    exact = _heatmap(model)
    fast = _heatmap(model, backend=backend, precision="bf16", channels_last=backend == "torch")
    diff = np.abs(fast - exact).max()
    # bf16 keeps ~3 significant digits: close, but not bit-equal
    assert 0.0 < diff <= 0.02


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_close_to_exact_and_deterministic(backend: str) -> None:
    if not _has(backend):
        pytest.skip(f"{backend} not installed")
    model = _model()
    exact = _heatmap(model)
    fast = _heatmap(model, backend=backend, precision="int8")
    diff = np.abs(fast - exact).max()
    # int8 calibrated on phantom windows, run on noise: further from fp32 than bf16 (measured
    # 0.014 / r 0.989 onnxruntime, 0.026 / r 0.975 openvino), but the same map
    assert 0.0 < diff <= 0.04
    assert np.corrcoef(fast.ravel(), exact.ravel())[0, 1] > 0.95
    # the default calibration is fixed, so a second engine gives the same maps bit for bit
    np.testing.assert_array_equal(_heatmap(model, backend=backend, precision="int8"), fast)


def test_int8_engine_describes_its_calibration_and_checks_windows() -> None:
    if not _has("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    model = _model()
    windows = torch.randn(8, 1, PATCH, PATCH)
    engine = build_engine(model, in_channels=1, patch=PATCH, backend="onnxruntime", precision="int8",
                          calibration=windows)
    info = engine.describe()
    assert (info["precision"], info["calibration"]["windows"], info["calibration"]["source"]) == (
        "int8", 8, "caller's windows")
    x = torch.randn(3, 1, PATCH, PATCH)
    ref = torch.softmax(model(x)["logits"], 1)
    assert torch.softmax(engine(x), 1).sub(ref).abs().max() < 0.05
    with pytest.raises(BreastscreenError, match=r"calibration windows must be \[N, 1 or 3, 32, 32\]"):
        build_engine(model, in_channels=3, patch=PATCH, backend="onnxruntime", precision="int8",
                     calibration=torch.zeros(4, 2, PATCH, PATCH))


def test_synthetic_calibration_windows_are_fixed_tissue_windows() -> None:
    from breastscreen.inference.heatmaps import prepare_image
    from breastscreen.preprocess.mammo import preprocess_view
    from breastscreen.synthetic._mammo_phantom import draw_exam
    from breastscreen.synthetic._mammo_render import render_view

    a = engines.synthetic_calibration_windows(PATCH, 12)
    assert a.shape == (12, 1, PATCH, PATCH) and a.dtype == np.float32
    np.testing.assert_array_equal(a, engines.synthetic_calibration_windows(PATCH, 12))
    assert not np.array_equal(a, engines.synthetic_calibration_windows(PATCH, 12, seed=1))
    # Each window is cut out of the phantom preprocessed like every heatmap input (not the raw
    # render) at a quarter-patch stride, and contains breast tissue.
    view = render_view(draw_exam(0, 0, prevalence=1.0, benign_prevalence=1.0), "L-CC", PATCH / 256)
    pre = preprocess_view(view.pixels.astype(np.float32), (view.spacing_mm,) * 2, "L-CC", PATCH / 256)
    image = prepare_image(pre.image, PATCH)
    mask = np.pad(pre.mask > 0, ((0, image.shape[0] - pre.mask.shape[0]), (0, image.shape[1] - pre.mask.shape[1])))
    stride = PATCH // 4
    for w in a[:, 0]:
        hits = [(r, c) for r in window_offsets(pre.image.shape[0], PATCH, stride)
                for c in window_offsets(pre.image.shape[1], PATCH, stride)
                if np.array_equal(image[r:r + PATCH, c:c + PATCH], w)]
        assert hits and any(mask[r:r + PATCH, c:c + PATCH].any() for r, c in hits)
    # the background sits where the heatmapper's inputs put it, below the raw render's standardised level
    raw = prepare_image(view.pixels.astype(np.float32), PATCH)
    assert a.min() == pytest.approx(float(image.min())) and image.min() < raw.min() - 0.2


def test_bf16_falls_back_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    engine = build_engine(_model(), in_channels=1, patch=PATCH, precision="bf16")
    assert engine.precision == "fp32" and "no native bf16" in engine.note
    x = torch.randn(3, 1, PATCH, PATCH)
    ref = _model()(x)["logits"]
    assert torch.equal(engine(x), ref.detach())


def test_skip_background_same_inside_breast_with_fast_engine() -> None:
    model = _model()
    _, mask = _image()
    full = _heatmap(model, channels_last=True)
    skipped = _heatmap(model, channels_last=True, skip_background=True)
    inside = mask > 0
    assert np.abs(full[:, inside] - skipped[:, inside]).max() <= 1e-6


def test_bad_engine_options_are_one_line_errors() -> None:
    with pytest.raises(BreastscreenError, match="--backend must be one of"):
        check_engine_options("tensorrt", "fp32")
    with pytest.raises(BreastscreenError, match="onnxruntime runs fp32 or int8"):
        check_engine_options("onnxruntime", "bf16")
    with pytest.raises(BreastscreenError, match="int8 runs on --backend openvino or onnxruntime"):
        check_engine_options("torch", "int8")
    with pytest.raises(BreastscreenError, match="int8 runs on --backend openvino"):
        check_engine_options("torch", "int8", "fullconv")
    check_engine_options("openvino", "int8", "fullconv")  # the compiled preview may be quantised
    with pytest.raises(BreastscreenError, match="fullconv runs the torch or openvino backend"):
        check_engine_options("onnxruntime", "fp32", "fullconv")
    with pytest.raises(BreastscreenError, match="--precision must be one of"):
        check_engine_options("torch", "int4")


def test_engine_options_round_trip() -> None:
    opts = EngineOptions(backend="openvino", precision="bf16", mode="exact")
    assert opts.kwargs() == {"backend": "openvino", "precision": "bf16", "channels_last": False,
                             "mode": "exact", "tile": None, "refine": 0.0}


# ------------------------------------------------------------------ fully-convolutional preview


def test_coverage_weights_values() -> None:
    w = coverage_weights(np.array([0, 12]), 32, 4, 16.0)
    # window [0, 32): cells 0 and 1 fully; window [12, 44): 4/32 of cell 0, 16/32 of cell 1, 12/32 of cell 2
    np.testing.assert_allclose(w, [[0.5, 0.5, 0, 0], [4 / 32, 0.5, 12 / 32, 0]], atol=1e-7)
    # a window past the last cell is renormalised over the cells it reaches
    np.testing.assert_allclose(coverage_weights(np.array([40]), 32, 3, 16.0), [[0, 0, 1.0]], atol=1e-7)


def test_fullconv_equals_exact_for_one_window_on_the_cell_grid() -> None:
    # One window covering the whole image: the trunk sees exactly the window and GAP pools every
    # cell, so the preview must equal the patch-wise network.
    model = _model()
    x = torch.randn(1, 64, 64)
    logits = fullconv_logits(model, x, np.array([0]), np.array([0]), 64, in_channels=1)
    ref = model(x[None])["logits"]
    torch.testing.assert_close(logits[0, 0], ref[0].detach(), atol=1e-5, rtol=1e-5)


def test_fullconv_tiles_equal_one_pass() -> None:
    model = _model()
    x = torch.randn(1, 200, 48)
    whole, s1 = trunk_features(model, x, 1)
    tiled, s2 = trunk_features(model, x, 1, tile=40, margin=96)
    assert s1 == s2 == 8.0
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_fullconv_preview_is_close_but_not_exact() -> None:
    model = _model()
    exact = _heatmap(model)
    preview = _heatmap(model, mode="fullconv")
    assert preview.shape == exact.shape
    diff = np.abs(preview - exact)
    r = np.corrcoef(preview.ravel(), exact.ravel())[0, 1]
    assert diff.max() > 1e-4  # context beyond each window leaks in: a preview, not the exact map
    assert r > 0.5


def test_fullconv_refuses_models_without_a_trunk() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match="forward_features/head"):
        SlidingWindowHeatmapper(model, PATCH, 9, mode="fullconv")


def test_window_offsets_used_by_preview_cover_image() -> None:
    offs = window_offsets(70, PATCH, 9)
    assert offs[0] == 0 and offs[-1] + PATCH == 70


def test_fullconv_refine_all_windows_is_the_exact_heatmap() -> None:
    model = _model()
    exact = _heatmap(model, skip_background=True)
    refined = _heatmap(model, mode="fullconv", refine=1.0, skip_background=True)
    np.testing.assert_allclose(refined, exact, atol=1e-6)


def test_fullconv_refine_replaces_the_most_probable_windows_only() -> None:
    model = _model()
    img, mask = _image()
    kw = dict(batch_size=4, standardize=False, skip_background=True, mode="fullconv")
    preview = SlidingWindowHeatmapper(model, PATCH, 9, **kw)
    part = SlidingWindowHeatmapper(model, PATCH, 9, refine=0.25, **kw)
    a = preview.heatmaps([img], [mask])[0].maps
    b = part.heatmaps([img], [mask])[0].maps
    exact = _heatmap(model, skip_background=True)
    inside = mask > 0
    # closer to the exact map than the plain preview, but not equal to it
    assert np.abs(b - exact)[:, inside].mean() < np.abs(a - exact)[:, inside].mean()
    assert np.abs(b - exact).max() > 1e-6
    with pytest.raises(ValueError, match="refine must be a fraction"):
        SlidingWindowHeatmapper(model, PATCH, 9, mode="fullconv", refine=1.5)


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("int8", 0.04)])
def test_fullconv_on_openvino_matches_the_torch_preview(precision: str, tol: float) -> None:
    if not _has("openvino") or (precision == "int8" and not _has("nncf")):
        pytest.skip("openvino/nncf not installed")
    model = _model()
    preview = _heatmap(model, mode="fullconv", skip_background=True)
    compiled = _heatmap(model, mode="fullconv", backend="openvino", precision=precision, skip_background=True)
    diff = np.abs(compiled - preview).max()
    assert diff <= tol
    if precision == "fp32":
        # refining every window with the compiled window engine gives the exact heatmap
        exact = _heatmap(model, skip_background=True)
        refined = _heatmap(model, mode="fullconv", backend="openvino", refine=1.0, skip_background=True)
        np.testing.assert_allclose(refined, exact, atol=1e-5)
    else:
        assert diff > 0.0  # quantised: close to, not equal to, the fp32 preview
