"""The ultrasound fit loop used by the BUS-BRA benchmark: outputs, best-epoch choice, exact resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from breastscreen.data.types import BreastLabel, ImageRef
from breastscreen.ultrasound.bags import BagDataset, Breast, build_cache
from breastscreen.ultrasound.recipe import USRecipe
from breastscreen.ultrasound.train import fit_us, predict_bags


def _datasets(seed: int = 0):
    rng = np.random.default_rng(seed)
    refs, breasts = [], []
    pixels = {}
    for b in range(12):
        malignant = b % 2
        ims = []
        for k in range(1 + b % 3):
            img = rng.integers(60, 160, size=(40, 40)).astype(np.uint8)
            if malignant and k == 0:
                img[12:24, 12:24] = 5  # dark "lesion"
            ref = ImageRef(f"/virtual/b{b}_{k}.png")
            pixels[ref.path] = img
            ims.append(ref)
        refs += ims
        breasts.append(Breast(f"b{b}", f"e{b}", "U-US", ims, BreastLabel(1 - malignant, malignant)))
    cache, _ = build_cache(refs, 32, loader=lambda r: pixels[r.path], cropper=None)
    train = BagDataset(breasts[:8], cache, 32, 1, train=True, seed=1, augment=None)
    val = BagDataset(breasts[8:], cache, 32, 1, train=False)
    return train, val


def _recipe(epochs: int) -> USRecipe:
    return USRecipe(model="us-mil-tiny", model_overrides={"input_size": 32}, lr=1e-3, beta=0.1, top_t=0.2,
                    epochs=epochs, batch_size=4, input_size=32, seed=3, device="cpu")


def _weights(path):
    from breastscreen.models.checkpoint import load_checkpoint

    return load_checkpoint(str(path)).model.state_dict()


def test_fit_writes_metrics_and_checkpoints(tmp_path):
    train, val = _datasets()
    res = fit_us(train, val, _recipe(2), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    aurocs = [float(r["val_auroc_malignant"]) for r in rows]
    assert res.best_epoch == int(np.argmax(aurocs)) and res.best_auroc == pytest.approx(max(aurocs))
    assert res.best_path.is_file() and res.last_path.is_file()
    from breastscreen.models.checkpoint import load_checkpoint

    preds = predict_bags(load_checkpoint(str(res.best_path)).model, val)
    assert preds.probs.shape == (4, 2) and len(preds.attention) == 4
    assert all(a.shape == (len(ids), 2) for a, ids in zip(preds.attention, preds.image_ids))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    train, val = _datasets()
    fit_us(train, val, _recipe(3), tmp_path / "full")
    train2, val2 = _datasets()

    class Killed(Exception):
        pass

    def kill_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 0"):
            raise Killed(msg)

    with pytest.raises(Killed):
        fit_us(train2, val2, _recipe(3), tmp_path / "part", log=kill_after_first_epoch)
    fit_us(train2, val2, _recipe(3), tmp_path / "part", resume=True)
    a, b = _weights(tmp_path / "full" / "last.safetensors"), _weights(tmp_path / "part" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_recipe(tmp_path):
    from breastscreen.errors import CheckpointError

    train, val = _datasets()
    fit_us(train, val, _recipe(1), tmp_path / "run")
    with pytest.raises(CheckpointError, match="recipe differs"):
        fit_us(train, val, _recipe(2), tmp_path / "run", resume=True)
