"""Checkpoint IO, failure modes, conversion tables, pretrained loading, bundled models and CLI."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.errors import CheckpointError
from breastscreen.models import (
    convert_state_dict,
    create_model,
    load_checkpoint,
    load_pretrained_backbone,
    resolve_model_ref,
    save_checkpoint,
)
from breastscreen.models.checkpoint import file_sha256, read_header


@pytest.fixture()
def tiny_nyu():
    torch.manual_seed(0)
    return create_model("nyu-viewwise", num_filters=4).eval()


def test_models_checkpoint_header_and_metadata(tiny_nyu, tmp_path) -> None:
    meta = {"input_size": {"CC": [128, 96]}, "channels": 1, "normalisation": "standardize", "views": ["L-CC"],
            "scale": 0.05, "training_data": "synthetic", "validation_metrics": {"auc": 0.9}}
    path = save_checkpoint(tiny_nyu, tmp_path / "m.safetensors", meta)
    header = read_header(path)
    assert header["model_name"] == "nyu-viewwise" and header["config"]["num_filters"] == 4
    assert header["metadata"] == meta and header["package_version"]
    ck = load_checkpoint(path)
    assert ck.sha256 == file_sha256(path) and ck.config == tiny_nyu.config
    assert not ck.model.training


def test_models_checkpoint_pt_roundtrip(tiny_nyu, tmp_path) -> None:
    path = save_checkpoint(tiny_nyu, tmp_path / "m.pt", {"channels": 1})
    ck = load_checkpoint(path)
    x = tiny_nyu.example_inputs(1)
    with torch.no_grad():
        assert torch.equal(ck.model(**x)["probs"], tiny_nyu(**x)["probs"])
    plain = tmp_path / "plain.pth"
    torch.save(tiny_nyu.state_dict(), plain)
    with pytest.raises(CheckpointError, match="give the model name"):
        load_checkpoint(plain)
    ck2 = load_checkpoint(plain, model_name="nyu-viewwise", config={"num_filters": 4})
    assert ck2.name == "nyu-viewwise"


def test_models_checkpoint_wrong_key_and_shape(tiny_nyu, tmp_path) -> None:
    sd = {k: v.contiguous() for k, v in tiny_nyu.state_dict().items()}
    header = json.dumps({"format_version": 1, "model_name": "nyu-viewwise", "config": {"num_filters": 4},
                         "package_version": "0", "metadata": {}})
    renamed = dict(sd)
    renamed["hidden.CC.weightX"] = renamed.pop("hidden.CC.weight")
    save_file(renamed, str(tmp_path / "key.safetensors"), metadata={"breastscreen": header})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "key.safetensors")
    assert "missing keys (1): hidden.CC.weight" in str(err.value)
    assert "unexpected keys (1): hidden.CC.weightX" in str(err.value)

    reshaped = dict(sd)
    reshaped["output.MLO.bias"] = torch.zeros(9)
    save_file(reshaped, str(tmp_path / "shape.safetensors"), metadata={"breastscreen": header})
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): output.MLO.bias: checkpoint \(9,\) vs model \(8,\)"):
        load_checkpoint(tmp_path / "shape.safetensors")


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_models_checkpoint_malicious_pickle_executes_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"state_dict": _Evil(str(marker))}, fh, protocol=2)
    torch.save({"x": _Evil(str(marker))}, tmp_path / "evil_zip.pth")
    assert not marker.exists()
    for path in (bad, tmp_path / "evil_zip.pth"):
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(path, model_name="nyu-viewwise")
    assert not marker.exists()


def test_models_checkpoint_missing_and_bad_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


def _nyu_reference_names(model) -> dict[str, torch.Tensor]:
    """The published breast_cancer_classifier names for our view-wise model (built by hand)."""
    out = {}
    inv_perm = (0, 2, 1, 3)  # NYU row r holds our row inv_perm[r] (the permutation is its own inverse)
    for k, v in model.state_dict().items():
        m = re.match(r"columns\.(CC|MLO)\.(.+)$", k)
        if m:
            rest = m[2].replace("layers.", "layer_list.").replace(".shortcut.", ".downsample.0.")
            out[f"four_view_resnet.{m[1].lower()}.{rest}"] = v
            continue
        m = re.match(r"(hidden|output)\.(CC|MLO)\.(weight|bias)$", k)
        if m[1] == "hidden":
            out[f"fc1_{m[2].lower()}.{m[3]}"] = v
        else:
            out[f"output_layer_{m[2].lower()}.fc_layer.{m[3]}"] = v.reshape(4, 2, *v.shape[1:])[list(inv_perm)].reshape(v.shape)
    return out


def test_models_checkpoint_convert_nyu_reference(tiny_nyu, tmp_path) -> None:
    ref = _nyu_reference_names(tiny_nyu)
    assert "four_view_resnet.cc.layer_list.0.0.downsample.0.weight" in ref
    assert "output_layer_mlo.fc_layer.weight" in ref
    converted = convert_state_dict(ref, "nyu-viewwise")
    fresh = create_model("nyu-viewwise", num_filters=4).eval()
    fresh.load_state_dict(converted, strict=True)
    x = tiny_nyu.example_inputs(1)
    with torch.no_grad():
        assert torch.equal(fresh(**x)["probs"], tiny_nyu(**x)["probs"])
    # the published files wrap the state dict as {"model": sd}
    torch.save({"model": ref}, tmp_path / "nyu.p")
    ck = load_checkpoint(tmp_path / "nyu.p", model_name="nyu-viewwise", config={"num_filters": 4}, scheme="nyu-viewwise")
    with torch.no_grad():
        assert torch.equal(ck.model(**x)["probs"], tiny_nyu(**x)["probs"])
    with pytest.raises(CheckpointError, match="do not fit conversion scheme"):
        convert_state_dict({"four_view_resnet.cc.mystery.weight": torch.zeros(1)}, "nyu-viewwise")
    with pytest.raises(CheckpointError, match="unknown conversion scheme"):
        convert_state_dict({}, "nope")


def _torchvision_densenet_names(model) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        k2 = k.replace("stem.conv", "features.conv0").replace("stem.norm", "features.norm0")
        k2 = k2.replace("final_norm", "features.norm5").replace("head.fc", "classifier")
        k2 = re.sub(r"^blocks\.(\d+)\.layers\.(\d+)\.(norm|conv)([12])",
                    lambda m: f"features.denseblock{int(m[1]) + 1}.denselayer{int(m[2]) + 1}.{m[3]}.{m[4]}", k2)
        k2 = re.sub(r"^transitions\.(\d+)\.", lambda m: f"features.transition{int(m[1]) + 1}.", k2)
        out[k2] = v
    return out


def test_models_checkpoint_pretrained_densenet(tmp_path) -> None:
    torch.manual_seed(0)
    rgb = create_model("densenet-tiny", in_channels=3, stem_channels=3, num_classes=1000)
    sd = _torchvision_densenet_names(rgb)
    assert "features.denseblock1.denselayer1.norm.1.weight" in sd  # legacy spelling
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "imagenet.safetensors"))
    model = create_model("densenet-tiny", stem_channels=1)
    report = load_pretrained_backbone(model, tmp_path / "imagenet.safetensors")
    assert "stem.conv.weight" in report.adapted
    assert "head.fc.weight" in report.dropped
    assert torch.allclose(model.stem.conv.weight, rgb.stem.conv.weight.mean(1, keepdim=True))
    assert torch.equal(model.blocks[1].layers[0].conv2.weight, rgb.blocks[1].layers[0].conv2.weight)
    sd["features.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained_backbone(model, sd)
    del sd["features.extra.weight"]
    sd["features.norm5.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_pretrained_backbone(model, sd)


def test_models_checkpoint_pretrained_resnet_and_vgg() -> None:
    torch.manual_seed(0)
    src = create_model("resnet-tiny-patch", num_classes=1000)
    sd = {}
    for k, v in src.state_dict().items():
        k2 = k.replace("stem.conv", "conv1").replace("stem.bn", "bn1").replace("head.fc", "fc")
        k2 = k2.replace("downsample.conv", "downsample.0").replace("downsample.bn", "downsample.1")
        sd[re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.", k2)] = v
    model = create_model("resnet-tiny-patch")
    load_pretrained_backbone(model, sd, first_conv="sum")
    assert torch.equal(model.stem.conv.weight, src.stem.conv.weight)  # both 3-channel stems, no adaptation
    grey = create_model("resnet-tiny-patch", stem_channels=1)
    load_pretrained_backbone(grey, sd, first_conv="sum")
    assert torch.allclose(grey.stem.conv.weight, src.stem.conv.weight.sum(1, keepdim=True))

    vgg = create_model("vgg-tiny-patch")
    tv, idx = {}, 0
    for s, stage in enumerate(vgg.stages):  # torchvision vgg*_bn layout: conv, bn, relu per conv, then pool
        for unit in stage:
            for name, t in unit.conv.state_dict().items():
                tv[f"features.{idx}.{name}"] = t.clone() + 1
            for name, t in unit.bn.state_dict().items():
                tv[f"features.{idx + 1}.{name}"] = t.clone()
            idx += 3
        idx += 1
    tv["classifier.0.weight"] = torch.zeros(10, 16)
    report = load_pretrained_backbone(vgg, tv)
    assert "classifier.0.weight" in report.dropped
    assert torch.equal(vgg.stages[4][0].conv.weight, tv["features.16.weight"])


def test_models_checkpoint_bundled_zoo(tiny_nyu, tmp_path, monkeypatch) -> None:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    save_checkpoint(tiny_nyu, zoo / "demo-image.safetensors", {"training_data": "synthetic phantoms"})
    (zoo / "demo-image.md").write_text("# demo-image\n\nImage-only demo model trained on synthetic phantoms.\n")
    (zoo / "index.json").write_text(json.dumps({"models": {"demo-image": {
        "file": "demo-image.safetensors", "card": "demo-image.md", "architecture": "nyu-viewwise"}}}))
    assert resolve_model_ref("demo-image", zoo_dir=zoo) == zoo / "demo-image.safetensors"
    with pytest.raises(CheckpointError, match="did you mean 'demo-image'"):
        resolve_model_ref("demo-imag", zoo_dir=zoo)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_ref(str(tmp_path / "missing.safetensors"), zoo_dir=zoo)
    assert load_checkpoint("demo-image", zoo_dir=zoo).name == "nyu-viewwise"

    monkeypatch.setenv("BREASTSCREEN_ZOO", str(zoo))
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "6,132,592" in listed.output and "6,135,728" in listed.output
    assert "demo-image" in listed.output and "synthetic phantoms" in listed.output
    info = runner.invoke(app, ["models", "info", "demo-image"])
    assert info.exit_code == 0, info.output
    assert "model: nyu-viewwise" in info.output and "training_data" in info.output and "model card" in info.output


def test_init_from_an_imagenet_style_file_loads_the_backbone(tmp_path) -> None:
    """`train patch ... init_from=imagenet.safetensors` (no breastscreen header) maps the backbone weights."""
    from breastscreen.training.config import TrainConfig
    from breastscreen.training.recipes.common import build_model

    torch.manual_seed(1)
    rgb = create_model("densenet-tiny-embed", in_channels=3, stem_channels=3, num_classes=1000, embedding_dim=0)
    save_file({k: v.contiguous() for k, v in _torchvision_densenet_names(rgb).items()}, str(tmp_path / "in.safetensors"))
    cfg = TrainConfig(kind="patch", init_from=str(tmp_path / "in.safetensors"))
    model = build_model(cfg, "densenet-tiny-embed", None, num_classes=4, in_channels=1)
    assert torch.equal(model.blocks[1].layers[0].conv2.weight, rgb.blocks[1].layers[0].conv2.weight)
    assert torch.equal(model.final_norm.running_var, rgb.final_norm.running_var)
    assert model.head.embed is not None and model.head.fc.weight.shape == (4, 32)  # head kept as initialised
