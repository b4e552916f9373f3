"""What happens at an accumulation boundary: per-optimizer steps, clipping, schedulers and lr logging.

A mixin of :class:`sptrack.Module`, kept apart so the step semantics read in one place. It relies on
the Module's ``_slots`` (one :class:`OptimizerSlot` per optimizer) and on the attached Trainer.
"""

from __future__ import annotations

import torch

from sptrack.module.lightning_glue import count_optimizer_step
from sptrack.module.slots import OptimizerSlot
from sptrack.optim.schedulers import is_plateau


def _noop_closure() -> None:
    return None


class OptimizerStepping:
    """Steps the optimizers due at a boundary (see :class:`sptrack.Module` for the semantics)."""

    def _step_boundary(self, boundary: int) -> None:
        trainer = self._trainer
        strategy = trainer.strategy
        # Learning rates are only collected when someone receives them (see _log_to_loggers).
        used_lrs = {} if trainer.loggers and trainer.is_global_zero else None
        for slot in self._slots:
            if not slot.steps_at(boundary):
                continue
            frequency = slot.config.frequency
            if frequency > 1:
                # The gradient of the last `frequency` boundaries was summed; step on its mean.
                for p in slot.params:
                    if p.grad is not None:
                        p.grad.div_(frequency)
            if used_lrs is not None:
                used_lrs[f"hparams/lr_{slot.name}"] = slot.lr  # the lr this step uses, before the scheduler moves it
            strategy.optimizer_step(slot.optimizer, closure=_noop_closure, model=self)
            slot.optimizer.zero_grad(set_to_none=True)
            if slot.scheduler is not None and slot.config.interval == "step":
                self._step_scheduler(slot)
        count_optimizer_step(trainer)
        if used_lrs:
            self._log_to_loggers(used_lrs, step=boundary - 1)

    def _log_to_loggers(self, metrics: dict, step: int) -> None:
        """Send ``metrics`` to every logger at ``step``, on global rank 0 only.

        ``self.log`` would re-send the last value at every later batch (Lightning keeps on-step
        values until the epoch ends) and obeys ``log_every_n_steps``; learning rates must appear
        exactly at the optimizer's own steps. ``step`` is the axis Lightning uses for the batch's
        other metrics (``global_step`` before this boundary).
        """
        if not metrics or not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stepping optimizer's gradients (runs after AMP unscaling, before the step).

        Subclasses overriding this hook must call ``super().on_before_optimizer_step(optimizer)``.
        """
        slot = next((s for s in self._slots if s.optimizer is optimizer), None)
        if slot is None or not slot.clip_val:
            return
        grads = [p for p in slot.params if p.grad is not None]
        if slot.clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(grads, slot.clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(grads, slot.clip_val)

    def _step_scheduler(self, slot: OptimizerSlot) -> None:
        if not is_plateau(slot.config.scheduler):
            slot.scheduler.step()
            return
        metrics = self.trainer.callback_metrics
        monitor = slot.config.monitor
        if monitor not in metrics:
            raise KeyError(
                f"{slot.config.key}.monitor: ReduceLROnPlateau watches {monitor!r}, which was not logged "
                f"before its {slot.config.interval} ended. Logged metrics: {sorted(metrics) or 'none'}. "
                f"Log it with self.log({monitor!r}, ...) or set 'monitor' to one of these."
            )
        slot.scheduler.step(float(metrics[monitor]))

    def on_train_epoch_end(self) -> None:
        """Step every ``interval='epoch'`` scheduler once."""
        for slot in self._slots:
            if slot.scheduler is not None and slot.config.interval == "epoch":
                self._step_scheduler(slot)
