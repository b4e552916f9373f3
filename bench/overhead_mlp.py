"""Workload A trials: the MLP of :mod:`mlp_workload` through sptrack.Module and through plain Lightning.

Every trial builds the same initial model (seed 0), trains one epoch over the same batches and
returns ``epoch_s`` (first to last training step, measured by a callback at epoch start/end),
``epoch_cpu_s`` (CPU time of the process over the same span: with one torch thread, the work done,
much less disturbed than wall time by other jobs on a shared machine),
``fit_s`` (Trainer construction + ``fit``) and a snapshot of the final weights.

* ``sptrack``: ``sptrack.Module`` with the two named optimizers declared as a user would;
* ``lightning_manual``: a hand-written LightningModule, manual optimization, the same two optimizer
  steps written out in ``training_step`` (isolates what Lightning's loop costs by itself);
* ``lightning_auto``: Lightning's automatic optimization. It takes one optimizer per step, so the two
  are wrapped in :class:`JointOptimizer` (AdamW every step, SGD every 2nd on the mean gradient) and
  the cosine schedule is a per-group ``LambdaLR`` (cosine for AdamW's group, constant for SGD's).
"""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
from torch import nn

import sptrack
from common import snapshot
from mlp_workload import ADAMW_LR, HEAD_FREQUENCY, SGD_LR, SGD_MOMENTUM, Batches, build_model, hand_loop, loss_fn

TRAINER_KW = dict(
    accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
)


class EpochTimer(pl.Callback):
    """Wall time from ``on_train_epoch_start`` to ``on_train_epoch_end``: the training steps only."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds, self.cpu = time.perf_counter() - self.start, time.process_time() - self.cpu_start


def fit_timed(trainer_cls, module: pl.LightningModule, data, callbacks=()) -> dict:
    """Build a Trainer with :data:`TRAINER_KW`, fit ``module`` on ``data``; return the two timings."""
    started = time.perf_counter()
    timer = EpochTimer()
    trainer = trainer_cls(callbacks=[*callbacks, timer], **TRAINER_KW)
    trainer.fit(module, data)
    return {"epoch_s": timer.seconds, "epoch_cpu_s": timer.cpu, "fit_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------- sptrack
SPTRACK_OPTIM = {
    "backbone": {"modules": "backbone", "optimizer": {"type": "AdamW", "lr": ADAMW_LR}, "scheduler": "CosineAnnealingLR"},
    "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": SGD_LR, "momentum": SGD_MOMENTUM}, "frequency": HEAD_FREQUENCY},
}


def _sptrack_forward(self, batch, stage):
    return {"loss": loss_fn(self.backbone, self.head, batch)}


def run_sptrack(batches: Batches) -> dict:
    """Workload A through ``sptrack.Module`` + ``sptrack.Trainer`` (the cosine T_max comes from the run length)."""
    backbone, head = build_model()
    module = sptrack.Module(forward=_sptrack_forward, optim=SPTRACK_OPTIM, backbone=backbone, head=head)
    module._print_summary = lambda: None  # keep the output to the results (runs once per fit anyway)
    result = fit_timed(sptrack.Trainer, module, batches)
    return {**result, "state": snapshot(backbone, head)}


# ---------------------------------------------------------------------------------------- manual
class ManualLightning(pl.LightningModule):
    """Plain Lightning, manual optimization: the hand loop's step written inside ``training_step``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, steps: int):
        super().__init__()
        self.automatic_optimization = False
        self.backbone, self.head, self.steps = backbone, head, steps

    def configure_optimizers(self):
        adamw = torch.optim.AdamW(self.backbone.parameters(), lr=ADAMW_LR)
        sgd = torch.optim.SGD(self.head.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
        return [adamw, sgd], [torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=self.steps)]

    def training_step(self, batch, batch_idx):
        adamw, sgd = self.optimizers()
        schedule = self.lr_schedulers()
        self.manual_backward(loss_fn(self.backbone, self.head, batch))
        adamw.step()
        adamw.zero_grad(set_to_none=True)
        schedule.step()
        if (batch_idx + 1) % HEAD_FREQUENCY == 0:
            for p in self.head.parameters():
                p.grad.div_(HEAD_FREQUENCY)
            sgd.step()
            sgd.zero_grad(set_to_none=True)


def run_lightning_manual(batches: Batches) -> dict:
    """Workload A as a plain LightningModule with manual optimization."""
    backbone, head = build_model()
    result = fit_timed(pl.Trainer, ManualLightning(backbone, head, len(batches)), batches)
    return {**result, "state": snapshot(backbone, head)}


# ---------------------------------------------------------------------------------------- automatic
class JointOptimizer(torch.optim.Optimizer):
    """AdamW and SGD presented to Lightning as one optimizer (automatic optimization has one per step).

    ``step`` runs the closure (forward + backward), steps AdamW, and every ``frequency``-th call
    averages SGD's accumulated gradient and steps it; ``zero_grad`` clears AdamW's gradients only
    (SGD's are cleared after its own step, so they accumulate over its window).
    """

    def __init__(self, adamw: torch.optim.Optimizer, sgd: torch.optim.Optimizer, frequency: int):
        params = [p for o in (adamw, sgd) for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        # Share the inner optimizers' group dicts, so a scheduler on this one sets their lrs.
        self.param_groups = adamw.param_groups + sgd.param_groups
        self.adamw, self.sgd, self.frequency, self.calls = adamw, sgd, frequency, 0

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()
        self.adamw.step()
        self.calls += 1
        if self.calls % self.frequency == 0:
            for group in self.sgd.param_groups:
                for p in group["params"]:
                    p.grad.div_(self.frequency)
            self.sgd.step()
            self.sgd.zero_grad(set_to_none=True)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)


class AutoLightning(pl.LightningModule):
    """Plain Lightning, automatic optimization: ``training_step`` returns the loss."""

    def __init__(self, backbone: nn.Module, head: nn.Module, steps: int):
        super().__init__()
        self.backbone, self.head, self.steps = backbone, head, steps

    def configure_optimizers(self):
        adamw = torch.optim.AdamW(self.backbone.parameters(), lr=ADAMW_LR)
        sgd = torch.optim.SGD(self.head.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
        joint = JointOptimizer(adamw, sgd, HEAD_FREQUENCY)
        steps = self.steps
        # CosineAnnealingLR(eta_min=0) in closed form for AdamW's group; SGD's lr stays constant.
        schedule = torch.optim.lr_scheduler.LambdaLR(joint, [lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)), lambda t: 1.0])
        return {"optimizer": joint, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        return loss_fn(self.backbone, self.head, batch)


def run_lightning_auto(batches: Batches) -> dict:
    """Workload A as a plain LightningModule with automatic optimization."""
    backbone, head = build_model()
    result = fit_timed(pl.Trainer, AutoLightning(backbone, head, len(batches)), batches)
    return {**result, "state": snapshot(backbone, head)}


def run_hand(batches: Batches) -> dict:
    """The hand-written loop (see :func:`mlp_workload.hand_loop`)."""
    backbone, head = build_model()
    result = hand_loop(backbone, head, batches)
    return {**result, "state": snapshot(backbone, head)}


#: Trial name -> function(batches) -> {"epoch_s", "fit_s", "state"}; "hand" is the baseline.
VARIANTS = {
    "hand": run_hand,
    "sptrack": run_sptrack,
    "lightning_manual": run_lightning_manual,
    "lightning_auto": run_lightning_auto,
}
