"""``sptrack.Trainer``: Lightning's Trainer with sptrack's strategy names registered."""

from __future__ import annotations

import lightning.pytorch as pl

from sptrack.parallel.fsdp2 import register_fsdp2_strategy

register_fsdp2_strategy()


class Trainer(pl.Trainer):
    """Drop-in ``lightning.pytorch.Trainer`` (same arguments).

    ``sptrack.Module`` already makes plain Lightning Trainers accept ``accumulate_grad_batches`` and
    ``gradient_clip_val`` under manual optimization; this subclass adds ``strategy="fsdp2"`` without
    further imports and reports ``estimated_stepping_batches`` in accumulation boundaries.
    """

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer boundaries this fit will run (what ``global_step`` will reach)."""
        module = self.lightning_module
        batches = super().estimated_stepping_batches
        accumulate = getattr(module, "accumulate_grad_batches", 1)
        if accumulate <= 1 or batches == float("inf"):
            return batches
        if self.max_steps not in (None, -1):
            epochs = self.max_epochs if self.max_epochs not in (None, -1) else float("inf")
            return min(self.max_steps, epochs * self.num_training_batches // accumulate)
        return batches // accumulate
