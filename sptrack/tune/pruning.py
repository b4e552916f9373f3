"""Pruning for label-free pretraining: report every K optimizer steps, decide on rank 0, stop together.

Optuna's Lightning callback reports only at validation end, which SSL runs without a validation
loop never reach, and under plain DDP every rank would consult its own trial. :class:`TrialMonitor`
instead

* reports the monitored metric every ``every_n_steps`` optimizer steps (``trainer.global_step``):
  an ``eval/...`` metric (online probe / kNN / RankMe on held-out data) is computed by the
  validation the sweep schedules every K training batches (Lightning's ``val_check_interval``)
  and reported when it ends; a training metric (``train/probe_acc``, ...) is averaged over the
  last K steps and reported at the K-th;
* asks ``trial.should_prune()`` on rank 0 only and broadcasts the answer, so every rank sets
  ``trainer.should_stop`` after the same batch (a pruned trial ends before its last step);
* checks the loss of every step on every rank; if any rank's loss is NaN/inf, all ranks raise
  :class:`NonFiniteLossError` at the same step (the trial is FAIL, the study goes on);
* at the fit's final batch asks Lightning to stop, which makes it validate once more, so the
  objective is measured on the final weights.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import lightning.pytorch as pl
import torch

from sptrack.module.lightning_glue import is_last_batch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (raised on every rank at the same step)."""


def _number(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def is_eval_metric(name: str) -> bool:
    """Metrics computed by validation (the evaluation callbacks log them under ``eval/``)."""
    return name.startswith("eval/")


class TrialMonitor(pl.Callback):
    """Report ``monitor`` to ``trial`` every ``every_n_steps`` optimizer steps; prune and stop together.

    Args:
        trial: the ``optuna.Trial`` on rank 0; ``None`` on the other ranks (they never touch it).
        monitor: the reported metric (higher/lower is better as for the study's direction).
        every_n_steps: reporting period in optimizer steps.
        objective: the final metric; read in ``on_train_end`` into :attr:`value`.
        warmup: no prune before this fraction of the trial's optimizer steps (earlier reports
            still reach the pruner, as references for later trials).

    After the fit: :attr:`pruned_at` (the step a prune was decided, or None), :attr:`reported`
    (``{step: value}`` as reported), :attr:`value` (the objective, None when not logged) and
    :attr:`signals` (rank 0): at each report step every ``eval/...`` metric then logged and
    ``train/loss``, the mean training loss since the previous report, the candidates of what
    predicts a trial's end (``bench/sweeps.py`` ranks them).
    """

    def __init__(self, trial: Any, monitor: str, every_n_steps: int, objective: str, warmup: float = 0.0):
        self.trial = trial
        self.warmup = float(warmup)
        self.monitor = monitor
        self.every_n_steps = int(every_n_steps)
        self.objective = objective
        self.pruned_at: Optional[int] = None
        self.reported: dict[int, float] = {}
        self.value: Optional[float] = None
        self.last_step: int = 0
        self.signals: dict[int, dict[str, float]] = {}
        self._window: list[float] = []
        self._loss_sum: Optional[torch.Tensor] = None  # summed on the device: no host sync per step
        self._loss_count = 0
        self._next_report = self.every_n_steps
        self._warned = False

    # ------------------------------------------------------------------ reporting and pruning
    def _decide(self, trainer: pl.Trainer, value: Optional[float], allow_prune: bool = True) -> None:
        step = int(trainer.global_step)
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            if value is not None and math.isfinite(value):
                self.trial.report(value, step)
                self.reported[step] = value
                self.signals[step] = self._signals(trainer)
                warm = step >= self.warmup * trainer.estimated_stepping_batches
                prune = allow_prune and warm and bool(self.trial.should_prune())
            elif not self._warned:
                self._warned = True
                shown = ", ".join(sorted(k for k in trainer.callback_metrics)) or "none yet"
                print(f"sptrack.tune: metric {self.monitor!r} is not logged (logged: {shown}); nothing reported to the pruner.")
        # Rank 0 decides; every rank stops after the same batch.
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = step
            trainer.should_stop = True

    def _signals(self, trainer: pl.Trainer) -> dict[str, float]:
        found = {k: _number(v) for k, v in trainer.callback_metrics.items() if is_eval_metric(k)}
        if self._loss_count:
            found["train/loss"] = float(self._loss_sum) / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return {k: v for k, v in found.items() if v is not None and math.isfinite(v)}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Non-finite check (all ranks agree), windowed training-metric reports, final-batch stop."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(f"the training loss is not finite at step {trainer.global_step}.")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            detached = loss.detach().float()
            self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
            self._loss_count += 1
        self.last_step = int(trainer.global_step)
        if not is_eval_metric(self.monitor):
            value = _number(trainer.callback_metrics.get(self.monitor))
            if value is not None and math.isfinite(value):
                self._window.append(value)
            if trainer.global_step >= self._next_report:
                self._next_report = trainer.global_step + self.every_n_steps
                self._decide(trainer, sum(self._window) / len(self._window) if self._window else None)
                self._window = []
        if self._final_batch(trainer) and not trainer.should_stop:
            # should_stop makes Lightning validate once more: the objective of the final weights.
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report an ``eval/...`` monitor after each scheduled validation during the fit."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or not is_eval_metric(self.monitor) or self.pruned_at is not None:
            return
        if trainer.global_step == 0:
            return
        # The validation after the final batch is reported, but pruning a finished trial gains nothing.
        self._decide(trainer, _number(trainer.callback_metrics.get(self.monitor)), allow_prune=not self._final_batch(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the objective (identical on every rank: the evaluation callbacks sync it)."""
        self.value = _number(trainer.callback_metrics.get(self.objective))
        self.last_step = int(trainer.global_step)

    @staticmethod
    def _final_batch(trainer: pl.Trainer) -> bool:
        if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            return True
        last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        return bool(last_epoch and is_last_batch(trainer))
