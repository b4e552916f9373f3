"""Pieces every recipe's ``build`` uses: the data loaders of ``cfg.data`` and the evaluation callbacks.

Imported inside ``build`` (it pulls in torch and Lightning), so listing a recipe's keys stays fast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

from sptrack.callbacks import OnlineKNN, OnlineProbe, RankMe
from sptrack.data.crops import WorkerCrops
from sptrack.data.loaders import RecipeLoaders, recipe_loaders
from sptrack.data.views import MultiCropViews
from sptrack.recipe.config import RecipeConfig


def loaders_for(cfg: RecipeConfig, train_transform: Optional[Callable[[dict], Any]], image_size: Optional[int] = None) -> RecipeLoaders:
    """Train (augmented by ``train_transform`` on the device), plain-train and held-out loaders of ``cfg.data``.

    An image folder (``data.dataset=image_folder``), a Hugging Face dataset on disk (``hf``) or a
    tar-shard set (``shards``) is read from ``data.root``; the first two are split by
    ``data.heldout_fraction`` unless they have their own held-out split. Images are decoded to RGB
    (or grayscale with ``data.grayscale``) and resized to ``data.image_size``, else to
    ``image_size``: the recipe's input size.
    With ``data.crop_from=original`` (the default) the training views of a folder are cut from the
    full-resolution images in the loader workers (``train_transform`` must then be, or start with,
    the recipe's :class:`~sptrack.data.MultiCropViews`, which makes their photometric half on the device).
    """
    data = cfg.data
    extra: dict[str, Any] = {}
    worker_crops = None
    if data.dataset in ("image_folder", "hf", "shards"):
        size = data.image_size or image_size
        extra = {"root": data.root, "grayscale": data.grayscale, "size": size}
        if data.dataset != "shards":  # shards hold their split (python -m sptrack.data.make_shards --heldout-fraction)
            extra["heldout_fraction"] = data.heldout_fraction
        views = _views_of(train_transform)
        if data.crop_from == "original" and views is not None:
            worker_crops = WorkerCrops(views.specs, size, seed=cfg.trainer.seed)
    elif data.root:
        extra = {"root": data.root}
    return recipe_loaders(data.dataset, data.batch_size, data.val_batch_size, train_transform, data.num_workers,
                          data.subset, seed=data.split_seed, shuffle_seed=cfg.trainer.seed,
                          validation_fraction=data.validation_fraction, worker_crops=worker_crops, **extra)


def _views_of(transform: Any) -> Optional[MultiCropViews]:
    """The MultiCropViews that ``transform`` is or starts with (an ``nn.Sequential``), else None."""
    if isinstance(transform, nn.Sequential) and len(transform):
        transform = transform[0]
    return transform if isinstance(transform, MultiCropViews) else None


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
    final_train = loaders.final_train if loaders.final_train is not None else loaders.train_plain
    final_heldout = loaders.final_heldout if loaders.final_heldout is not None else loaders.heldout
    return {"train_loader": loaders.train, "val_loader": loaders.val, "eval_train_loader": final_train, "heldout_loader": final_heldout}
