"""The ultrasound recipe's loss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from breastscreen.training.losses import saliency_l1, us_mil_loss


def test_loss_matches_hand_computation():
    probs = torch.tensor([[0.2, 0.9], [0.6, 0.3]])
    labels = torch.tensor([[0, 1], [1, 0]])
    # breast 0 has 2 real images, breast 1 has 1 real image and one padded slot
    sal = torch.zeros(2, 2, 2, 2, 2)
    sal[0, 0, 0] = torch.tensor([[0.4, 0.0], [0.0, 0.0]])  # mean 0.1
    sal[0, 0, 1] = torch.tensor([[0.8, 0.8], [0.0, 0.0]])  # mean 0.4
    sal[0, 1, 1] = torch.tensor([[0.2, 0.2], [0.2, 0.2]])  # mean 0.2
    sal[1, 0, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # mean 0.25
    sal[1, 1] = 0.9  # padded slot: must not count
    mask = torch.tensor([[True, True], [True, False]])
    beta = 0.5

    bce_b = -(math.log(1 - 0.2) + math.log(0.6)) / 2
    bce_m = -(math.log(0.9) + math.log(1 - 0.3)) / 2
    l1 = ((0.1 + 0.4 + 0.2) + 0.25) / 2
    expected = bce_b + bce_m + beta * l1

    loss, parts = us_mil_loss({"probs": probs, "saliency": sal}, labels, mask, beta)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert parts["saliency_l1"] == pytest.approx(l1, rel=1e-6)
    assert saliency_l1(sal, mask).tolist() == pytest.approx([0.7, 0.25], rel=1e-6)


def test_loss_gradient_reaches_saliency_only_for_real_images():
    sal = torch.rand(1, 3, 2, 4, 4, requires_grad=True)
    probs = torch.tensor([[0.3, 0.6]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss, _ = us_mil_loss({"probs": probs, "saliency": sal}, torch.tensor([[0, 1]]), mask, beta=1.0)
    loss.backward()
    assert sal.grad[0, 2].abs().sum() == 0
    assert sal.grad[0, :2].abs().sum() > 0
