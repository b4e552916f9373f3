"""What happens at an accumulation boundary: per-optimizer steps, clipping, schedulers and lr logging.

Functions of the :class:`~sptrack.module.step_state.StepState` that owns the slots; see
:class:`sptrack.Module` for the semantics.
"""

from __future__ import annotations

import torch

from sptrack.errors import ConfigError
from sptrack.module.lightning_glue import count_optimizer_step, run_before_optimizer_step_hooks
from sptrack.module.slots import OptimizerSlot
from sptrack.optim.schedulers import is_plateau


def _noop_closure() -> None:
    return None


def step_boundary(state, module, trainer, boundary: int) -> None:
    """Step the optimizers due at 1-based boundary ``boundary``, then count one ``global_step``.

    Without fp16 loss scaling each step goes through ``strategy.optimizer_step`` (its precision
    plugin calls the ``on_before_optimizer_step`` hooks, where the Module clips). With it, the
    GradScaler is driven here (see :mod:`sptrack.module.scaling`): unscale every optimizer, clip
    and ``scaler.step`` those due, then one ``scaler.update()`` for the boundary.
    """
    scaling = state.scaling
    scaled = scaling.active
    strategy = trainer.strategy
    # Learning rates are only collected when someone receives them (see log_to_loggers).
    used_lrs = {} if trainer.loggers and trainer.is_global_zero else None
    for slot in state.slots:
        steps = slot.steps_at(boundary)
        if scaled:
            window_finite = scaling.unscale(slot, steps)
        if not steps:
            continue
        if used_lrs is not None:
            used_lrs[f"hparams/lr_{slot.name}"] = slot.lr  # the lr this step uses, before the scheduler moves it
        if scaled:
            run_before_optimizer_step_hooks(trainer, slot.optimizer)
            scaling.step(slot, window_finite)
        else:
            frequency = slot.config.frequency
            if frequency > 1:
                # The gradient of the last `frequency` boundaries was summed; step on its mean.
                for p in slot.params:
                    if p.grad is not None:
                        p.grad.div_(frequency)
            strategy.optimizer_step(slot.optimizer, closure=_noop_closure, model=module)
        slot.optimizer.zero_grad(set_to_none=True)
        if slot.scheduler is not None and slot.config.interval == "step":
            step_scheduler(slot, trainer)
    if scaled:
        scaling.update()
    count_optimizer_step(trainer)
    if used_lrs:
        log_to_loggers(trainer, used_lrs, step=boundary - 1)


def log_to_loggers(trainer, metrics: dict, step: int) -> None:
    """Send ``metrics`` to every logger at ``step``, on global rank 0 only.

    ``self.log`` would re-send the last value at every later batch (Lightning keeps on-step
    values until the epoch ends) and obeys ``log_every_n_steps``; learning rates must appear
    exactly at the optimizer's own steps. ``step`` is the axis Lightning uses for the batch's
    other metrics (``global_step`` before this boundary).
    """
    if not metrics or not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def clip_slot(slot: OptimizerSlot) -> None:
    """Clip ``slot``'s gradients by its ``clip_val``/``clip_algorithm`` (no-op without a value)."""
    if not slot.clip_val:
        return
    grads = [p for p in slot.params if p.grad is not None]
    if slot.clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(grads, slot.clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(grads, slot.clip_val)


def step_scheduler(slot: OptimizerSlot, trainer) -> None:
    """Step ``slot``'s scheduler; ReduceLROnPlateau on its ``monitor`` metric."""
    if not is_plateau(slot.config.scheduler):
        slot.scheduler.step()
        return
    metrics = trainer.callback_metrics
    monitor = slot.config.monitor
    if monitor not in metrics:
        raise ConfigError(
            slot.config.key_of("monitor"),
            f"ReduceLROnPlateau watches {monitor!r}, which was not logged before its {slot.config.interval} ended. "
            f"Logged metrics: {sorted(metrics) or 'none'}.",
            f"Log it with self.log({monitor!r}, ...) or set 'monitor' to one of these.",
        )
    slot.scheduler.step(float(metrics[monitor]))
