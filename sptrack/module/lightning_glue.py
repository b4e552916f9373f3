"""The only places where sptrack reaches into Lightning's private loop state or trainer settings.

Each function documents why no public hook does the job. Keep all such access here so a Lightning
upgrade has one file to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import lightning.pytorch as pl
import torch

#: Lightning sets ``LightningModule._current_fx_name`` around every hook call (about 30 writes per
#: training step); it is never a parameter, buffer or submodule, so the Module writes it directly
#: instead of through ``nn.Module.__setattr__``'s registration checks (~2 us per write).
HOT_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name"})


@dataclass
class GradientSettings:
    """Accumulation and clipping as the user asked the Trainer for them."""

    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None


def take_over_gradient_settings(trainer: "pl.Trainer") -> GradientSettings:
    """Read the Trainer's accumulation/clipping and neutralise them on the Trainer.

    Lightning refuses ``accumulate_grad_batches``/``gradient_clip_val`` for manual optimization
    (``__verify_manual_optimization_support``), although the Module implements both exactly. The
    check runs before any Module hook, right after the Trainer is attached, so the Module takes the
    settings over at attachment and returns them; a Trainer already taken over returns what it
    recorded then.
    """
    recorded = getattr(trainer, "_sptrack_gradient_settings", None)
    if recorded is not None:
        return recorded
    algorithm = getattr(trainer, "gradient_clip_algorithm", None)
    requested = GradientSettings(
        accumulate_grad_batches=int(trainer.accumulate_grad_batches),
        gradient_clip_val=trainer.gradient_clip_val,
        # Lightning stores the algorithm as a str-valued enum; keep the plain string for tables/trackers.
        gradient_clip_algorithm=getattr(algorithm, "value", algorithm),
    )
    trainer.accumulate_grad_batches = 1
    trainer.gradient_clip_val = None
    trainer._sptrack_gradient_settings = requested
    return requested


def restore_gradient_settings(trainer: "pl.Trainer") -> None:
    """Give the Trainer back the settings that :func:`take_over_gradient_settings` neutralised."""
    recorded = getattr(trainer, "_sptrack_gradient_settings", None)
    if recorded is None:
        return
    trainer.accumulate_grad_batches = recorded.accumulate_grad_batches
    trainer.gradient_clip_val = recorded.gradient_clip_val
    del trainer._sptrack_gradient_settings


def count_optimizer_step(trainer: "pl.Trainer") -> None:
    """Advance ``trainer.global_step`` by exactly one.

    In manual optimization Lightning derives ``global_step`` from the number of
    ``LightningOptimizer.step()`` calls, so a batch that steps two optimizers would count twice
    (Lightning issue 17958) and one that steps none would not count. sptrack steps the raw
    optimizers through the strategy and counts one step per accumulation boundary here, which also
    makes ``max_steps`` and checkpoint ``global_step`` use that unit.
    """
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def set_logging_step(trainer: "pl.Trainer", step: int) -> None:
    """Make the metrics of the current batch go to loggers at ``step``.

    Lightning's logger step (``_batches_that_stepped``) counts batches once the Trainer's
    accumulation is neutralised; with accumulation the tracker axis must count accumulation
    boundaries like ``global_step``. Lightning adds one after the batch, so pass ``global_step``
    as it was before this batch's boundary.
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def attached_trainer(module: "pl.LightningModule") -> Optional["pl.Trainer"]:
    """The Trainer ``module`` is attached to, or None, without the attachment check.

    ``LightningModule.trainer`` raises when no Trainer is attached (and re-checks on every read);
    the training step reads it once per micro-batch, and teardown must tell "none" from "one".
    """
    return module._trainer


def is_last_batch(trainer: "pl.Trainer") -> bool:
    """Whether the batch being trained is the last one of its epoch (Lightning's own flag).

    No public property tells it; the fit loop's batch progress knows it also for loaders without
    a length.
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def run_before_optimizer_step_hooks(trainer: "pl.Trainer", optimizer: torch.optim.Optimizer) -> None:
    """Call every callback's, then the Module's ``on_before_optimizer_step(optimizer)``, as Lightning does.

    Under fp16 loss scaling sptrack drives the GradScaler itself (one ``update()`` per accumulation
    boundary, see :mod:`sptrack.module.scaling`) instead of ``strategy.optimizer_step``, whose
    precision plugin would update the scale after every optimizer. Lightning's hook dispatchers
    are private; using them keeps what they add (``_current_fx_name`` for ``self.log`` inside the
    hook, profiler sections) identical to the plugin path.
    """
    from lightning.pytorch.trainer import call

    call._call_callback_hooks(trainer, "on_before_optimizer_step", optimizer)
    call._call_lightning_module_hook(trainer, "on_before_optimizer_step", optimizer)




def lightning_estimate(trainer: "pl.Trainer"):
    """Lightning's own ``estimated_stepping_batches`` (also sizes the train dataloader when needed)."""
    return pl.Trainer.estimated_stepping_batches.fget(trainer)


def batches_done_in_epoch(trainer: "pl.Trainer") -> int:
    """Training batches of the current epoch already trained (their ``on_train_batch_end`` included).

    The loop's own progress, not a loader's count: Lightning's data fetcher has already fetched one
    batch more than the loop has trained when a checkpoint is written. No public accessor exists.
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def fit_runs_validation(trainer: "pl.Trainer") -> bool:
    """Whether this ``fit`` has a validation loop (a val dataloader given, or ``val_dataloader`` defined).

    Known at ``setup``, before Lightning loads the val dataloader on the first validation; the only
    record of what ``fit`` was given until then is the loop's private data source.
    """
    if trainer.limit_val_batches == 0:
        return False
    return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())
