"""LeJEPA objective (Balestriero & LeCun, arXiv:2511.08544, Sec. 5.1): invariance to the global-view mean + SIGReg."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.methods.sigreg import SIGReg


@dataclass
class LeJEPAOutput:
    """The total loss and its two terms (for logging)."""

    loss: torch.Tensor
    invariance: torch.Tensor
    sigreg: torch.Tensor


def invariance_loss(z: torch.Tensor, n_global: int) -> torch.Tensor:
    """Mean squared distance of every view's projection to the mean of the global views' projections.

    ``z`` is ``(V, N, K)`` with the ``n_global`` global views first; averaged over views, samples
    and the K coordinates. The centre is not detached: LeJEPA has no stop-gradient.
    """
    centre = z[:n_global].mean(0)
    return (z - centre).square().mean()


class LeJEPALoss(nn.Module):
    """``(1 - lamb) * invariance + lamb * SIGReg`` over all views' projections.

    SIGReg is computed per view (each view's batch is one sample of the embedding distribution)
    and averaged over views and slices, as in the authors' reference code.

    Args:
        lamb: trade-off lambda (paper default 0.05).
        num_slices, knots, t_max, seed, sync: see :class:`sptrack.methods.sigreg.SIGReg`.
    """

    def __init__(self, lamb: float = 0.05, num_slices: int = 1024, knots: int = 17, t_max: float = 3.0,
                 seed: int = 0, sync: bool = True):
        super().__init__()
        if not 0.0 <= lamb <= 1.0:
            raise ConfigError("lejepa.lamb", f"must be in [0, 1], got {lamb!r}.")
        self.lamb = float(lamb)
        self.sigreg = SIGReg(num_slices=num_slices, knots=knots, t_max=t_max, seed=seed, sync=sync)

    def forward(self, projections: torch.Tensor | Sequence[torch.Tensor], n_global: int, step: int) -> LeJEPAOutput:
        """Loss of projections ``(V, N, K)`` (or a list of V ``(N, K)`` tensors), global views first, at ``step``."""
        z = projections if isinstance(projections, torch.Tensor) else torch.stack(list(projections))
        if z.ndim != 3 or not 1 <= n_global <= z.shape[0]:
            raise ConfigError("lejepa.projections", f"need (views, batch, dim) with 1 <= n_global <= views; got shape "
                              f"{tuple(z.shape)} and n_global={n_global}.")
        inv = invariance_loss(z, n_global)
        sig = self.sigreg(z, step)
        return LeJEPAOutput((1 - self.lamb) * inv + self.lamb * sig, inv, sig)
