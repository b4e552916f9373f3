"""``StepState``: the one owner of everything a training step carries from one batch to the next.

It holds the optimizer slots, the accumulation settings taken over from the Trainer, the position
in the accumulation/frequency cycles (micro-batches of the whole run), the gradients of unfinished
cycles (in ``param.grad``, or in the fp16 windows of :class:`~sptrack.module.scaling.GradScaling`),
the clipping of each optimizer, the GradScaler's part and the gradient sync policy
(:class:`~sptrack.module.sync.GradientSync`), and checkpoints all of it with
:meth:`state_dict` / :meth:`load_state_dict`. ``sptrack.Module`` holds one and delegates to it;
what happens at a boundary is :func:`sptrack.module.stepping.step_boundary`.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional

import lightning.pytorch as pl
import torch

from sptrack.module.checkpointing import (
    attach_pending_grads,
    collect_pending_grads,
    full_cpu_copies,
    gather_per_rank,
    this_ranks_share,
)
from sptrack.module.lightning_glue import GradientSettings, is_last_batch
from sptrack.module.scaling import GradScaling
from sptrack.module.slots import OptimizerSlot
from sptrack.module.stepping import clip_slot, step_boundary, step_scheduler
from sptrack.module.sync import GradientSync, needs_sync, window_ends

#: Version of :meth:`StepState.state_dict` (1: micro_batches and pending_grads only).
STATE_VERSION = 2


class StepState:
    """Slots, cycle position, pending gradients, clipping, loss scaling and sync policy of a Module."""

    def __init__(self) -> None:
        self.slots: list[OptimizerSlot] = []
        self.settings = GradientSettings()
        #: Micro-batches trained so far in this run (across epochs and resumes).
        self.micro_batches = 0
        self.scaling = GradScaling()
        self.sync = GradientSync()
        self._syncing = False
        self._restored: dict = {}

    @property
    def accumulate(self) -> int:
        """Micro-batches per accumulation boundary."""
        return self.settings.accumulate_grad_batches

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Start a fit at micro-batch 0 with no pending gradients (a checkpoint may restore them)."""
        self.micro_batches = 0
        self._restored = {}
        self.scaling.windows = {}

    def bind(self, trainer: "pl.Trainer", module: torch.nn.Module) -> None:
        """At train start: the strategy's optimizers, clip defaults, scaler, sync target, restored gradients."""
        settings = self.settings
        # The raw optimizers Lightning holds may be new objects after strategy set-up; use those.
        for slot in self.slots:
            slot.optimizer = trainer.optimizers[slot.index]
            if slot.clip_val is None:
                slot.clip_val = settings.gradient_clip_val
            if slot.clip_algorithm is None:
                slot.clip_algorithm = settings.gradient_clip_algorithm or "norm"
        self.scaling.bind(trainer.scaler)
        self.sync.bind(trainer.strategy.model, module)
        self._syncing = self.sync.active
        if self._restored:
            named = dict(module.named_parameters())
            per_rank = self._restored.get("pending_grads_per_rank")
            pending = this_ranks_share(per_rank) if per_rank else self._restored.get("pending_grads", {})
            attach_pending_grads(named, pending)
            self.scaling.windows = {
                slot.name: [_to_local(window.get(n), named[n]) for n in slot.param_names]
                for slot in self.slots if (window := self._restored.get("scaled_windows", {}).get(slot.name))
            }
            self._restored = {}

    def release(self) -> None:
        """At teardown: leave the data-parallel wrapper synchronising every backward again."""
        self.sync.release()
        self._syncing = False

    # ------------------------------------------------------------------ the training step
    def before_backward(self, trainer: "pl.Trainer") -> None:
        """Set whether this micro-batch's backward synchronises gradients (see :mod:`sptrack.module.sync`)."""
        if self._syncing:
            self.sync.set(needs_sync(self.micro_batches + 1, self.accumulate, is_last_batch(trainer)))

    def after_backward(self, module, trainer: "pl.Trainer", boundary: int) -> None:
        """Count the micro-batch; at the end of a window run boundary ``boundary``'s steps."""
        self.micro_batches += 1
        if self.micro_batches % self.settings.accumulate_grad_batches == 0:  # window_ends, inlined: hot path
            step_boundary(self, module, trainer, boundary)

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping optimizer's gradients with its own settings (after AMP unscaling)."""
        slot = next((s for s in self.slots if s.optimizer is optimizer), None)
        if slot is not None:
            clip_slot(slot)

    def step_epoch_schedulers(self, trainer: "pl.Trainer") -> None:
        """Step every ``interval='epoch'`` scheduler once."""
        for slot in self.slots:
            if slot.scheduler is not None and slot.config.interval == "epoch":
                step_scheduler(slot, trainer)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, named_params: Mapping[str, torch.Tensor]) -> dict:
        """Cycle position, pending ``param.grad`` and fp16 window sums (full CPU tensors).

        A collective under FSDP2 (and under DDP mid-window), so every rank must call it.
        """
        names = [name for slot in self.slots for name in slot.param_names]
        pending = collect_pending_grads(named_params, names)
        per_rank = None
        if not window_ends(self.micro_batches, self.accumulate) and self.sync.skipped:
            per_rank = self._unsynced_per_rank(pending)
        windows = {
            slot.name: full_cpu_copies(dict(zip(slot.param_names, window)))
            for slot in self.slots if (window := self.scaling.windows.get(slot.name)) is not None
        }
        return {
            "version": STATE_VERSION,
            "micro_batches": self.micro_batches,
            "pending_grads": pending,
            "scaled_windows": windows,
            # Mid-window under DDP: each rank's own unsynchronised gradients (resume is bit-exact).
            "pending_grads_per_rank": per_rank,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the cycle position now; gradients are re-attached at train start (:meth:`bind`)."""
        self.micro_batches = int(state["micro_batches"])
        self._restored = {
            "pending_grads": dict(state.get("pending_grads", {})),
            "scaled_windows": dict(state.get("scaled_windows", {})),
            "pending_grads_per_rank": state.get("pending_grads_per_rank"),
        }

    def _unsynced_per_rank(self, pending: dict) -> Optional[list]:
        """Mid-window, gradients since the last sync differ per rank, and rank 0 alone writes the checkpoint."""
        if self.sync.is_ddp:
            return gather_per_rank(pending)
        if self.sync.active:
            warnings.warn(
                "Checkpoint written in the middle of an accumulation window under FSDP2: the gradients of the "
                "window's unsynchronised micro-batches stay in FSDP's buffers and are not saved, so resuming from "
                "it is not exact. Checkpoint at accumulation boundaries or epoch ends.",
                UserWarning,
                stacklevel=2,
            )
        return None


def _to_local(full: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    if full is None:
        return None
    from sptrack.parallel.fsdp2 import to_local_like

    return to_local_like(full, like)
