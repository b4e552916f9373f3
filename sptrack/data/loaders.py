"""The three loaders a recipe needs: augmented training, plain training (for evaluation), held-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset

from sptrack.data.registry import build_dataset


@dataclass
class RecipeLoaders:
    """``train`` carries the view augmentation; ``train_plain`` and ``val`` carry none."""

    train: DataLoader
    train_plain: DataLoader
    val: DataLoader


def recipe_loaders(
    dataset: str,
    batch_size: int,
    val_batch_size: int,
    train_transform: Optional[Callable[[dict], Any]],
    num_workers: int = 0,
    subset: Optional[int] = None,
    seed: int = 0,
    **dataset_kwargs: Any,
) -> RecipeLoaders:
    """Build the train/val splits of ``dataset`` and their loaders.

    The augmented training set is shuffled with ``drop_last=True`` (multi-view losses want full
    batches). For quick runs ``subset`` keeps N training samples drawn at random with ``seed``: splits
    may be sorted by class, so the first N could all share one label. The transform is attached as
    the training dataset's ``gpu_transform`` so the Module applies it on the device.
    """
    train = build_dataset(dataset, "train", seed=seed, **dataset_kwargs)
    val = build_dataset(dataset, "val", seed=seed, **dataset_kwargs)
    if subset is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = Subset(train, order[: min(subset, len(train))].sort().values.tolist())
    augmented = _with_transform(train, train_transform)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    return RecipeLoaders(
        train=DataLoader(augmented, batch_size=min(batch_size, len(augmented)), shuffle=True, drop_last=True, **common),
        train_plain=DataLoader(train, batch_size=val_batch_size, shuffle=False, **common),
        val=DataLoader(val, batch_size=val_batch_size, shuffle=False, **common),
    )


class _Augmented(Subset):
    """A view of a dataset with its own ``gpu_transform`` (the plain dataset stays untouched)."""

    def __init__(self, dataset, transform):
        super().__init__(dataset, range(len(dataset)))
        self.gpu_transform = transform


def _with_transform(dataset, transform):
    return _Augmented(dataset, transform) if transform is not None else dataset
