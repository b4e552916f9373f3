"""The end of the default process group: destroyed before interpreter exit, after a barrier.

A gloo group alive at interpreter exit keeps its worker threads, and one of them releasing a tensor
(which needs the GIL) while the interpreter finalises is ended mid-destructor: the rank aborts after
its work succeeded ("terminate called without an active exception"). This happened to about one
2-process sweep in four (0 of 24 once the sweep closed its group with :func:`close_default_group`),
and to one 2-process DDP training in four through the CLI, whose group Lightning creates and leaves
to an ``atexit`` hook that destroys it without a barrier. Destroying only ends the threads when
nothing else holds the group: :func:`sptrack.parallel.collectives.global_sum` holds none; under
FSDP2, DTensor's own caches (redistribution planners, mesh topology and more) keep the device mesh
and its groups alive, so there the threads live on to interpreter exit and the abort can still
happen (once in five suites on one day: the two-process FSDP2 sweep test).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def close_default_group(barrier: bool = True) -> bool:
    """Wait for every rank (unless ``barrier`` is False), then destroy the default process group.

    Returns whether there was a group to destroy.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    return True


@contextmanager
def closes_process_group() -> Iterator[None]:
    """Destroy the default process group created inside the block, when the block ends.

    A group that existed before the block is not this block's and is left alone. When the block
    raises, the group is destroyed without a barrier (the other ranks may never reach it) and the
    exception goes on.
    """
    import torch.distributed as dist

    existed = dist.is_available() and dist.is_initialized()
    try:
        yield
    except BaseException:
        if not existed:
            close_default_group(barrier=False)
        raise
    if not existed:
        close_default_group()
