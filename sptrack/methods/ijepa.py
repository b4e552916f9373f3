"""I-JEPA pieces (Assran et al. 2023): gather targets from the EMA encoder, predict them from the context."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sptrack.parallel.collectives import sum_over_ranks


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``tokens[b, idx[b, ...]]``: ``(B, N, D)`` with long ``idx`` ``(B, *S)`` -> ``(B, *S, D)``."""
    b, d = tokens.shape[0], tokens.shape[-1]
    flat = idx.reshape(b, -1)
    picked = torch.gather(tokens, 1, flat[..., None].expand(-1, -1, d))
    return picked.reshape(*idx.shape, d)


def ijepa_targets(target_tokens: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """Targets: the EMA encoder's patch outputs, layer-normed over features (no affine), at ``target_idx``.

    ``target_tokens`` ``(B, N, D)`` from the full image; ``target_idx`` ``(B, M, K)`` -> ``(B, M, K, D)``.
    """
    normed = F.layer_norm(target_tokens, target_tokens.shape[-1:])
    return gather_tokens(normed, target_idx)


def predict_blocks(predictor, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """Predict every target block from the context, one predictor pass per (image, block) pair.

    Each block is predicted on its own (as in I-JEPA: target blocks do not attend to each other),
    batched by repeating the context M times: ``(B, M, K_tgt, D)``.
    """
    b, m, k = target_idx.shape
    ctx = context.repeat_interleave(m, dim=0)
    ctx_idx = context_idx.repeat_interleave(m, dim=0)
    out = predictor(ctx, ctx_idx, target_idx.reshape(b * m, k))
    return out.reshape(b, m, k, -1)


def ijepa_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared L2 error between predicted and target patch representations."""
    return F.mse_loss(predictions, targets.detach())


class PositionCenter(nn.Module):
    """A running mean of the target encoder's tokens at every patch position, removed from the targets.

    On small, centred images (MNIST) most of a patch token's variance is where the patch is, not what
    it shows: background positions look alike in every image. Predicting that part needs no more than
    the positional embeddings, so it teaches the encoder nothing about content. Subtracting the
    per-position mean (before the targets' layer norm) leaves what differs between images. The mean
    is an EMA over global batches, ``c <- m c + (1 - m) mean_batch(tokens)``, all-reduced across ranks
    like DINO's centre, so DDP and one process agree.

    Args:
        positions, dim: the token grid's length ``N`` and width ``D``.
        momentum: EMA momentum ``m`` of the centre.
    """

    def __init__(self, positions: int, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(positions, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens - center`` for ``(B, N, D)`` tokens (the first batch initialises the centre to its own mean)."""
        if not bool(self.initialised):
            self.update(tokens)
        return tokens - self.center

    @torch.no_grad()
    def update(self, tokens: torch.Tensor) -> None:
        """Fold the global batch's per-position mean of ``tokens`` into the centre."""
        total = tokens.detach().to(self.center.dtype).sum(0)
        total, count = sum_over_ranks(total, total.new_tensor(float(tokens.shape[0])))
        mean = total / count
        if bool(self.initialised):
            self.center.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)
        else:
            self.center.copy_(mean)
            self.initialised.fill_(True)
