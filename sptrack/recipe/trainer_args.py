"""The Lightning Trainer arguments of a recipe config, shared by a CLI run and a sweep trial."""

from __future__ import annotations

from typing import Any

from sptrack.parallel.launch import resolve_devices
from sptrack.recipe.config import RecipeConfig


def validation_interval(every: int, max_epochs: int) -> int:
    """The epochs between validations: the largest divisor of ``max_epochs`` not above ``every``.

    Lightning validates after epochs ``every, 2 * every, ...`` only; this way the last epoch is always
    one of them, so a run ends with its online metrics (``every=5``: 30 epochs every 5, 12 every 4, 1 every 1).
    """
    if max_epochs is None or max_epochs < 1:
        return every  # a step-bounded run: no last epoch to align to
    return max(d for d in range(1, min(every, max_epochs) + 1) if max_epochs % d == 0)


def trainer_kwargs(cfg: RecipeConfig) -> dict:
    """Lightning Trainer arguments from ``cfg.trainer`` (None-valued limits left to Lightning; devices and
    num_nodes resolved against the launcher, see :mod:`sptrack.parallel.launch`)."""
    t = cfg.trainer
    devices, num_nodes = resolve_devices(t.devices, t.num_nodes)
    kwargs: dict[str, Any] = dict(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=t.strategy,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=validation_interval(t.check_val_every_n_epoch, t.max_epochs),
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return kwargs
