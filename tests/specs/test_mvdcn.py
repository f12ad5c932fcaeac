"""MV-DCN as in Geras et al. 2017: Glorot initialisation and crop noise that never crosses the chest wall."""

from __future__ import annotations

import math

import numpy as np
import torch

from breastscreen.models.registry import create_model
from breastscreen.preprocess.augment import MVDCNCropNoise


def test_glorot_uniform_weights_and_zero_biases():
    model = create_model("mvdcn", width_multiplier=0.125, padding=1)
    fc = model.classifier
    limit = math.sqrt(6.0 / (fc.in_features + fc.out_features))
    assert float(fc.weight.detach().abs().max()) <= limit and torch.all(fc.bias == 0)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().abs().max()) <= math.sqrt(6.0 / (fan_in + fan_out)) + 1e-7
    default = create_model("mvdcn", width_multiplier=0.125, padding=1, init="default")
    assert float(default.classifier.bias.detach().abs().sum()) > 0


def test_one_sided_crop_noise_moves_only_away_from_the_chest_wall():
    box = (0, 10, 40, 60)
    both = MVDCNCropNoise(window=box, max_noise=5)
    one = MVDCNCropNoise(window=box, max_noise=5, one_sided=True)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    shape = (80, 60)
    dx_both = [both.draw(rng_a, shape)["box"][0] for _ in range(200)]
    draws = [one.draw(rng_b, shape)["box"] for _ in range(200)]
    assert min(dx_both) < 0 and all(b[0] >= 0 for b in draws)
    assert [b[0] for b in draws] == [abs(d) for d in dx_both]  # same draws, folded
    assert {b[2] - b[0] for b in draws} == {40} and min(b[1] for b in draws) < 10 < max(b[1] for b in draws)
