"""``sptrack.Trainer``: Lightning's Trainer with sptrack's strategy names registered."""

from __future__ import annotations

import lightning.pytorch as pl

from sptrack.module.lightning_glue import lightning_estimate
from sptrack.module.run_length import boundaries_in_run
from sptrack.parallel.fsdp2 import register_fsdp2_strategy

register_fsdp2_strategy()


class Trainer(pl.Trainer):
    """Drop-in ``lightning.pytorch.Trainer`` (same arguments) that also registers ``strategy="fsdp2"``.

    It reports ``estimated_stepping_batches`` in accumulation boundaries over the whole run. An
    ``sptrack.Module`` takes over ``accumulate_grad_batches``/``gradient_clip_val`` (which Lightning
    refuses under manual optimization); with accumulation it needs this Trainer and refuses a plain
    Lightning one, whose estimate would count micro-batches.
    """

    @property
    def estimated_stepping_batches(self) -> float:
        """Accumulation boundaries this fit will run (what ``global_step`` will reach).

        :func:`sptrack.module.run_length.boundaries_in_run` with an sptrack Module attached;
        Lightning's own estimate for any other LightningModule.
        """
        module = self.lightning_module
        if not getattr(module, "counts_in_boundaries", False):
            return lightning_estimate(self)
        return boundaries_in_run(self, int(module.accumulate_grad_batches))
