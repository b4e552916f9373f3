"""The small two-optimizer training job the tracker tests (and their DDP worker) run.

Two named optimizers with step schedulers, so their learning rates change at every step:
``backbone`` (SGD, frequency 1, its own clip by norm) and ``head`` (AdamW, frequency 2, the Trainer's
clip by value). 40 samples, global batch 8: 5 accumulation boundaries per epoch.
:class:`LrRecorder` records, independently of any tracker, the lr each optimizer actually used at
each of its steps and ``trainer.global_step`` at that moment (before the step is counted): the
points ``hparams/lr_<name>`` must reproduce exactly.
"""

from __future__ import annotations

from collections import defaultdict

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import sptrack

NUM_SAMPLES = 40
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = NUM_SAMPLES // GLOBAL_BATCH
BACKBONE_CLIP = 0.35
TRAINER_CLIP = 0.05
OPTIM = {
    "backbone": {
        "modules": "backbone",
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "scheduler": "CosineAnnealingLR",
        "frequency": 1,
        "gradient_clip_val": BACKBONE_CLIP,
        "gradient_clip_algorithm": "norm",
    },
    "head": {
        "modules": "head",
        "optimizer": {"type": "AdamW", "lr": 0.01, "weight_decay": 0.05},
        "scheduler": {"type": "CosineAnnealingLR", "eta_min": 1e-4},
        "frequency": 2,
    },
}
#: A recipe-like config: nested, with list values and secrets that must never be logged.
CONFIG = {
    "model": {"in_dim": 6, "hidden": 16, "out_dim": 3, "act": "tanh"},
    "optim": OPTIM,
    "data": {"num_samples": NUM_SAMPLES, "batch_size": GLOBAL_BATCH, "augment": ["flip", "crop"]},
    "tracking": {"api_key": "sk-live-0123456789abcdef", "url": "https://alice:hunter2@example.invalid/mlflow"},
}
SECRETS = ("sk-live-0123456789abcdef", "hunter2")


class SyntheticDataset(Dataset):
    def __init__(self, n: int = NUM_SAMPLES, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        w = torch.randn(6, 3, generator=g)
        self.y = torch.tanh(self.x @ w) + 0.1 * torch.randn(n, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def make_loader(rank: int = 0, world_size: int = 1, seed: int = 0) -> DataLoader:
    """Rank ``rank``'s share of every global batch of :data:`GLOBAL_BATCH`, in order."""
    per_rank = GLOBAL_BATCH // world_size
    indices = [i for s in range(0, NUM_SAMPLES, GLOBAL_BATCH) for i in range(s + rank * per_rank, s + (rank + 1) * per_rank)]
    return DataLoader(Subset(SyntheticDataset(seed=seed), indices), batch_size=per_rank, shuffle=False)


def forward_fn(module, batch: dict, stage: str) -> dict:
    if getattr(module, "fail_at_batch", None) is not None and stage == "fit" and module.trainer.global_step == module.fail_at_batch:
        raise RuntimeError("boom: failing on purpose")
    pred = module.head(module.backbone(batch["x"]))
    loss = F.mse_loss(pred, batch["y"])
    module.log("train_loss" if stage == "fit" else "val_loss", loss, batch_size=len(pred))
    return {"loss": loss}


def build_module(seed: int = 1234, fail_at_batch=None) -> sptrack.Module:
    torch.manual_seed(seed)
    module = sptrack.Module(
        forward=forward_fn,
        optim=OPTIM,
        backbone=nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh()),
        head=nn.Linear(16, 3),
    )
    module.fail_at_batch = fail_at_batch
    return module


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class LrRecorder(pl.Callback):
    """``points[name] = [(global_step, lr), ...]`` for every step of every optimizer."""

    def __init__(self):
        self.points: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        name = pl_module.optimizer_summary()[index]["name"]
        self.points[name].append((int(trainer.global_step), float(optimizer.param_groups[0]["lr"])))


class StepHook(pl.Callback):
    """Calls ``fn(trainer)`` at the start of the batch whose ``global_step`` equals ``step``."""

    def __init__(self, step: int, fn, sleep_s: float = 0.0):
        self.step = step
        self.fn = fn
        self.sleep_s = sleep_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.fn(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.sleep_s:
            import time

            time.sleep(self.sleep_s)


def make_trainer(callbacks, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        gradient_clip_val=TRAINER_CLIP,
        gradient_clip_algorithm="value",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
