"""Test recipe: a tiny two-optimizer SSL-style MLP on Gaussian class clusters (works under DDP and FSDP2).

Two noisy views of each point; the head of view 1 regresses the (detached) embedding of view 2.
OnlineKNN scores held-out points (``eval/knn_acc``), or validation points carved from training ones. ``record_dir``: every rank writes
``<record_dir>/<trial folder>-rank<r>.json`` with its world size, strategy and, per named optimizer,
the lr its torch optimizer holds and the Module's frequency; ``step_sleep_s`` pauses after each
batch (to kill a worker mid-trial).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sptrack.recipe import DataConfig, OptimizerEntry, RecipeConfig, TrainerConfig


@dataclass
class Config(RecipeConfig):
    """Every knob of the tiny recipe."""

    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="clusters", batch_size=16, val_batch_size=64, subset=128))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=1, log_every_n_steps=1))
    optim: dict = field(default_factory=lambda: {
        "backbone": OptimizerEntry(modules="backbone", type="AdamW", lr=1e-2, scheduler=None),
        "head": OptimizerEntry(modules="head", type="AdamW", lr=1e-2, scheduler=None),
    })
    search_space: dict = field(default_factory=lambda: {"optim.*.lr": "log-uniform x0.1..x10", "optim.*.frequency": [1, 2]})
    record_dir: str = ""
    step_sleep_s: float = 0.0


def build(cfg: Config):
    """The Module, loaders and callbacks."""
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    import sptrack
    from sptrack.callbacks import OnlineKNN
    from sptrack.recipe import Experiment

    class Clusters(Dataset):
        def __init__(self, n: int, seed: int):
            g = torch.Generator().manual_seed(1234)
            centres = torch.randn(10, 16, generator=g) * 2
            g.manual_seed(seed)
            self.label = torch.randint(0, 10, (n,), generator=g)
            self.x = centres[self.label] + torch.randn(n, 16, generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "label": self.label[i]}

    def make_backbone():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    torch.manual_seed(cfg.trainer.seed)
    backbone, head = make_backbone(), nn.Sequential(nn.Linear(8, 8))

    def forward(self, batch, stage):
        emb = self.backbone(batch["x"])
        if stage != "fit":
            return {"embedding": emb, "label": batch["label"]}
        v1 = batch["x"] + 0.3 * torch.randn_like(batch["x"])
        v2 = batch["x"] + 0.3 * torch.randn_like(batch["x"])
        loss = ((self.head(self.backbone(v1)) - self.backbone(v2).detach()) ** 2).mean()
        self.log("train/loss", loss, batch_size=len(emb))
        return {"loss": loss, "embedding": emb.detach(), "label": batch["label"]}

    module = sptrack.Module(forward=forward, optim=cfg.optim, backbone=backbone, head=head)

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            if not cfg.record_dir:
                return
            rows = pl_module.optimizer_summary()
            record = {
                "rank": trainer.global_rank, "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                "lr": {r["name"]: float(trainer.optimizers[r["index"]].param_groups[0]["lr"]) for r in rows},
                "frequency": {r["name"]: r["frequency"] for r in rows}, "pid": os.getpid(),
            }
            Path(cfg.record_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.record_dir) / f"{Path(cfg.trainer.output_dir).name}-rank{trainer.global_rank}.json").write_text(json.dumps(record))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cfg.step_sleep_s:
                time.sleep(cfg.step_sleep_s)

    from sptrack.data.loaders import carve_validation

    train_set, heldout = Clusters(cfg.data.subset or 128, seed=1), Clusters(256, seed=2)
    val_set = heldout
    if cfg.data.validation_fraction:
        train_set, val_set = carve_validation(train_set, cfg.data.validation_fraction, cfg.data.split_seed)
    train = DataLoader(train_set, batch_size=cfg.data.batch_size, shuffle=False)
    val = DataLoader(val_set, batch_size=cfg.data.val_batch_size)
    heldout_loader = val if val_set is heldout else DataLoader(heldout, batch_size=cfg.data.val_batch_size)
    return Experiment(module=module, train_loader=train, val_loader=val, heldout_loader=heldout_loader, callbacks=[OnlineKNN(k=5), Record()],
                      encoder=backbone, encoder_factory=make_backbone, embed=lambda enc, x: enc(x))
