"""SIGReg and the LeJEPA loss: values against independent references, slices, and 2-process DDP equality."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from dist.launch import run, torchrun
from sptrack.errors import ConfigError
from sptrack.methods import EppsPulley, LeJEPALoss, SIGReg, invariance_loss

WORKER = Path(__file__).resolve().parent / "dist" / "sigreg_worker.py"


def dense_epps_pulley(x: torch.Tensor, t_max: float, points: int = 40001) -> float:
    """N * integral_{-t_max}^{t_max} |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt by a dense composite Simpson rule."""
    x = x.double()
    t = torch.linspace(-t_max, t_max, points, dtype=torch.float64)
    ecf = torch.exp(1j * x[:, None] * t[None, :]).mean(0)  # complex empirical characteristic function
    f = (ecf - torch.exp(-0.5 * t**2)).abs() ** 2 * torch.exp(-0.5 * t**2)
    h = float(t[1] - t[0])
    simpson = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return len(x) * float(simpson)


def closed_form_epps_pulley(x: torch.Tensor) -> float:
    """The same integral over the whole real line, in closed form (Gaussian integrals of cosines)."""
    x = x.double()
    n = len(x)
    d = x[:, None] - x[None, :]
    pairs = math.sqrt(2 * math.pi) / n**2 * torch.exp(-0.5 * d**2).sum()
    cross = 2 * math.sqrt(math.pi) / n * torch.exp(-0.25 * x**2).sum()
    return n * float(pairs - cross + math.sqrt(2 * math.pi / 3))


def trapezoid_full_line(x: torch.Tensor, knots: int, t_max: float) -> float:
    """The 17-knot rule written out on the symmetric grid [-t_max, t_max] (2*knots-1 nodes), complex arithmetic."""
    x = x.double()
    t = torch.linspace(-t_max, t_max, 2 * knots - 1, dtype=torch.float64)
    total = 0.0
    for i, ti in enumerate(t.tolist()):
        ecf = complex(torch.exp(1j * ti * x).mean())
        f = abs(ecf - math.exp(-0.5 * ti**2)) ** 2 * math.exp(-0.5 * ti**2)
        weight = 0.5 if i in (0, len(t) - 1) else 1.0
        total += weight * f * float(t[1] - t[0])
    return len(x) * total


SAMPLES = {
    "gaussian": lambda g: torch.randn(400, generator=g),
    "uniform": lambda g: (torch.rand(400, generator=g) * 2 - 1) * math.sqrt(3),
    "shifted": lambda g: torch.randn(400, generator=g) * 0.7 + 0.4,
    "collapsed": lambda g: torch.full((400,), 0.25),
}


def test_dense_reference_agrees_with_closed_form():
    """The references themselves: dense integration over a wide range equals the closed form."""
    x = torch.randn(300, generator=torch.Generator().manual_seed(1))
    assert dense_epps_pulley(x, t_max=12.0) == pytest.approx(closed_form_epps_pulley(x), rel=1e-9)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_fine_quadrature_equals_dense_integral(kind):
    x = SAMPLES[kind](torch.Generator().manual_seed(2))
    ep = EppsPulley(knots=801, t_max=3.0, sync=False).double()
    # in float64: 801 knots are 48 blocks of the knot recurrence, whose float32 rounding would exceed 1e-5 here
    assert float(ep(x.double()[:, None])[0]) == pytest.approx(dense_epps_pulley(x, 3.0), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_paper_quadrature_equals_the_rule_written_out(kind):
    """17 knots on [0, 3] doubled = the trapezoidal rule on [-3, 3]; and it stays close to the exact integral."""
    x = SAMPLES[kind](torch.Generator().manual_seed(3))
    value = float(EppsPulley(sync=False).double()(x[:, None])[0])
    assert value == pytest.approx(trapezoid_full_line(x, 17, 3.0), rel=1e-5, abs=1e-5)
    assert value == pytest.approx(dense_epps_pulley(x, 3.0), rel=2e-3)  # quadrature error of 17 knots


def test_gaussian_is_small_collapsed_and_uniform_are_large():
    g = torch.Generator().manual_seed(4)
    sigreg = SIGReg(num_slices=256, seed=0)
    gaussian = [sigreg(torch.randn(n, 32, generator=g), step=0).item() for n in (512, 4096)]
    square = sigreg((torch.rand(2048, 2, generator=g) * 2 - 1) * math.sqrt(3), step=0).item()  # uniform, unit variance
    sphere = torch.randn(2048, 32, generator=g)
    sphere = sphere / sphere.norm(dim=1, keepdim=True)  # uniform on the unit sphere (L2-normalised embeddings)
    collapsed = sigreg(torch.ones(2048, 32) * 0.1 + 1e-3 * torch.randn(2048, 32, generator=g), step=0).item()
    # Under H0 the statistic stays O(1) whatever N (its mean is about 1 with this window); departures grow like N.
    assert max(gaussian) < 1.5 and abs(gaussian[0] - gaussian[1]) < 0.5
    assert square > 10.0
    assert sigreg(sphere, step=0).item() > 500.0
    assert collapsed > 500.0


def test_sigreg_is_the_mean_of_per_slice_statistics_on_projections():
    z = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigreg = SIGReg(num_slices=6, seed=9).double()
    a = sigreg.directions(8, step=11, dtype=torch.float64)
    expected = sum(trapezoid_full_line(z[v] @ a[:, s], 17, 3.0) for v in range(3) for s in range(6)) / 18
    assert sigreg(z, step=11).item() == pytest.approx(expected, rel=1e-6)  # buffers were rounded to float32


def test_slices_are_unit_seeded_per_step_and_redrawn():
    sigreg = SIGReg(num_slices=64, seed=3)
    a = sigreg.directions(16, step=4)
    assert a.shape == (16, 64)
    assert torch.allclose(a.norm(dim=0), torch.ones(64), atol=1e-6)
    assert torch.equal(a, SIGReg(num_slices=64, seed=3).directions(16, step=4))  # another process, same draw
    assert not torch.allclose(a, sigreg.directions(16, step=5))
    assert not torch.allclose(a, SIGReg(num_slices=64, seed=4).directions(16, step=4))


def test_minimising_sigreg_gaussianises_a_uniform_cloud():
    g = torch.Generator().manual_seed(6)
    z = ((torch.rand(512, 4, generator=g) * 2 - 1) * math.sqrt(3)).requires_grad_(True)
    sigreg = SIGReg(num_slices=64, seed=0)
    opt = torch.optim.Adam([z], lr=0.02)
    start = sigreg(z, 0).item()
    for step in range(150):
        opt.zero_grad()
        sigreg(z, step).backward()
        opt.step()
    end = sum(sigreg(z, 1000 + s).item() for s in range(5)) / 5
    assert end < 0.3 * start


def test_lejepa_loss_terms():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(5, 32, 8, generator=g)
    loss = LeJEPALoss(lamb=0.25, num_slices=32, seed=1)
    out = loss(list(z), n_global=2, step=3)
    centre = (z[0] + z[1]) / 2
    expected_inv = sum(((z[v] - centre) ** 2).mean() for v in range(5)) / 5
    assert out.invariance.item() == pytest.approx(expected_inv.item(), rel=1e-6)
    assert out.sigreg.item() == pytest.approx(loss.sigreg(z, 3).item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.75 * out.invariance.item() + 0.25 * out.sigreg.item(), rel=1e-6)
    # Identical views: no invariance error at all.
    assert invariance_loss(z[:1].expand(4, -1, -1), 2).item() == 0.0


@pytest.mark.parametrize("kwargs, key", [
    ({"lamb": 1.5}, "lejepa.lamb"), ({"num_slices": 0}, "sigreg.num_slices"), ({"knots": 1}, "sigreg.knots"),
    ({"t_max": 0.0}, "sigreg.t_max"),
])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        LeJEPALoss(**kwargs)
    assert key in str(err.value)


def test_sum_over_ranks_alone_returns_copies_in_their_shapes():
    from sptrack.parallel.collectives import sum_over_ranks

    total, count = torch.arange(6.0).reshape(2, 3), torch.tensor(4.0)
    out_total, out_count = sum_over_ranks(total, count)
    assert torch.equal(out_total, total) and out_total.shape == (2, 3) and out_count.shape == () and out_count.item() == 4.0
    out_total.add_(1)
    assert total[0, 0].item() == 0.0  # a copy, not a view of the input
    with pytest.raises(TypeError, match="one dtype"):
        sum_over_ranks(total, torch.tensor(4, dtype=torch.int64))


def test_two_process_sigreg_equals_one_process_on_the_whole_batch(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    run([sys.executable, str(WORKER), str(single)])
    torchrun(WORKER, str(multi), nproc=2)
    ref = torch.load(single / "rank0.pt", weights_only=True)
    ranks = [torch.load(multi / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ref["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    for r, res in enumerate(ranks):
        # The value is the global one on every rank ...
        assert torch.allclose(res["sigreg"], ref["sigreg"], rtol=1e-10, atol=0)
        # ... and each rank's gradient, averaged over ranks like DDP does, is its rows of the global gradient.
        rows = slice(r * 32, (r + 1) * 32)
        assert torch.allclose(res["grad"] / 2, ref["grad"][:, rows], rtol=1e-9, atol=1e-14)
        assert torch.allclose(res["lejepa_grad"] / 2, ref["lejepa_grad"][:, rows], rtol=1e-9, atol=1e-14)
        # KoLeo: neighbours from the whole batch, so the same value and gradient rows as one process.
        assert torch.allclose(res["koleo"], ref["koleo"], rtol=1e-10, atol=0)
        assert torch.allclose(res["koleo_grad"] / 2, ref["koleo_grad"][:, rows], rtol=1e-9, atol=1e-14)
        # I-JEPA's PositionCenter: the global batch mean, the same centre on every rank.
        assert torch.allclose(res["center"], ref["center"], rtol=1e-12, atol=1e-15)
        assert torch.allclose(res["centered"], ref["centered"][rows], rtol=1e-12, atol=1e-15)
        # DINO's centre: the global batch mean of the teacher outputs (sum and count in one all-reduce).
        assert torch.allclose(res["dino_center"], ref["dino_center"], rtol=1e-6, atol=1e-7)
    # The invariance term is a per-sample mean: the rank average is the global value.
    assert torch.allclose((ranks[0]["lejepa"] + ranks[1]["lejepa"]) / 2, ref["lejepa"], rtol=1e-10)
    assert ref["grad"].abs().max() > 1e-4 and ref["koleo_grad"].abs().max() > 1e-4  # the comparison can fail
    # The centres by hand: an EMA (momentum 0.8, from zero) of the mean over both global views and all 64 rows.
    g = torch.Generator().manual_seed(0)
    torch.randn(4, 64, 16, generator=g, dtype=torch.float64)  # the worker's draws, in its order
    torch.randn(2, 64, 5, 3, generator=g, dtype=torch.float64)
    teacher_out = torch.randn(2, 2, 64, 6, generator=g)
    expected = torch.zeros(1, 6)
    for step in teacher_out:
        expected = 0.8 * expected + 0.2 * step.reshape(-1, 6).mean(0, keepdim=True)
    assert torch.allclose(ref["dino_center"], expected, rtol=1e-6, atol=1e-7) and expected.abs().max() > 1e-2
    # ... and it would with each rank's own rows only: KoLeo on one half of the batch is another value.
    from sptrack.methods import KoLeo

    g = torch.Generator().manual_seed(0)
    z_all = torch.randn(4, 64, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2  # the worker's batch
    halves = (KoLeo()(z_all[:2, :32]) + KoLeo()(z_all[:2, 32:])) / 2
    assert not torch.allclose(halves, ref["koleo"], rtol=1e-3)
    # The group is really gone once destroyed (nothing holds it after SIGReg's and KoLeo's collectives):
    # gloo's threads have ended, so none is left to abort the rank at interpreter exit.
    for res in ranks:
        before, in_group, after = res["threads"]
        assert in_group > before and after == before, res["threads"]
