"""Collectives for evaluation callbacks, through the Trainer's strategy (DDP, FSDP2 or one device).

Every function here is a collective when ``trainer.world_size > 1``: all ranks must call it in the
same order (Lightning runs the epoch-start/end hooks that use them on every rank).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def reduce_sum(trainer: "pl.Trainer", tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a copy; the input is left alone)."""
    tensor = tensor.detach().clone()
    if trainer.world_size <= 1:
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def gather_equal(trainer: "pl.Trainer", tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 a tensor that has the same shape on every rank."""
    if trainer.world_size <= 1:
        return tensor
    gathered = trainer.strategy.all_gather(tensor.contiguous())  # (world, *shape)
    return gathered.reshape(-1, *tensor.shape[1:])


def gather_rows(trainer: "pl.Trainer", rows: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 tensors whose first dimension differs between ranks.

    ``all_gather`` needs equal shapes, so each rank pads to the largest row count and the padding
    is cut away after the gather. Rank order is kept (rank 0's rows first).
    """
    if trainer.world_size <= 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = gather_equal(trainer, count).tolist()
    largest = max(counts)
    padded = rows.new_zeros((largest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = trainer.strategy.all_gather(padded.contiguous())  # (world, largest, ...)
    return torch.cat([gathered[r, :n] for r, n in enumerate(counts)], dim=0)
