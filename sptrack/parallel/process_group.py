"""The end of the default process group: destroyed before interpreter exit, after a barrier.

Left to interpreter exit, a gloo group's C++ threads are torn down by static destructors in no set
order, and a rank aborted now and then ("terminate called without an active exception") after its
work had succeeded: about one 2-process sweep in four (0 of 24 once the sweep closed its group
with :func:`close_default_group`), and one 2-process DDP training in four through the CLI, whose
group Lightning creates and leaves to an ``atexit`` hook that destroys it without a barrier.
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
