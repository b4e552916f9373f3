"""The world as this process sees it, and collectives that also work without a process group.

Checkpoint state that differs per rank (generators, unsynchronised gradients) is gathered to every
rank with these, so that rank 0, which alone writes the checkpoint, holds all of it; losses computed
on the global batch (SIGReg, KoLeo) sum over ranks with gradients through :func:`global_sum`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_and_rank() -> tuple[int, int]:
    """``(world size, global rank)`` of the default process group; ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_objects(obj: Any) -> list:
    """``obj`` of every rank, in rank order (a collective when there is more than one rank)."""
    world, _ = world_and_rank()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with gradients flowing back to every rank (identity on one process)."""
    if world_and_rank()[0] > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x, op=dist.ReduceOp.SUM)
    return x
