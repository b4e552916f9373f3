"""I-JEPA predictor: predicts target-patch representations from context tokens only."""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.nn.pos_embed import sincos_2d
from sptrack.nn.transformer import build_blocks, init_vit_weights


def _grid(num_patches: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(num_patches, int):
        side = math.isqrt(num_patches)
        if num_patches < 1 or side * side != num_patches:
            raise ConfigError("num_patches", f"an int must be a square number of patches, got {num_patches}.", "Pass the grid as (rows, cols).")
        return side, side
    grid = tuple(num_patches)
    if len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise ConfigError("num_patches", f"must be a square int or (rows, cols), got {num_patches!r}.")
    return grid


class ViTPredictor(nn.Module):
    """Narrow transformer mapping context tokens to predictions of the target tokens (Assran et al. 2023).

    The context tokens (encoder output, ``embed_dim``) are projected to ``predictor_dim`` and get
    the sin-cos positional embedding of their patch; each target position is a shared learned
    mask token plus the positional embedding of the target patch. Only context tokens and target
    *positions* enter, so the prediction cannot depend on target pixels.

    Args:
        num_patches: patch grid of the encoder, as a square count (49) or ``(rows, cols)``.
        embed_dim: encoder width (input and output width).
        predictor_dim, depth, num_heads, mlp_ratio: predictor transformer size.
    """

    def __init__(
        self,
        num_patches: Union[int, Sequence[int]],
        embed_dim: int,
        predictor_dim: int = 96,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.grid = _grid(num_patches)
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim = embed_dim
        self.embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("pos_table", sincos_2d(predictor_dim, self.grid)[None], persistent=False)
        self.blocks = build_blocks(predictor_dim, depth, num_heads, mlp_ratio, 0.0)
        self.norm = nn.LayerNorm(predictor_dim, eps=1e-6)
        self.proj = nn.Linear(predictor_dim, embed_dim)
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _positions(self, idx: torch.Tensor, batch: int, key: str) -> torch.Tensor:
        if idx.ndim != 2 or idx.shape[0] != batch or idx.dtype != torch.long:
            raise ConfigError(key, f"must be a LongTensor (B={batch}, K), got {idx.dtype} of shape {tuple(idx.shape)}.")
        table = self.pos_table.expand(batch, -1, -1)
        return torch.gather(table, 1, idx[..., None].expand(-1, -1, table.shape[-1]))

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Predict target tokens.

        Args:
            context: encoder tokens of the context patches, ``(B, K_ctx, embed_dim)``.
            context_idx: their patch indices, long ``(B, K_ctx)``.
            target_idx: patch indices to predict, long ``(B, K_tgt)``.

        Returns:
            ``(B, K_tgt, embed_dim)`` predictions, in the order of ``target_idx``.
        """
        if context.ndim != 3 or context.shape[-1] != self.embed_dim:
            raise ConfigError("context", f"must be (B, K, {self.embed_dim}), got {tuple(context.shape)}.")
        b = context.shape[0]
        ctx = self.embed(context) + self._positions(context_idx, b, "context_idx").to(context.dtype)
        tgt = self.mask_token.to(ctx.dtype) + self._positions(target_idx, b, "target_idx").to(ctx.dtype)
        x = torch.cat([ctx, tgt], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, ctx.shape[1]:]))
