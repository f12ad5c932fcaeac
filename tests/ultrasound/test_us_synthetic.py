"""Synthetic validation: the top-attention check on hand-made bags and a tiny end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest

from breastscreen.ultrasound.synthetic_eval import run_synthetic_experiment, top_attention_hit_rate


def test_top_attention_hit_rate_by_hand():
    att = [np.array([0.7, 0.3]), np.array([0.2, 0.5, 0.3]), np.array([1.0]), np.array([0.4, 0.6])]
    flags = [[True, False], [True, False, False], [True], [False, False]]
    r = top_attention_hit_rate(att, flags)
    # bag 3 has one image and bag 4 no lesion image: both skipped
    assert r["n_bags"] == 2 and r["rate"] == 0.5
    assert r["chance_rate"] == pytest.approx((0.5 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="images"):
        top_attention_hit_rate([np.array([0.5, 0.5])], [[True]])


@pytest.mark.slow
def test_tiny_synthetic_experiment_end_to_end(tmp_path):
    res = run_synthetic_experiment(
        tmp_path, n_train=8, n_val=4, n_test=6, max_images=2, seed=5, n_boot=20,
        overrides=["model=us-mil-tiny", "recipe.input_size=64", "recipe.prepare_size=72", "epochs=1",
                   "batch_size=4", "lr=1e-3"],
    )
    t = res["test"]
    assert t["malignant"]["n_breasts"] >= 6
    assert 0.0 <= t["malignant"]["auroc"] <= 1.0
    assert 0.0 <= t["localisation_malignant_images"]["pointing_game"] <= 1.0
    assert res["training"]["epochs_run"] == 1
    assert (tmp_path / "run" / "best.safetensors").is_file()
