"""Registry-wide checks: every registered model at a tiny size, exact parameter counts, errors."""

from __future__ import annotations

import pytest
import torch

from breastscreen.models import count_model_parameters, create_model, list_models, load_checkpoint, save_checkpoint
from breastscreen.models.registry import get_entry, model_names, register_model
from breastscreen.models.nyu_multiview import NYUMultiViewConfig, build_nyu_multiview


def _tensors(out, prefix=""):
    if torch.is_tensor(out):
        yield prefix, out
    elif isinstance(out, dict):
        for k, v in out.items():
            yield from _tensors(v, f"{prefix}.{k}")


def _check_contract(name: str, task: str, out: dict, batch: int) -> None:
    if task == "breast":
        assert out["probs"].shape == (batch, 4) and out["logits"].shape == (batch, 4, 2)
        assert set(out["features"]) == {"L-CC", "R-CC", "L-MLO", "R-MLO"}
        assert torch.allclose(torch.softmax(out["logits"], -1)[..., 1], out["probs"], atol=1e-5)
    elif task == "birads":
        assert out["probs"].shape == (batch, 3) and out["logits"].shape == (batch, 3)
        assert torch.allclose(out["probs"].sum(1), torch.ones(batch), atol=1e-5)
    elif task == "patch":
        n = 4 if name.startswith("densenet") else 5
        assert out["logits"].shape == (batch, n)
        if "embed" in name:
            assert out["embedding"].shape == (batch, 32)
    elif task == "saliency":
        assert out["saliency"].shape[:2] == (batch, 2) and out["probs"].shape == (batch, 2)
    elif task == "lesion":
        assert out["probs"].shape == (batch, 4)
    elif task == "image":
        assert out["probs"].shape == (batch, 2)
    elif task == "ultrasound":
        assert out["probs"].shape == (batch, 2) and out["attention"].dim() == 3
    else:
        raise AssertionError(f"unknown task {task}")


@pytest.mark.parametrize("name", model_names())
def test_models_registry_every_model_tiny(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    entry = get_entry(name)
    model = create_model(name, **entry.tiny_overrides)
    assert model.config is not None and model.model_name == name
    inputs = model.example_inputs(batch_size=2)
    model.train()
    out = model(**inputs)
    _check_contract(name, entry.task, out, 2)
    loss = 0.0
    for key, t in _tensors(out):
        assert torch.isfinite(t).all(), f"{name}: non-finite values in {key}"
        if t.is_floating_point():
            loss = loss + t.float().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        ref = model(**inputs)
    path = save_checkpoint(model, tmp_path / f"{name}.safetensors", {"input_size": [64, 64], "channels": 1})
    ckpt = load_checkpoint(path)
    assert ckpt.name == name and ckpt.metadata["channels"] == 1 and len(ckpt.sha256) == 64
    with torch.no_grad():
        again = ckpt.model(**inputs)
    for (k1, a), (k2, b) in zip(_tensors(ref), _tensors(again)):
        assert k1 == k2 and torch.equal(a, b), f"{name}: {k1} differs after reload"


def test_models_registry_exact_nyu_counts() -> None:
    assert count_model_parameters("nyu-viewwise-image") == 6_132_592
    assert count_model_parameters("nyu-viewwise-heatmaps") == 6_135_728
    assert count_model_parameters("nyu-viewwise", in_channels=3) == 6_135_728
    # torchvision-equivalent backbones (classifier swapped): DenseNet-121 7,978,856 - 1,025,000 + 4,100
    assert count_model_parameters("densenet121-patch") == 6_957_956
    assert count_model_parameters("resnet50-patch") == 23_508_032 + 2048 * 5 + 5
    assert count_model_parameters("vgg16-patch") == 14_714_688 + 512 * 5 + 5


def test_models_registry_heads_keep_1024_hidden() -> None:
    for name in ("nyu-viewwise", "nyu-imagewise", "nyu-breastwise", "nyu-joint"):
        model = create_model(name, num_filters=4)
        d = model.feature_dim
        total = sum(layer.out_features for layer in model.hidden.values())
        assert total == 4 * d, name  # 1,024 at full width (d = 256)


def test_models_registry_unknown_and_duplicate() -> None:
    with pytest.raises(KeyError, match="nyu-viewwise"):
        create_model("nyu-viewwize")
    with pytest.raises(ValueError, match="already registered"):
        register_model("nyu-viewwise", build_nyu_multiview, NYUMultiViewConfig(), "dup", "x", "breast")
    with pytest.raises(TypeError, match="no config field"):
        create_model("nyu-viewwise", nonsense=1)


def test_models_registry_list_models_info() -> None:
    infos = {i.name: i for i in list_models()}
    assert infos["nyu-viewwise-image"].params == 6_132_592
    assert "2677x1942" in infos["nyu-viewwise"].input_size
    assert all(i.description for i in infos.values())
