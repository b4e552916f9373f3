"""The Lightning Trainer arguments of a recipe config, shared by a CLI run and a sweep trial."""

from __future__ import annotations

from typing import Any

from sptrack.parallel.launch import resolve_devices
from sptrack.recipe.config import RecipeConfig


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
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return kwargs
