"""Gradients of unfinished accumulation/frequency cycles, saved in and restored from checkpoints."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch

from sptrack.parallel.collectives import gather_objects, world_and_rank
from sptrack.parallel.fsdp2 import to_full_tensor, to_local_like


def full_cpu_copies(tensors: Mapping[str, Optional[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of the tensors that are not None.

    A collective under FSDP2, so every rank must call it (Lightning runs ``on_save_checkpoint`` on
    all ranks).
    """
    return {name: to_full_tensor(t).detach().cpu().clone() for name, t in tensors.items() if t is not None}


def collect_pending_grads(named_params: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """:func:`full_cpu_copies` of the gradients that the parameters ``names`` still hold."""
    return full_cpu_copies({name: named_params[name].grad for name in names})


def attach_pending_grads(named_params: Mapping[str, torch.Tensor], pending: Mapping[str, torch.Tensor]) -> None:
    """Put saved gradients back on their parameters (sharded like the parameter under FSDP2)."""
    for name, grad in pending.items():
        if name not in named_params:
            raise KeyError(f"checkpoint holds a pending gradient for {name!r}, which this Module does not have.")
        param = named_params[name]
        param.grad = to_local_like(grad, param)


def gather_per_rank(pending: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every rank's ``pending`` gradients, in rank order (a collective: every rank must call it).

    Under DDP the micro-batches of a window before its synchronising one leave each rank with its
    own local gradients; a checkpoint written then (Lightning writes rank 0's) keeps all of them.
    """
    return gather_objects(pending)


def this_ranks_share(per_rank: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """This rank's entry of :func:`gather_per_rank`'s list.

    Resumed on another number of ranks, every rank gets the mean: the window's next synchronisation
    averages it with the rest of the window, the same gradient up to rounding.
    """
    world, rank = world_and_rank()
    if len(per_rank) == world:
        return per_rank[rank]
    names = set().union(*per_rank)
    return {n: sum(p[n] for p in per_rank if n in p) / len(per_rank) for n in names}
