"""The three loaders a recipe needs: augmented training, plain training (for evaluation), held-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset

from sptrack.data.registry import build_dataset
from sptrack.data.sampler import ResumableSampler


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
    shuffle_seed: int = 0,
    **dataset_kwargs: Any,
) -> RecipeLoaders:
    """Build the train/val splits of ``dataset`` and their loaders.

    The augmented training set is shuffled with ``drop_last=True`` (multi-view losses want full
    batches). For quick runs ``subset`` keeps N training samples drawn at random with ``seed``: splits
    may be sorted by class, so the first N could all share one label. The transform is attached as
    the training dataset's ``gpu_transform`` so the Module applies it on the device. The training order
    comes from a :class:`ResumableSampler` seeded with ``shuffle_seed`` (epoch ``e`` uses
    ``shuffle_seed + e``), so a run resumed mid-epoch continues the same order.
    """
    train = build_dataset(dataset, "train", seed=seed, **dataset_kwargs)
    val = build_dataset(dataset, "val", seed=seed, **dataset_kwargs)
    if subset is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = Subset(train, order[: min(subset, len(train))].sort().values.tolist())
    augmented = _with_transform(train, train_transform)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    return RecipeLoaders(
        train=DataLoader(augmented, batch_size=min(batch_size, len(augmented)), sampler=ResumableSampler(augmented, seed=shuffle_seed),
                         drop_last=True, generator=_own_generator(shuffle_seed), **common),
        train_plain=DataLoader(train, batch_size=val_batch_size, shuffle=False, generator=_own_generator(shuffle_seed), **common),
        val=DataLoader(val, batch_size=val_batch_size, shuffle=False, generator=_own_generator(shuffle_seed), **common),
    )


def _own_generator(seed: int) -> torch.Generator:
    """A loader's own generator: starting an iterator draws the workers' base seed from it, which
    would otherwise be a draw from the global RNG, so a resumed run (whose loaders start at other
    moments) would shift every later augmentation."""
    return torch.Generator().manual_seed(seed)


class _Augmented(Subset):
    """A view of a dataset with its own ``gpu_transform`` (the plain dataset stays untouched)."""

    def __init__(self, dataset, transform):
        super().__init__(dataset, range(len(dataset)))
        self.gpu_transform = transform


def _with_transform(dataset, transform):
    return _Augmented(dataset, transform) if transform is not None else dataset
