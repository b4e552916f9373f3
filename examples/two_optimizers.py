"""Train a digit classifier with two named optimizers on scikit-learn's embedded digits data.

Run: ``python examples/two_optimizers.py``. The backbone uses SGD with momentum and a warm-up +
cosine schedule; the head uses AdamW and steps every second batch. Gradients are accumulated over
two micro-batches and clipped, through a plain Lightning ``Trainer``.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

import sptrack


class Digits(Dataset):
    """scikit-learn's 1,797 8x8 digits as dict batches (``image`` in [0, 1], ``label``)."""

    def __init__(self, train: bool):
        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(data.target)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        split = order[:1500] if train else order[1500:]
        self.images, self.labels = images[split], labels[split]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def forward(self, batch, stage):
    """Cross-entropy classifier; logs loss and accuracy for every stage."""
    logits = self.head(self.backbone(batch["image"].flatten(1)))
    loss = nn.functional.cross_entropy(logits, batch["label"])
    accuracy = (logits.argmax(1) == batch["label"]).float().mean()
    prefix = "train" if stage == "fit" else "val"
    self.log(f"{prefix}_loss", loss, prog_bar=True)
    self.log(f"{prefix}_acc", accuracy, prog_bar=True)
    return {"loss": loss, "embedding": logits.detach()}


def main() -> None:
    torch.manual_seed(0)
    module = sptrack.Module(
        forward=forward,
        backbone=nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU()),
        head=nn.Linear(128, 10),
        optim={
            "backbone": {
                "modules": "backbone",
                "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
                "scheduler": "LinearWarmupCosineAnnealingLR",
            },
            "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 3e-3}, "frequency": 2},
        },
    )
    trainer = Trainer(
        max_epochs=5, accumulate_grad_batches=2, gradient_clip_val=1.0, accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False,
    )
    trainer.fit(module, DataLoader(Digits(True), batch_size=32, shuffle=True), DataLoader(Digits(False), batch_size=256))
    metrics = trainer.callback_metrics
    print(f"global_step={trainer.global_step} val_acc={float(metrics['val_acc']):.3f} val_loss={float(metrics['val_loss']):.3f}")


if __name__ == "__main__":
    main()
