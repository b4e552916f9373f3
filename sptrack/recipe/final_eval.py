"""The end-of-run linear evaluation, run as the fit's last callback so its numbers reach the trackers.

Lightning calls ``on_fit_end`` after the last epoch and before the loggers are finalised, so the
probe accuracies logged there land in the same tracked run as the training curves, as
``final/<name>`` points at the last global step.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

from sptrack.recipe.evaluate import linear_probe_accuracy, random_init_baseline


def plain_encoder(experiment):
    """The trained encoder as an ordinary module; under FSDP2 a gathered copy (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    from sptrack.parallel.fsdp2 import to_full_tensor

    encoder = experiment.encoder
    if not any(isinstance(p, DTensor) for p in encoder.parameters()):
        return encoder
    full = {k: to_full_tensor(v).cpu() for k, v in encoder.state_dict().items()}
    copy = experiment.encoder_factory()
    copy.load_state_dict(full)
    return copy


def final_linear_eval(experiment, encoder=None, baseline_inits: int = 5) -> dict[str, float]:
    """Held-out linear-probe accuracy of the trained encoder (or ``encoder``) and of random-init ones.

    ``random_init_linear_probe_acc`` is the mean over ``baseline_inits`` inits (``..._std`` their
    spread) and ``linear_probe_gain`` the trained accuracy minus that mean.
    """
    train_loader = experiment.probe_train_loader
    encoder = experiment.encoder if encoder is None else encoder
    heldout = experiment.final_eval_loader
    trained = linear_probe_accuracy(encoder, experiment.embed, train_loader, heldout)
    baseline = random_init_baseline(experiment.encoder_factory, experiment.embed, train_loader, heldout, baseline_inits)
    return {
        "linear_probe_acc": trained, "random_init_linear_probe_acc": baseline["mean"],
        "random_init_linear_probe_std": baseline["std"], "linear_probe_gain": trained - baseline["mean"],
    }


class FinalLinearEvaluation(pl.Callback):
    """At the end of ``fit``: the probe of the trained encoder against ``baseline_inits`` random inits.

    Every rank takes part in gathering an FSDP2-sharded encoder; global rank 0 alone probes, keeps
    the numbers in :attr:`results` (with the time spent in :attr:`seconds`) and logs them to the
    Trainer's loggers.
    """

    def __init__(self, experiment: Any, baseline_inits: int = 5):
        self.experiment = experiment
        self.baseline_inits = baseline_inits
        self.results: dict[str, float] = {}
        self.seconds = 0.0

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        encoder = plain_encoder(self.experiment)
        if trainer.is_global_zero:
            self.results = final_linear_eval(self.experiment, encoder, self.baseline_inits)
            metrics = {f"final/{k}": v for k, v in self.results.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.seconds = time.perf_counter() - started
