"""2-D positional embeddings for patch grids: fixed sin-cos and resampling of learned tables.

Both kinds are defined over the *extent* of the training grid, so a smaller grid (a local crop
resized to fewer patches) samples the same continuous positions more coarsely instead of seeing
only the top-left corner of the table.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from sptrack.errors import ConfigError


def grid_coordinates(base: int, size: int) -> torch.Tensor:
    """Positions (in base-grid units) of the ``size`` cell centres spread over ``base`` cells.

    ``size == base`` gives ``0, 1, ..., base-1``; other sizes follow the same convention as
    ``F.interpolate(..., align_corners=False)``, so sin-cos and learned tables resample alike.
    """
    return (torch.arange(size, dtype=torch.float64) + 0.5) * (base / size) - 0.5


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    # MAE/I-JEPA convention: half sines, half cosines, frequencies 1/10000^(i/(dim/2)).
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, base_grid: Sequence[int], grid: Sequence[int] | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of shape ``(gh*gw, dim)`` in row-major patch order.

    ``base_grid`` is the training grid ``(h, w)``; ``grid`` (default: the base grid) is the grid to
    embed, sampled over the base grid's extent. The first half of the channels encodes the row,
    the second half the column.
    """
    if dim % 4:
        raise ConfigError("embed_dim", f"sin-cos positional embeddings need a multiple of 4, got {dim}.", "Use e.g. 128 or 192, or pos_embed='learned'.")
    bh, bw = base_grid
    gh, gw = grid if grid is not None else base_grid
    rows = _sincos_1d(dim // 2, grid_coordinates(bh, gh))  # (gh, dim/2)
    cols = _sincos_1d(dim // 2, grid_coordinates(bw, gw))  # (gw, dim/2)
    table = torch.cat([rows[:, None, :].expand(gh, gw, -1), cols[None, :, :].expand(gh, gw, -1)], dim=-1)
    return table.reshape(gh * gw, dim).float()


def resample_table(table: torch.Tensor, base_grid: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Bicubically resample a learned ``(1, bh*bw, D)`` table to ``(1, gh*gw, D)``.

    Returns ``table`` itself when the grids match, so the training resolution stays bit-exact and
    keeps its gradient path simple.
    """
    bh, bw = base_grid
    gh, gw = grid
    if (gh, gw) == (bh, bw):
        return table
    dim = table.shape[-1]
    image = table.reshape(1, bh, bw, dim).permute(0, 3, 1, 2)
    # Bicubic is not implemented for every low-precision dtype on every device; resample in fp32.
    out = F.interpolate(image.float(), size=(gh, gw), mode="bicubic", align_corners=False).to(table.dtype)
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)
