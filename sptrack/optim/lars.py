"""LARS: layer-wise adaptive rate scaling (You et al., 2017), as used by large-batch SSL recipes."""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum whose per-tensor step is scaled by a trust ratio.

    For every parameter ``p`` with gradient ``g`` the update direction is
    ``d = g + weight_decay * p``, rescaled by ``trust_coefficient * ||p|| / ||d||`` when both norms are
    positive. One-dimensional tensors (biases, norm scales) skip both weight decay and the trust ratio
    when ``exclude_1d=True``, which is the convention of SimCLR/BYOL/DINO training code.
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        exclude_1d: bool = True,
        eps: float = 1e-8,
    ):
        if lr <= 0:
            raise ValueError(f"LARS: lr must be positive, got {lr}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}.")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}.")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude_1d=exclude_1d,
            eps=eps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                adapt = not (group["exclude_1d"] and p.ndim <= 1)
                if adapt:
                    if group["weight_decay"]:
                        direction = direction.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(direction)
                    ratio = torch.where(
                        (p_norm > 0) & (d_norm > 0),
                        group["trust_coefficient"] * p_norm / (d_norm + group["eps"]),
                        torch.ones_like(p_norm),
                    )
                    direction = direction * ratio
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = direction.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(direction)
                    direction = buf
                p.add_(direction, alpha=-group["lr"])
        return loss
