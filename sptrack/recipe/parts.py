"""Pieces every recipe's ``build`` uses: the data loaders of ``cfg.data`` and the evaluation callbacks.

Imported inside ``build`` (it pulls in torch and Lightning), so listing a recipe's keys stays fast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sptrack.callbacks import OnlineKNN, OnlineProbe, RankMe
from sptrack.data.loaders import RecipeLoaders, recipe_loaders
from sptrack.recipe.config import RecipeConfig


def loaders_for(cfg: RecipeConfig, train_transform: Optional[Callable[[dict], Any]]) -> RecipeLoaders:
    """Train (augmented by ``train_transform`` on the device), plain-train and held-out loaders of ``cfg.data``."""
    data = cfg.data
    extra = {"root": data.root} if data.root else {}
    return recipe_loaders(data.dataset, data.batch_size, data.val_batch_size, train_transform, data.num_workers,
                          data.subset, seed=data.split_seed, shuffle_seed=cfg.trainer.seed, **extra)


def evaluation_callbacks(embed_dim: int, probe_lr: float, num_classes: int = 10, knn_k: int = 20) -> list:
    """Online linear probe (its own AdamW, batch-normed input), kNN and RankMe on the held-out split."""
    return [
        OnlineProbe(num_classes=num_classes, embed_dim=embed_dim, optimizer={"type": "AdamW", "lr": probe_lr}, batch_norm=True),
        OnlineKNN(k=knn_k),
        RankMe(),
    ]
