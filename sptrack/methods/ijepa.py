"""I-JEPA pieces (Assran et al. 2023): gather targets from the EMA encoder, predict them from the context."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
