"""Training building blocks: config resolution, class weights, samplers, early stopping."""

from __future__ import annotations

import re

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from breastscreen.training.config import ConfigError, parse_overrides, resolve_config, to_dict
from breastscreen.training.losses import breast_label_loss, patch_class_weights
from breastscreen.training.loop import EarlyStopping
from breastscreen.training.samplers import (
    BiopsyBalancedSampler,
    ClassCompositionSampler,
    ShuffleSampler,
    scale_composition,
)


@dataclass
class _Opts:
    heatmaps: str = ""
    composition: dict[str, int] = field(default_factory=lambda: {"a": 1})
    jitter: float = 0.5


def test_config_layers_and_overrides(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 3.0e-4\nrecipe:\n  jitter: 0.25\nmodel_args:\n  num_filters: 4\n")
    from breastscreen.training.config import load_yaml

    cfg = resolve_config(
        {"kind": "breast", "batch_size": 4}, _Opts, load_yaml(yml),
        parse_overrides(["batch_size=8", "heatmaps=/tmp/h", "recipe.composition.b=2", "amp=false"]),
    )
    assert cfg.lr == pytest.approx(3e-4) and cfg.batch_size == 8 and cfg.amp is False
    assert cfg.model_args == {"num_filters": 4}
    assert cfg.recipe.heatmaps == "/tmp/h" and cfg.recipe.jitter == 0.25
    assert cfg.recipe.composition == {"a": 1, "b": 2}
    assert to_dict(cfg)["recipe"]["jitter"] == 0.25


def test_config_rejects_unknown_and_bad_types():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        resolve_config({}, _Opts, parse_overrides(["batchsize=3"]))
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        resolve_config({}, _Opts, parse_overrides(["epochs=2.5"]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        resolve_config({}, _Opts, {"lr": 0})


def test_class_weights_match_hand_computation():
    # N = (20, 35, 5000, 4945); w_c = prod_{k!=c} N_k / sum_j prod_{k!=j} N_k
    n = [20, 35, 5000, 4945]
    prods = [35 * 5000 * 4945, 20 * 5000 * 4945, 20 * 35 * 4945, 20 * 35 * 5000]
    expected = np.array(prods, dtype=np.float64) / sum(prods)
    np.testing.assert_allclose(patch_class_weights(n), expected, rtol=1e-12)
    # small case by hand: N = (1, 2, 4): products (8, 4, 2) / 14
    np.testing.assert_allclose(patch_class_weights([1, 2, 4]), [8 / 14, 4 / 14, 2 / 14], rtol=1e-12)
    # an absent class gets weight 0 and the others follow the formula over present classes
    np.testing.assert_allclose(patch_class_weights([0, 1, 3]), [0, 0.75, 0.25], rtol=1e-12)
    with pytest.raises(ValueError):
        patch_class_weights([0, 0])


def test_breast_loss_averages_labels_and_branches():
    target = torch.tensor([[0, 1, 0, 0]])
    logits = torch.zeros(1, 4, 2)
    assert breast_label_loss({"logits": logits}, target).item() == pytest.approx(np.log(2))
    z = torch.randn(1, 4, 2)
    out = {"branch_logits": {"CC": z, "MLO": torch.zeros(1, 4, 2)}, "logits": torch.zeros(1, 4, 2)}
    logp = torch.log_softmax(z, -1)[0, torch.arange(4), target[0]]
    expected = (-logp.mean().item() + np.log(2)) / 2
    assert breast_label_loss(out, target).item() == pytest.approx(expected, rel=1e-6)
    # unknown labels (-1) are ignored
    t2 = torch.tensor([[-1, 1, -1, -1]])
    assert breast_label_loss({"logits": z}, t2).item() == pytest.approx(-torch.log_softmax(z, -1)[0, 1, 1].item(), rel=1e-6)


def test_class_composition_sampler_counts_and_determinism():
    labels = np.array([0] * 5 + [1] * 50 + [2] * 300 + [3] * 300)
    counts = {0: 20, 1: 35, 2: 200, 3: 195}
    s = ClassCompositionSampler(labels, counts, seed=3)
    s.set_epoch(4)
    idx = np.array(list(s))
    assert len(idx) == 450
    assert np.bincount(labels[idx], minlength=4).tolist() == [20, 35, 200, 195]
    assert len(set(idx[labels[idx] == 1].tolist())) == 35  # enough items: no replacement
    assert list(s) == idx.tolist()
    s.set_epoch(5)
    assert list(s) != idx.tolist()
    with pytest.raises(ValueError, match="class 'benign' has no items"):
        ClassCompositionSampler([0, 2], {1: 3}, class_names=["malignant", "benign", "outside"])


def test_scale_composition_paper_ratios():
    paper = {"malignant": 20, "benign": 35, "outside": 5000, "negative": 4945}
    assert scale_composition(paper, 0) == paper
    small = scale_composition(paper, 1000)
    assert sum(small.values()) == 1000
    assert small == {"malignant": 2, "benign": 4, "outside": 500, "negative": 494}
    tiny = scale_composition(paper, 10)
    assert sum(tiny.values()) == 10 and min(tiny.values()) >= 1


def test_biopsy_balanced_sampler_composition():
    pos = np.zeros(100, dtype=bool)
    pos[[3, 17, 50, 51, 99]] = True
    s = BiopsyBalancedSampler(pos, seed=1)
    seen = set()
    for epoch in range(3):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == 10 and len(set(idx)) == 10
        assert sorted(i for i in idx if pos[i]) == [3, 17, 50, 51, 99]
        seen.update(i for i in idx if not pos[i])
    assert len(seen) > 5  # negatives are redrawn every epoch
    few_neg = BiopsyBalancedSampler([True, True, True, False], seed=0)
    assert sorted(few_neg.epoch_indices(0).tolist()) == [0, 1, 2, 3]


def test_samplers_shard_for_ddp():
    full = ShuffleSampler(7, seed=2).epoch_indices(0)
    parts = [list(ShuffleSampler(7, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4
    assert sorted(set(parts[0]) | set(parts[1])) == sorted(full.tolist())


def test_early_stopping_on_scripted_sequence():
    seq = [0.50, 0.60, 0.58, 0.61, 0.61, 0.60, 0.59, 0.70]
    es = EarlyStopping(patience=3, mode="max")
    stopped_at = None
    for epoch, v in enumerate(seq):
        es.step(v, epoch)
        if es.should_stop:
            stopped_at = epoch
            break
    # best 0.61 at epoch 3; epochs 4, 5, 6 do not improve (equal is not better) -> stop at 6
    assert stopped_at == 6 and es.best == pytest.approx(0.61) and es.best_epoch == 3
    es2 = EarlyStopping(patience=2, mode="min", min_delta=0.05)
    for epoch, v in enumerate([1.0, 0.9, 0.88, float("nan")]):
        es2.step(v, epoch)
    assert es2.should_stop and es2.best_epoch == 1
    restored = EarlyStopping(patience=2, mode="min")
    restored.load_state_dict(es2.state_dict())
    assert restored.best == es2.best and restored.should_stop
    assert not EarlyStopping(patience=0).should_stop


def test_check_input_fits_refuses_patches_too_small_for_the_model():
    from breastscreen.errors import BreastscreenError
    from breastscreen.models import create_model
    from breastscreen.training.recipes.common import check_input_fits

    model = create_model("densenet-tiny")  # its pooling needs >= 5 px (DenseNet-121: >= 29 px)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_input_fits(model, (2, 1, 5, 5), "a patch")
    with pytest.raises(BreastscreenError, match=r"a patch of shape \[2, 1, 4, 4\] is too small for model DenseNet"):
        check_input_fits(model, (2, 1, 4, 4), "a patch")
    # The probe runs on a copy: the model keeps its real weights on its own device.
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], before[k]) for k in before)


def test_written_ensemble_manifest_is_read_by_predict(tmp_path):
    from breastscreen.inference.ensemble import expand_model_refs
    from breastscreen.training.ensemble import write_ensemble_manifest

    for k in range(2):
        (tmp_path / f"m{k}").mkdir()
        (tmp_path / f"m{k}" / "best.safetensors").write_bytes(b"x")
    path = write_ensemble_manifest(tmp_path, [tmp_path / "m0" / "best.safetensors", tmp_path / "m1" / "best.safetensors"],
                                   {"kind": "breast"})
    assert '"path": "m0/best.safetensors"' in path.read_text()  # relative, so the run folder can move
    refs = expand_model_refs([str(path)])
    assert [r.ref for r in refs] == [str((tmp_path / f"m{k}" / "best.safetensors").resolve()) for k in range(2)]
    assert refs[0].source == f"{path}:members[0]"


@pytest.mark.parametrize("override,message", [
    ("recipe.beta=-1", "recipe.beta must be >= 0, got -1.0"),
    ("recipe.top_t=0", "recipe.top_t must be > 0, got 0.0"),
    ("recipe.augment_strength=2", "recipe.augment_strength must be <= 1, got 2.0"),
    ("recipe.prepare_size=8", "recipe.prepare_size must be >= 32, got 8"),
])
def test_recipe_options_are_checked_against_declared_rules(override, message):
    from breastscreen.training.config import ConfigError, resolve_config
    from breastscreen.training.recipes import get_recipe

    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config({"kind": "us"}, get_recipe("us").options_cls, parse_overrides([override]))
