"""The run length in accumulation boundaries: the one count behind ``estimated_stepping_batches``,
scheduler defaults (``T_max``, ``total_steps``) and the EMA momentum schedule."""

from __future__ import annotations

import math
from typing import Optional

import lightning.pytorch as pl

from sptrack.module.lightning_glue import lightning_estimate


def _limit(value) -> Optional[int]:
    return None if value in (None, -1) else int(value)


def boundaries_in_run(trainer: "pl.Trainer", accumulate: int) -> float:
    """Accumulation boundaries this fit runs, i.e. the ``global_step`` it ends at; ``inf`` if unbounded.

    sptrack's cycles run across epochs, so the count is ``max_epochs x batches per epoch // N``
    (not Lightning's per-epoch ``ceil(batches / N) x max_epochs``), capped by ``max_steps``.
    """
    lightning_estimate(trainer)  # makes Lightning size the train dataloader (num_training_batches)
    return boundaries_for(trainer.num_training_batches, trainer.max_epochs, trainer.max_steps, accumulate)


def boundaries_for(batches_per_epoch: float, max_epochs: Optional[int], max_steps: Optional[int], accumulate: int) -> float:
    """The count of :func:`boundaries_in_run` from its parts (``-1``/None: unbounded), for callers without a fit."""
    max_epochs, max_steps = _limit(max_epochs), _limit(max_steps)
    boundaries = math.inf
    if max_epochs is not None and math.isfinite(batches_per_epoch):
        boundaries = (max_epochs * int(batches_per_epoch)) // max(1, accumulate)
    if max_steps is not None:
        boundaries = min(boundaries, max_steps)
    return boundaries


def scheduler_run_length(trainer: "pl.Trainer", accumulate: int, interval: str, frequency: int) -> Optional[int]:
    """How often a scheduler steps in this fit: its optimizer's steps ('step') or epochs ('epoch').

    Derived from :func:`boundaries_in_run`; None when the run is unbounded.
    """
    boundaries = boundaries_in_run(trainer, accumulate)
    if not math.isfinite(boundaries):
        return None
    if interval == "step":
        return int(boundaries) // frequency
    per_epoch = trainer.num_training_batches
    if _limit(trainer.max_steps) is None and _limit(trainer.max_epochs) is not None:
        return _limit(trainer.max_epochs)
    return math.ceil(boundaries * accumulate / per_epoch) if math.isfinite(per_epoch) and per_epoch else None
