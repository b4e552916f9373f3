"""SIGReg: Sketched Isotropic Gaussian Regularization (Balestriero & LeCun, LeJEPA, arXiv:2511.08544).

Paper map (section numbers of arXiv:2511.08544):

- Sec. 4.2.3 (characteristic-function tests): the Epps–Pulley statistic of 1-D samples
  ``x_1..x_N`` against N(0, 1),

      EP(x) = N * integral over t of |phi_hat(t) - phi(t)|^2 * w(t) dt,
      phi_hat(t) = (1/N) sum_n exp(i t x_n),   phi(t) = exp(-t^2 / 2),   w(t) = exp(-t^2 / 2),

  integrated with the trapezoidal rule on 17 knots over ``[0, t_max]`` and doubled, because the
  integrand is even in t (the authors' reference implementation, ``t_max = 3``). The sums over
  samples of ``cos(t x)`` and ``sin(t x)`` on those equally spaced knots come from a three-term
  recurrence with its own backward pass (:mod:`sptrack.methods.characteristic`): the same values
  to float rounding, without ``(N, slices, knots)`` temporaries (about 5x faster on LeJEPA's shapes).
- Sec. 4.3 (slicing): SIGReg averages EP over ``M`` random unit directions ``a`` (Gaussian
  vectors normalised), applied to the projections ``a^T z_n``; directions are redrawn every step.
  Default ``M = 1024`` slices (the authors' GOTO setting).
- Sec. 5.1 (LeJEPA): ``loss = (1 - lambda) * invariance + lambda * SIGReg`` with ``lambda = 0.05``;
  see :mod:`sptrack.methods.lejepa`.

Distributed: ``phi_hat`` is a mean over the *global* batch, so the per-rank sums of cos and sin
are all-reduced (autograd-aware all-reduce). The value on every rank then equals the one-process
value on the concatenated batch; each rank's gradient is ``world_size`` times its share of the
global gradient, which the data-parallel gradient average (DDP, FSDP2) turns into exactly the
one-process gradient. Slice directions come from a CPU generator seeded with ``(seed, step)``:
identical on every rank without communication, and reproducible on resume.
"""

from __future__ import annotations

import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.methods.characteristic import uniform_grid_sums
from sptrack.parallel.collectives import global_sum


def trapezoid_half_line(knots: int, t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``t`` on ``[0, t_max]`` and weights of the trapezoidal rule on ``[-t_max, t_max]`` folded onto them.

    An even integrand ``f`` then satisfies ``integral_{-t_max}^{t_max} f ≈ sum(weights * f(t))``:
    interior nodes stand for ``±t`` (weight ``2 dt``), ``t = 0`` is one node (``dt``) and the two
    ends ``±t_max`` are half-weighted (``2 * dt / 2``).
    """
    if not isinstance(knots, int) or isinstance(knots, bool) or knots < 2:
        raise ConfigError("sigreg.knots", f"must be an integer >= 2, got {knots!r}.")
    if not t_max > 0:
        raise ConfigError("sigreg.t_max", f"must be > 0, got {t_max!r}.")
    t = torch.linspace(0.0, float(t_max), knots, dtype=torch.float64)
    dt = float(t_max) / (knots - 1)
    weights = torch.full((knots,), 2 * dt, dtype=torch.float64)
    weights[0] = dt
    weights[-1] = dt
    return t, weights


class EppsPulley(nn.Module):
    """Epps–Pulley normality statistic of every column of ``x`` (samples along dim -2).

    ``forward(x)`` takes ``(..., N, M)`` and returns ``(..., M)``: one statistic per column and
    leading index, with N the global sample count when ``sync`` and a process group is active.

    Args:
        knots: trapezoid nodes on ``[0, t_max]`` (17 in the paper).
        t_max: integration half-width.
        sync: reduce the empirical characteristic function over all ranks.
    """

    def __init__(self, knots: int = 17, t_max: float = 3.0, sync: bool = True):
        super().__init__()
        t, weights = trapezoid_half_line(knots, t_max)
        window = torch.exp(-0.5 * t.square())  # w(t); also phi(t), the N(0,1) characteristic function
        self.register_buffer("phi", window.float(), persistent=False)
        self.register_buffer("weights", (weights * window).float(), persistent=False)
        self.knots, self.dt = knots, float(t_max) / (knots - 1)
        self.sync = sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise ConfigError("sigreg.input", f"needs samples along dim -2, got shape {tuple(x.shape)}.")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # the knot recurrences would lose several bits per step in half precision
        cos_sum, sin_sum = uniform_grid_sums(x, self.dt, self.knots)  # (..., M, K), no (..., N, M, K) temporaries
        n = torch.tensor([float(x.shape[-2])], device=x.device, dtype=x.dtype)
        if self.sync:
            # One collective per call: the cos sums, the sin sums and the sample count travel together.
            packed = global_sum(torch.cat([cos_sum.flatten(), sin_sum.flatten(), n]))
            cos_flat, sin_flat, n = packed.split([cos_sum.numel(), sin_sum.numel(), 1])
            cos_sum, sin_sum = cos_flat.view_as(cos_sum), sin_flat.view_as(sin_sum)
        n = n[0]
        err = (cos_sum / n - self.phi.to(x.dtype)).square() + (sin_sum / n).square()
        return n * (err @ self.weights.to(x.dtype))


class SIGReg(nn.Module):
    """Sliced Epps–Pulley statistic of embeddings ``z`` ``(..., N, D)``, averaged over slices and leading dims.

    Args:
        num_slices: random unit directions per step (M).
        knots, t_max: quadrature of :class:`EppsPulley`.
        seed: base seed of the slice directions; step ``s`` uses seed ``(seed, s)``.
        sync: reduce statistics over all ranks (see the module docstring).
    """

    def __init__(self, num_slices: int = 1024, knots: int = 17, t_max: float = 3.0, seed: int = 0, sync: bool = True):
        super().__init__()
        if not isinstance(num_slices, int) or isinstance(num_slices, bool) or num_slices < 1:
            raise ConfigError("sigreg.num_slices", f"must be a positive integer, got {num_slices!r}.")
        self.num_slices = num_slices
        self.seed = int(seed)
        self.test = EppsPulley(knots, t_max, sync=sync)

    def directions(self, dim: int, step: int, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
        """The ``(dim, num_slices)`` unit directions of ``step`` (drawn on the CPU: same on every device)."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) % (2**63))
        a = torch.randn(dim, self.num_slices, generator=generator, dtype=torch.float64)
        a = a / a.norm(dim=0, keepdim=True)
        return a.to(device=device, dtype=dtype)

    def slice_statistics(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """EP of every slice: ``(..., num_slices)``."""
        a = self.directions(z.shape[-1], step, z.device, z.dtype)
        return self.test(z @ a)

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return self.slice_statistics(z, step).mean()
