"""The world as this process sees it, and collectives that also work without a process group.

Checkpoint state that differs per rank (generators, unsynchronised gradients) is gathered to every
rank with these, so that rank 0, which alone writes the checkpoint, holds all of it; losses computed
on the global batch (SIGReg, KoLeo) sum over ranks with gradients through :func:`global_sum`;
global-batch statistics (DINO's and I-JEPA's centres) through :func:`sum_over_ranks`.
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


@torch.no_grad()
def sum_over_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over ranks, all in one all-reduce of their concatenation (no gradient).

    The tensors must share a dtype (a count goes in as a one-element tensor of that dtype); they are
    returned as new tensors of their own shapes, in order. Without a process group: copies.
    """
    if len({t.dtype for t in tensors}) > 1:
        raise TypeError(f"sum_over_ranks needs one dtype, got {sorted(str(t.dtype) for t in tensors)}")
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    if world_and_rank()[0] > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


class _SumOverRanks(torch.autograd.Function):
    """Sum over the ranks of the default group; the backward sums the incoming gradients the same way.

    Written here rather than taken from ``torch.distributed.nn.functional``: that module binds its
    ``group`` default when it is first imported, so imported after ``init_process_group`` it holds the
    live default group for good. ``destroy_process_group`` then frees nothing, gloo's threads outlive
    the group, and one of them dropping its last tensor while the interpreter finalises aborts the
    rank after its work succeeded (README, "Launching"). This one looks the group up at every call.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on the sum, so each input's gradient is the sum of all ranks' gradients.
        return _SumOverRanks.apply(grad)


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with gradients flowing back to every rank (identity on one process)."""
    if world_and_rank()[0] > 1:
        return _SumOverRanks.apply(x)
    return x
