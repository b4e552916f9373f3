"""Gradient sync policy: which micro-batches' backward passes communicate gradients across ranks.

Averaging gradients over ranks is linear, so one all-reduce (DDP) or reduce-scatter (FSDP2) of the
gradients summed over an accumulation window equals one per micro-batch: only a micro-batch that
ends a window needs to synchronise. An optimizer with ``frequency=f`` steps every f boundaries on
gradients synchronised at each of them, which is the same average.

One exception keeps checkpoints exact: the last micro-batch of an epoch also synchronises when it
ends no window. Under FSDP2 unsynchronised gradients live in FSDP's unsharded buffers, not in
``param.grad``, so an epoch-end checkpoint would miss them. (Under DDP a checkpoint written inside
a window stores every rank's own gradients, see ``StepState.state_dict``; under FSDP2 one written
inside a window and an epoch warns.) The policy depends on positions only, so a straight run and a
resumed one synchronise at the same micro-batches.
"""

from __future__ import annotations

from typing import Optional

from torch import nn


class GradientSync:
    """Turns the strategy's gradient synchronisation on and off per micro-batch.

    DDP: ``require_backward_grad_sync`` of the ``DistributedDataParallel`` wrapper (what ``no_sync``
    toggles). Under manual optimization Lightning's ``DDPStrategy.pre_backward`` arms DDP's reducer
    (``prepare_for_backward``) only when that flag is set, so the flag set right before
    ``manual_backward`` decides whether that backward all-reduces (counted with a DDP comm hook in
    tests/test_sync_policy.py and tests/test_distributed.py; setting it before DDP's forward instead
    lets extra all-reduces through).
    FSDP2: ``set_requires_gradient_sync`` on every ``fully_shard`` unit, read by its post-backward.

    ``always=True`` synchronises every micro-batch (the behaviour before this policy; used by
    ``bench/comm.py`` as its baseline).
    """

    def __init__(self, always: bool = False):
        self.always = always
        self._ddp: Optional[nn.Module] = None
        self._fsdp_units: list[nn.Module] = []
        self._current: Optional[bool] = None

    @property
    def active(self) -> bool:
        """Whether a data-parallel wrapper was found whose synchronisation this policy controls."""
        return self._ddp is not None or bool(self._fsdp_units)

    def bind(self, strategy_model: Optional[nn.Module], module: nn.Module) -> None:
        """Find what to control: the DDP wrapper (``trainer.strategy.model``) or the FSDP2 units."""
        from torch.distributed.fsdp import FSDPModule
        from torch.nn.parallel import DistributedDataParallel

        self._ddp = strategy_model if isinstance(strategy_model, DistributedDataParallel) else None
        self._fsdp_units = [m for m in module.modules() if isinstance(m, FSDPModule)]
        self._current = None

    def set(self, sync: bool) -> None:
        """Synchronise (or not) the gradients of the next backward pass."""
        sync = sync or self.always
        if self._ddp is not None:
            # Written every time: under manual optimization Lightning's DDP forward redirection sets
            # the flag back to True after every training_step (_DDPForwardRedirection).
            self._ddp.require_backward_grad_sync = sync
        elif sync is not self._current:
            for unit in self._fsdp_units:
                unit.set_requires_gradient_sync(sync, recurse=False)
        self._current = sync

    @property
    def is_ddp(self) -> bool:
        """Whether the controlled wrapper is DDP (replicated gradients in ``param.grad``)."""
        return self._ddp is not None

    @property
    def skipped(self) -> bool:
        """Whether the last backward left this rank's gradients unsynchronised."""
        return self._current is False

    def release(self) -> None:
        """Leave the wrapper synchronising (its default) and forget it."""
        if self.active:
            self.set(True)
        self._ddp, self._fsdp_units, self._current = None, [], None


def window_ends(micro_batch: int, accumulate: int) -> bool:
    """Whether the 1-based ``micro_batch`` of the run ends an accumulation window."""
    return micro_batch % accumulate == 0


def needs_sync(micro_batch: int, accumulate: int, ends_epoch: bool) -> bool:
    """The policy: synchronise the backward of 1-based ``micro_batch`` if it ends a window or an epoch."""
    return ends_epoch or window_ends(micro_batch, accumulate)

