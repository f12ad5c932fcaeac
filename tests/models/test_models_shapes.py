"""Published geometry (meta device, shape only), model behaviour and helper functions."""

from __future__ import annotations

import pytest
import torch

from breastscreen.labels import NYU_WINDOWS
from breastscreen.models import create_model
from breastscreen.models.allconv import init_allconv_from_patch
from breastscreen.models.lesion_agg import LesionAggConfig, embedding_map, location_indicator_map, stack_agg_inputs
from breastscreen.models.nyu_multiview import init_cancer_model_from_birads
from breastscreen.models.nyu_resnet22 import ResNet22, ResNet22Config, output_size

META = torch.device("meta")


def test_models_shapes_resnet22_full_resolution_meta() -> None:
    with META:
        col = ResNet22(ResNet22Config())
        cc = col(torch.empty(1, 1, *NYU_WINDOWS["CC"]))
        mlo = col(torch.empty(1, 1, *NYU_WINDOWS["MLO"]))
    assert tuple(cc.shape) == (1, 256, 42, 31)
    assert tuple(mlo.shape) == (1, 256, 47, 28)
    assert output_size(ResNet22Config(), *NYU_WINDOWS["CC"]) == (42, 31)


def test_models_shapes_full_nyu_model_meta() -> None:
    with META:
        model = create_model("nyu-viewwise-heatmaps").eval()
        views = {v: torch.empty(2, 3, *NYU_WINDOWS[v.split("-")[1]]) for v in ("L-CC", "R-CC", "L-MLO", "R-MLO")}
        out = model(views)
    assert tuple(out["probs"].shape) == (2, 4) and tuple(out["features"]["L-MLO"].shape) == (2, 256)


def test_models_shapes_saliency_46x30_meta() -> None:
    with META:
        model = create_model("gmic-global").eval()
        out = model(torch.empty(1, 1, 2944, 1920))
    assert tuple(out["saliency"].shape) == (1, 2, 46, 30) and tuple(out["probs"].shape) == (1, 2)


def test_models_shapes_mvdcn_full_resolution_no_skips() -> None:
    model = create_model("mvdcn")
    plan = model.columns["CC"].layer_plan(2600, 2000)
    assert all(action == "apply" for _, action, _ in plan)
    small = model.columns["CC"].layer_plan(325, 250)
    assert any(action == "skip" for _, action, _ in small)
    with META:
        out = create_model("mvdcn").eval()({v: torch.empty(1, 1, 2600, 2000) for v in ("L-CC", "R-CC", "L-MLO", "R-MLO")})
    assert tuple(out["probs"].shape) == (1, 3)


def test_models_shapes_mvdcn_reduced_scale_runs() -> None:
    torch.manual_seed(0)
    model = create_model("mvdcn", width_multiplier=0.125).eval()
    out = model({v: torch.randn(1, 1, 200, 160) for v in ("L-CC", "R-CC", "L-MLO", "R-MLO")})
    assert torch.isfinite(out["probs"]).all()


def test_models_shapes_ultrasound_saliency_8x8() -> None:
    torch.manual_seed(0)
    model = create_model("us-mil").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 1, 256, 256))
    assert tuple(out["saliency"].shape) == (1, 1, 2, 8, 8)
    assert torch.allclose(out["attention"], torch.ones(1, 1, 2))
    assert torch.allclose(out["probs"], out["image_probs"][:, 0])


def test_models_shapes_ultrasound_bags_1_to_20_padded() -> None:
    torch.manual_seed(0)
    model = create_model("us-mil-tiny").eval()
    sizes = list(range(1, 21))
    images = torch.randn(len(sizes), 20, 1, 32, 32)
    mask = torch.zeros(len(sizes), 20, dtype=torch.bool)
    for i, k in enumerate(sizes):
        mask[i, :k] = True
    with torch.no_grad():
        out = model(images, mask)
        single = model(images[4:5, :5], mask[4:5, :5])
    att = out["attention"]
    assert tuple(att.shape) == (20, 20, 2)
    assert torch.all(att[~mask] == 0)
    assert torch.allclose(att.sum(1), torch.ones(20, 2), atol=1e-6)
    assert torch.all(out["image_probs"][~mask] == 0)
    assert torch.allclose(out["probs"][4], single["probs"][0], atol=1e-6)
    with pytest.raises(ValueError, match="at least one image"):
        model(images[:1], torch.zeros(1, 20, dtype=torch.bool))


def test_models_shapes_noise_only_in_training() -> None:
    model = create_model("nyu-viewwise", num_filters=4)
    x = model.example_inputs(1)
    model.eval()
    a, b = model(**x)["probs"], model(**x)["probs"]
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model.noise(x["views"]["L-CC"])
    assert 0.005 < (c - x["views"]["L-CC"]).std() < 0.02


def test_models_shapes_flip_left_option() -> None:
    torch.manual_seed(0)
    plain = create_model("nyu-viewwise", num_filters=4).eval()
    flipping = create_model("nyu-viewwise", num_filters=4, flip_left=True).eval()
    flipping.load_state_dict(plain.state_dict())
    views = plain.example_inputs(1)["views"]
    flipped_views = {v: (x.flip(-1) if v.startswith("L-") else x) for v, x in views.items()}
    with torch.no_grad():
        assert torch.allclose(flipping(views)["probs"], plain(flipped_views)["probs"])
        assert not torch.allclose(flipping(views)["features"]["L-CC"], plain(views)["features"]["L-CC"])


def test_models_shapes_missing_view_handling() -> None:
    torch.manual_seed(0)
    model = create_model("nyu-viewwise", num_filters=4).eval()
    views = model.example_inputs(2)["views"]
    with torch.no_grad():
        full = model(views)
        no_rcc = model({k: v for k, v in views.items() if k != "R-CC"})
        masked = model(views, present={"R-CC": torch.tensor([False, True])})
    assert torch.equal(no_rcc["features"]["R-CC"], torch.zeros(2, model.feature_dim))
    assert torch.allclose(no_rcc["probs"], no_rcc["branch_probs"]["MLO"])  # CC branch ignored
    assert torch.allclose(masked["probs"][0], masked["branch_probs"]["MLO"][0])
    assert torch.allclose(masked["probs"][1], full["probs"][1])
    image = create_model("nyu-imagewise", num_filters=4).eval()
    with torch.no_grad():
        out = image({k: v for k, v in views.items() if k != "L-CC"})
    assert torch.allclose(out["probs"][:, :2], out["branch_probs"]["MLO"][:, :2])


def test_models_shapes_init_cancer_from_birads() -> None:
    birads = create_model("nyu-birads", num_filters=4)
    cancer = create_model("nyu-viewwise", num_filters=4, in_channels=3)
    copied = init_cancer_model_from_birads(cancer, birads)
    assert "columns.CC.first_conv.weight" in copied
    w_src = birads.columns["MLO"].first_conv.weight
    w_dst = cancer.columns["MLO"].first_conv.weight
    for c in range(3):
        assert torch.equal(w_dst[:, c], w_src[:, 0])
    assert torch.equal(cancer.columns["CC"].layers[2][1].conv2.weight, birads.columns["CC"].layers[2][1].conv2.weight)


def test_models_shapes_location_indicator_and_embedding_maps() -> None:
    box = torch.tensor([0.0, 0.0, 15.0, 10.0])  # rows 0-15, cols 0-10 of a 40x40 image
    loc = location_indicator_map(box, (40, 40), (4, 4))  # cells of 10x10
    expected = torch.zeros(4, 4)
    expected[0, 0], expected[1, 0] = 1.0, 0.5
    assert torch.allclose(loc, expected)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [5.0, 5.0, 15.0, 15.0]])
    locs = location_indicator_map(boxes, (40, 40), (4, 4))
    assert torch.allclose(locs[0], torch.ones(4, 4)) and torch.isclose(locs[1].sum(), torch.tensor(1.0))
    emb = torch.arange(6.0).view(2, 3)
    maps = embedding_map(emb, locs)
    assert maps.shape == (2, 3, 4, 4) and torch.equal(maps[1, :, 0, 0], emb[1]) and maps[1, 0, 3, 3] == 0
    cfg = LesionAggConfig(embedding_dim=3, grid_size=(4, 4))
    stacked = stack_agg_inputs(cfg, torch.rand(2, 2, 4, 4), locs, maps)
    assert stacked.shape == (2, 6, 4, 4)
    agg = create_model("lesion-agg", embedding_dim=3, grid_size=(4, 4)).eval()
    assert agg(stacked)["probs"].shape == (2, 4)
    loc_only = create_model("lesion-agg", use_saliency=False, use_embedding=False)
    assert loc_only.config.in_channels == 1


def test_models_shapes_allconv_init_from_patch() -> None:
    patch = create_model("resnet50-patch", layers=(1, 1), width=8)
    model = create_model("allconv-resnet50", trunk_overrides={"layers": (1, 1), "width": 8}, top_blocks=((8, 16, 1), (8, 16, 1)))
    copied = init_allconv_from_patch(model, patch)
    assert copied and torch.equal(model.patch.stem.conv.weight, patch.stem.conv.weight)
    heat = create_model("allconv-resnet50-heatmap", trunk_overrides={"layers": (1, 1), "width": 8}, top_blocks=((8, 16, 1), (8, 16, 1)))
    init_allconv_from_patch(heat, patch)
    x = torch.randn(1, 1, 64, 64)
    patch.eval(), heat.eval()
    with torch.no_grad():
        pooled_probs = patch(x)["probs"]
        hm = heat(x)["heatmap"]
    assert hm.shape == (1, 5, 8, 8) and torch.allclose(hm.sum(1), torch.ones(1, 8, 8), atol=1e-5)
    assert pooled_probs.shape == (1, 5)
    small = torch.randn(1, 1, 8, 8)  # a 1x1 feature map: the heatmap is the patch prediction
    with torch.no_grad():
        assert torch.allclose(heat(small)["heatmap"][:, :, 0, 0], patch(small)["probs"], atol=1e-6)


def test_models_shapes_grey_input_repeated() -> None:
    torch.manual_seed(0)
    grey = create_model("densenet-tiny").eval()
    rgb = create_model("densenet-tiny", in_channels=3).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(x)["logits"], rgb(x.repeat(1, 3, 1, 1))["logits"], atol=1e-6)
