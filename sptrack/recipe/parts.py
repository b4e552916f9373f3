"""Pieces every recipe's ``build`` uses: the data loaders of ``cfg.data`` and the evaluation callbacks.

Imported inside ``build`` (it pulls in torch and Lightning), so listing a recipe's keys stays fast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sptrack.callbacks import OnlineKNN, OnlineProbe, RankMe
from sptrack.data.loaders import RecipeLoaders, recipe_loaders
from sptrack.recipe.config import RecipeConfig


def loaders_for(cfg: RecipeConfig, train_transform: Optional[Callable[[dict], Any]], image_size: Optional[int] = None) -> RecipeLoaders:
    """Train (augmented by ``train_transform`` on the device), plain-train and held-out loaders of ``cfg.data``.

    An image folder (``data.dataset=image_folder``) is read from ``data.root``, split by
    ``data.heldout_fraction`` unless it has train/ and val/, decoded to RGB (or grayscale with
    ``data.grayscale``) and resized to ``data.image_size``, else to ``image_size``: the recipe's input size.
    """
    data = cfg.data
    extra: dict[str, Any] = {}
    if data.dataset == "image_folder":
        extra = {"root": data.root, "heldout_fraction": data.heldout_fraction, "grayscale": data.grayscale,
                 "size": data.image_size or image_size}
    elif data.root:
        extra = {"root": data.root}
    return recipe_loaders(data.dataset, data.batch_size, data.val_batch_size, train_transform, data.num_workers,
                          data.subset, seed=data.split_seed, shuffle_seed=cfg.trainer.seed,
                          validation_fraction=data.validation_fraction, **extra)


def evaluation_callbacks(embed_dim: int, probe_lr: float, loaders: RecipeLoaders, num_classes: Optional[int] = None,
                         knn_k: int = 20) -> list:
    """Online linear probe (its own AdamW, batch-normed input), kNN (bank: every plain training image) and RankMe on ``loaders.val``.

    ``num_classes`` defaults to the dataset's (at least 2, the probe's minimum: a one-class folder still trains).
    """
    num_classes = max(2, loaders.num_classes) if num_classes is None else num_classes
    return [
        OnlineProbe(num_classes=num_classes, embed_dim=embed_dim, optimizer={"type": "AdamW", "lr": probe_lr}, batch_norm=True),
        OnlineKNN(k=knn_k, bank=loaders.train_plain),
        RankMe(),
    ]


def experiment_loaders(loaders: RecipeLoaders) -> dict:
    """The loader arguments of :class:`~sptrack.recipe.Experiment` for ``loaders``."""
    return {"train_loader": loaders.train, "val_loader": loaders.val, "eval_train_loader": loaders.train_plain,
            "heldout_loader": loaders.heldout}
