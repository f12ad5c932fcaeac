"""benchmarks/shared_layers_bound.py: phase counting and the reusable-cell measurement on known layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.benchmark_scripts import load_benchmark




@pytest.fixture(scope="module")
def slb():  # noqa: ANN201 - the benchmark module
    return load_benchmark("shared_layers_bound")


def test_phases_follow_the_heatmappers_window_placement(slb):
    from breastscreen.inference.strides import window_offsets

    offsets = window_offsets(2023, 256, 70)
    assert set(int(d) for d in offsets[1:] - offsets[:-1]) <= {67, 68, 69, 70}  # stride shortened to fit
    for stride in (2, 4, 8, 16, 32):
        assert slb.phases(stride, 2023) == len({int(o) % stride for o in offsets})
    assert slb.phases(1, 2023) == 1 and slb.phases(4, 256 + 4 * 68) == 1  # stride 68 stays on one phase


def test_sharing_a_prefix_costs_its_passes_against_the_overlap(slb):
    shape = (256 + 4 * 68, 256 + 4 * 68)  # 5 x 5 windows at stride 68: one phase per axis for stride 4
    ov = slb.overlap(shape)
    assert ov == pytest.approx(25 * 256 ** 2 / shape[0] ** 2)
    # half of the MACs in the prefix, all its cells reusable, one pass: cost 1 - 0.5 + 0.5 / overlap
    assert slb.speedup_bound(0.5, 1.0, 4, shape) == pytest.approx(1 / (0.5 + 0.5 / ov))
    assert slb.speedup_bound(0.5, 0.0, 4, shape) < 1  # nothing reusable: the passes are pure extra work


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
