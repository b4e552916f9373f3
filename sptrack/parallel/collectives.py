"""The world as this process sees it, and an object gather that also works without a process group.

Checkpoint state that differs per rank (generators, unsynchronised gradients) is gathered to every
rank with these, so that rank 0, which alone writes the checkpoint, holds all of it.
"""

from __future__ import annotations

from typing import Any

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
