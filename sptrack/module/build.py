"""Build the optimizer slots of a Module from its parameter assignment: create optimizers and schedulers."""

from __future__ import annotations

import warnings
from typing import Sequence

import lightning.pytorch as pl
from torch import nn

from sptrack.errors import ConfigError
from sptrack.module.run_length import scheduler_run_length
from sptrack.module.slots import OptimizerSlot
from sptrack.optim.assign import Assignment
from sptrack.optim.config import OptimizerConfig
from sptrack.optim.schedulers import build_scheduler


def _slot(config: OptimizerConfig, index: int, named: list, matched: list, trainer, accumulate: int, with_schedulers: bool) -> OptimizerSlot:
    if not named:
        raise ConfigError(config.key_of("modules"), f"matches modules {matched} that own no trainable parameters.")
    params = [p for _, p in named]
    try:
        optimizer = config.optimizer.build(params)
    except (TypeError, ValueError) as err:
        raise ConfigError(config.key_of("optimizer"), f"building {config.optimizer.name} failed: {err}") from err
    declared_lr = float(optimizer.param_groups[0]["lr"])
    scheduler = None
    if config.scheduler is not None and with_schedulers:
        length = scheduler_run_length(trainer, accumulate, config.interval, config.frequency) if trainer else None
        scheduler = build_scheduler(config.scheduler, optimizer, length, config.key_of("scheduler"))
    return OptimizerSlot(
        config=config,
        index=index,
        optimizer=optimizer,
        param_names=[n for n, _ in named],
        matched_modules=list(matched),
        scheduler=scheduler,
        clip_val=config.gradient_clip_val,
        clip_algorithm=config.gradient_clip_algorithm,
        params=params,
        declared_lr=declared_lr,
    )


def build_slots(
    root: nn.Module,
    configs: Sequence[OptimizerConfig],
    callback_configs: Sequence[tuple[OptimizerConfig, str]],
    assignment: Assignment,
    trainer: "pl.Trainer",
    accumulate: int,
    strict: bool,
    with_schedulers: bool = True,
) -> list[OptimizerSlot]:
    """One slot per main optimizer (owning its parameters of ``assignment``), then one per callback
    module's optimizer.

    ``assignment`` is the regex assignment of ``configs`` on ``root``'s current parameters (see
    :meth:`sptrack.Module.parameter_assignment`); ``callback_configs`` pairs a config with the
    qualified name of the callback module it trains, and such optimizers own exactly that module's
    trainable parameters. ``with_schedulers=False`` builds optimizers only (for a plan printed
    before any Trainer exists).
    """
    if assignment.unassigned:
        listed = ", ".join(assignment.unassigned[:20]) + (" ..." if len(assignment.unassigned) > 20 else "")
        message = (
            f"{len(assignment.unassigned)} trainable parameters belong to no optimizer and will NOT be "
            f"trained: {listed}. Add a pattern under `optim` or freeze them (requires_grad=False)."
        )
        if strict:
            raise ConfigError("optim", message)
        warnings.warn(message, UserWarning, stacklevel=3)
    slots = [
        _slot(c, i, assignment.params[c.name], assignment.matched[c.name], trainer, accumulate, with_schedulers)
        for i, c in enumerate(configs)
    ]
    for config, module_name in callback_configs:
        module = root.get_submodule(module_name)
        named = [(f"{module_name}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
        slots.append(_slot(config, len(slots), named, [module_name], trainer, accumulate, with_schedulers))
    return slots
