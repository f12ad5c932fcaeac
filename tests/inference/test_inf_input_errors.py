"""User-input errors of `heatmaps`/`predict` are BreastscreenErrors (one-line CLI message), not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from breastscreen.errors import BreastscreenError
from breastscreen.inference.heatmap_runner import patch_classes, run_heatmaps
from breastscreen.models import create_model, load_checkpoint, save_checkpoint


def test_heatmaps_refuses_bad_counts_and_non_patch_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    patch = save_checkpoint(create_model("densenet-tiny"), tmp_path / "patch.safetensors", {"scale": 0.03})
    breast = save_checkpoint(create_model("nyu-viewwise", num_filters=4), tmp_path / "breast.safetensors", {})
    with pytest.raises(BreastscreenError, match=r"--batch-size: .*greater than or equal to 1 \(got 0\)"):
        run_heatmaps([], str(patch), tmp_path / "a", batch_size=0)
    with pytest.raises(BreastscreenError, match=r"--images-per-chunk: .*greater than or equal to 1 \(got -1\)"):
        run_heatmaps([], str(patch), tmp_path / "a", images_per_chunk=-1)
    with pytest.raises(BreastscreenError, match="is a breast model; heatmaps need a patch classifier"):
        run_heatmaps([], str(breast), tmp_path / "a", device="cpu")
    assert patch_classes(load_checkpoint(patch), "p") == ["malignant", "benign", "outside", "negative"]


def test_patch_classes_must_match_outputs_and_name_both_channels(tmp_path: Path) -> None:
    model = create_model("resnet-tiny-patch")  # 5 outputs (Shen 2019 classes)
    no_classes = load_checkpoint(save_checkpoint(model, tmp_path / "a.safetensors", {}))
    with pytest.raises(BreastscreenError, match="has 5 outputs but its class list has 4"):
        patch_classes(no_classes, "a.safetensors")
    five = ["background", "benign_mass", "malignant_mass", "benign_calc", "malignant_calc"]
    wrong = load_checkpoint(save_checkpoint(model, tmp_path / "b.safetensors", {"classes": five}))
    with pytest.raises(BreastscreenError, match="lack \\['benign', 'malignant'\\]"):
        patch_classes(wrong, "b.safetensors")
