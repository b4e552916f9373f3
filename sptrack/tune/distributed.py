"""Sweeps over several processes without ``ddp_spawn``: one study client (rank 0), same loop everywhere.

Every rank runs the same sweep loop. Rank 0 alone talks to the study: it asks for a trial, samples
its parameters and sends ``{"number", "params"}`` to the other ranks with
:func:`broadcast_object`; every rank builds the same config and trains its share of the trial; prune
and non-finite-loss decisions are broadcast during training (:mod:`sptrack.tune.pruning`); rank 0
tells the study the outcome. ``None`` from rank 0 ends the loop on every rank.

The process group is created here once, from the ``torchrun`` environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` or the elastic agent's store), before the first
trial; Lightning's DDP and FSDP2 strategies find it initialised and reuse it for every trial.

``--devices N --strategy ddp|fsdp2`` outside torchrun re-executes the same command under
``python -m torch.distributed.run --standalone --nproc_per_node N`` (:func:`relaunch_command`), so
the sweep loop, not Lightning's launcher, owns the processes. On several machines run
``torchrun --nnodes M --nproc_per_node N ... -m sptrack.run RECIPE --sweep ...`` on each: nothing
but the storage URL (and the tracker) is shared.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from sptrack.parallel.launch import detect

#: Set in sweep processes started by this module, so that they do not relaunch again.
LAUNCHED_ENV = "SPTRACK_SWEEP_LAUNCHED"


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_zero(self) -> bool:
        """Whether this process talks to the study and the trackers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


def world_from_env() -> World:
    """The ``torchrun`` rank and world size (a single process when they are unset)."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_process_group(accelerator: str = "cpu") -> World:
    """Initialise the default process group from the environment once (gloo; NCCL for CUDA tensors)."""
    import torch
    import torch.distributed as dist

    world = world_from_env()
    if world.distributed and not dist.is_initialized():
        use_cuda = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # One group serves both: CPU objects (the broadcasts here) over gloo, CUDA tensors over NCCL.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return world


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (a no-op for one process)."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if world.is_zero else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank (a no-op for one process)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def close_process_group(world: World) -> None:
    """Wait for every rank, then destroy the default process group this module created.

    Lightning destroys only the groups it created itself (in an ``atexit`` hook), and this one is
    created here; left to interpreter exit, rank 1 aborted in about one 2-process sweep in four
    (see :mod:`sptrack.parallel.process_group`, which training through the CLI uses too).
    """
    if world.distributed:
        from sptrack.parallel.process_group import close_default_group

        close_default_group()


def needs_relaunch(devices: int, strategy: str) -> bool:
    """``--devices N>1`` with ``ddp``/``fsdp2`` where no launcher (torchrun, SLURM) started the processes:
    the sweep must start its N processes itself. ``devices`` is the resolved value (an int)."""
    return devices > 1 and strategy in ("ddp", "fsdp2") and not under_torchrun() and detect().kind == "none"


def relaunch_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m sptrack.run ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "sptrack.run", *argv]


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run this sweep command as ``nproc`` torchrun processes; returns their exit code."""
    import subprocess

    env = {**os.environ, LAUNCHED_ENV: "1"}
    return subprocess.call(relaunch_command(nproc, argv), env=env)
