"""DINO loss on hand-computable inputs, the centre update and the teacher-temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sptrack.methods.dino import DINOLoss, dino_cross_entropy, teacher_temperature


def softmax(xs, t):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_cross_entropy_by_hand():
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.5]])]
    q = [torch.tensor([[0.9, 0.1]]), torch.tensor([[0.2, 0.8]])]
    got = dino_cross_entropy(s, q, student_temp=0.5)
    p = [softmax([1.0, 0.0], 0.5), softmax([0.0, 2.0], 0.5), softmax([0.5, 0.5], 0.5)]
    qs = [[0.9, 0.1], [0.2, 0.8]]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view), same view skipped
    expected = sum(-sum(qs[i][k] * math.log(p[j][k]) for k in range(2)) for i, j in pairs) / len(pairs)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_uses_centre_and_teacher_temperature():
    loss = DINOLoss(out_dim=2, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_fraction=0.5)
    loss.center.copy_(torch.tensor([[0.5, -0.5]]))
    t = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    s = [torch.tensor([[0.3, 0.1]]), torch.tensor([[0.2, 0.4]])]
    got = loss(s, t, progress=0.25)  # temperature halfway through warm-up: 0.055
    q = [softmax([0.5, 0.5], 0.055), softmax([-0.5, 1.5], 0.055)]
    p = [softmax([0.3, 0.1], 0.1), softmax([0.2, 0.4], 0.1)]
    expected = (-sum(q[0][k] * math.log(p[1][k]) for k in range(2)) - sum(q[1][k] * math.log(p[0][k]) for k in range(2))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_temperature_schedule():
    assert teacher_temperature(0.0) == pytest.approx(0.04)
    assert teacher_temperature(0.15) == pytest.approx(0.055)
    assert teacher_temperature(0.3) == pytest.approx(0.07)
    assert teacher_temperature(0.9) == pytest.approx(0.07)


def test_centre_update_is_an_ema_of_the_batch_mean():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    t = [torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 6.0], [4.0, 4.0, 2.0]])]
    loss.update_center(t)
    torch.testing.assert_close(loss.center, 0.1 * torch.tensor([[2.0, 2.0, 3.0]]))
    loss.update_center(t)
    torch.testing.assert_close(loss.center, (0.9 * 0.1 + 0.1) * torch.tensor([[2.0, 2.0, 3.0]]))
    assert "center" in loss.state_dict()


def test_gradient_flows_only_to_the_student():
    loss = DINOLoss(out_dim=4)
    s = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    t = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    loss(s, t, progress=1.0).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
