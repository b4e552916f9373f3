"""The knot recurrences behind SIGReg: sums and gradients equal to cos/sin written out, in float64 and float32."""

from __future__ import annotations

import pytest
import torch

from sptrack.methods import SIGReg
from sptrack.methods.characteristic import BLOCK, uniform_grid_sums


def direct_sums(x: torch.Tensor, dt: float, knots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_n cos(k dt x)`` and ``sum_n sin(k dt x)`` by one cosine and sine per sample and knot."""
    xt = x.unsqueeze(-1) * (torch.arange(knots, dtype=x.dtype) * dt)
    return xt.cos().sum(-3), xt.sin().sum(-3)


@pytest.mark.parametrize("knots", [1, 2, 3, 17, 18, 3 * BLOCK + 5])  # one knot, one block, a block of one, several
def test_sums_and_gradients_equal_the_written_out_sums_in_float64(knots):
    g = torch.Generator().manual_seed(knots)
    x = (torch.randn(3, 40, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    dt = 3.0 / max(knots - 1, 1)
    cos_sum, sin_sum = uniform_grid_sums(x, dt, knots)
    ref_cos, ref_sin = direct_sums(x, dt, knots)
    assert cos_sum.shape == (3, 5, knots)
    torch.testing.assert_close(cos_sum, ref_cos, rtol=0, atol=1e-11)
    torch.testing.assert_close(sin_sum, ref_sin, rtol=0, atol=1e-11)
    weight_cos = torch.randn(cos_sum.shape, generator=g, dtype=torch.float64)
    weight_sin = torch.randn(sin_sum.shape, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((cos_sum * weight_cos).sum() + (sin_sum * weight_sin).sum(), x)
    ref_grad, = torch.autograd.grad((ref_cos * weight_cos).sum() + (ref_sin * weight_sin).sum(), x)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)


def test_gradcheck():
    x = torch.randn(2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: uniform_grid_sums(y, 0.3, 7), (x,))
    assert torch.autograd.gradcheck(lambda y: uniform_grid_sums(y, 0.05, 2 * BLOCK + 3), (x,))


@pytest.mark.parametrize("spread", [1.5, 1e-3])  # LeJEPA-like projections, and an almost collapsed slice
def test_float32_characteristic_function_is_within_1e_5_at_the_paper_grid(spread):
    """17 knots on [0, 3], 8 views x 128 samples x 256 slices, float32: the ECF (sum / N) within 1e-5 of float64.

    The ECF's own sampling noise at N = 128 is about 0.09. Direct float32 cosines are within about 2e-7; the
    recurrence is worst on a collapsed slice (small angles, errors of all samples alike: measured 2.3e-6),
    and a recurrence run past its block, without the exact restarts, fails this bound (an 801-knot grid: 5e-3).
    """
    x = 0.3 + spread * torch.randn(8, 128, 256, generator=torch.Generator().manual_seed(2))
    exact = direct_sums(x.double(), 3 / 16, 17)
    for got, ref in zip(uniform_grid_sums(x, 3 / 16, 17), exact):
        assert (got.double() - ref).abs().max().item() / 128 < 1e-5


def test_half_precision_projections_are_tested_in_float32():
    z = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(3))
    sigreg = SIGReg(num_slices=32, seed=0)
    value = sigreg(z.bfloat16(), step=1)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(sigreg(z.bfloat16().float(), step=1).item(), rel=1e-2)
