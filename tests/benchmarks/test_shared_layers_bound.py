"""benchmarks/shared_layers_bound.py: phase counting and the reusable-cell measurement on known layers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "shared_layers_bound.py"


@pytest.fixture(scope="module")
def slb():
    spec = importlib.util.spec_from_file_location("shared_layers_bound_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["shared_layers_bound_script"] = module
    spec.loader.exec_module(module)
    return module


def test_window_origins_every_70_pixels_fall_on_these_phases(slb):
    assert slb.phases(1) == 1 and slb.phases(2) == 1  # 70 is even; 2294 - 256 = 2038 is even
    assert slb.phases(4) == 2 and slb.phases(8) == 4 and slb.phases(16) == 8
    assert slb.phases(4, image_side=256 + 70 * 3 + 1) == 3  # an odd last origin adds a phase


def test_exact_fraction_is_the_cells_a_padded_conv_leaves_alone(slb):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert slb.exact_fraction([conv], stride=1) == pytest.approx((254 / 256) ** 2)
    pool = nn.AvgPool2d(2)
    # a 5x5 conv changes two cells at each edge, then 2x2 pooling: one of 128 cells per edge
    assert slb.exact_fraction([nn.Conv2d(3, 2, 5, padding=2), pool], stride=2) == pytest.approx((126 / 128) ** 2)


def test_macs_of_a_known_network(slb):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    macs = slb.count_macs(net, torch.zeros(1, 1, 16, 16))
    assert macs == {"0": 8 * 16 * 16 * 9, "2": 8 * 16 * 16 * 10}
