"""KoLeo on inputs whose nearest neighbours can be worked out by hand (its 2-process equality: tests/test_sigreg.py)."""

import math

import pytest
import torch

from sptrack.methods import KoLeo


def _on_circle(degrees, radii=None) -> torch.Tensor:
    angle = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    points = torch.stack([angle.cos(), angle.sin()], dim=1)
    return points if radii is None else points * torch.tensor(radii, dtype=torch.float64)[:, None]


def test_value_is_minus_the_mean_log_distance_to_the_nearest_neighbour_on_the_sphere():
    # 0 and 90 degrees: nearest at chord sqrt(2) (0-180 is 2, 0-200 is 2 sin 100); 180 and 200: chord 2 sin 10.
    expected = -(2 * math.log(math.sqrt(2) + 1e-8) + 2 * math.log(2 * math.sin(math.radians(10)) + 1e-8)) / 4
    assert KoLeo()(_on_circle([0, 90, 180, 200])).item() == pytest.approx(expected, rel=1e-12)
    # Rows are L2-normalised first: their lengths do not matter.
    assert KoLeo()(_on_circle([0, 90, 180, 200], radii=[1, 3, 0.5, 2])).item() == pytest.approx(expected, rel=1e-12)


def test_views_are_averaged_and_duplicates_stay_finite():
    a, b = _on_circle([0, 90, 180, 200]), _on_circle([0, 120, 240, 300])
    assert KoLeo()(torch.stack([a, b])).item() == pytest.approx((KoLeo()(a).item() + KoLeo()(b).item()) / 2, rel=1e-12)
    twins = _on_circle([0, 0, 90])
    # The twins are at distance 0: -log(eps) each; 90 degrees' nearest is a twin at sqrt(2).
    assert KoLeo(eps=1e-8)(twins).item() == pytest.approx(-(2 * math.log(1e-8) + math.log(math.sqrt(2) + 1e-8)) / 3, rel=1e-12)


def test_gradient_pushes_the_closest_pair_apart_and_matches_finite_differences():
    x = _on_circle([0, 90, 180, 200]).requires_grad_(True)
    KoLeo()(x).backward()
    # d/dx of -log|x_3 - x_4| / 4 along the chord: the 180-degree point moves away from the 200-degree one.
    away = x.detach()[2] - x.detach()[3]
    assert float(x.grad[2] @ away) < 0 and float(x.grad[3] @ -away) < 0  # descent (-grad) increases the distance
    torch.manual_seed(0)
    y = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(KoLeo(), (y,))


def test_fewer_than_two_rows_is_an_error():
    with pytest.raises(ValueError, match="N >= 2"):
        KoLeo()(torch.ones(1, 3))
