"""The loaders a recipe needs: augmented training, plain training (for evaluation), validation, held-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sptrack.data.base import split_indices
from sptrack.data.crops import CroppedViews, WorkerCrops, flatten_subsets
from sptrack.data.normalize import PixelsToFloat
from sptrack.data.registry import build_dataset
from sptrack.data.sampler import ResumableSampler
from sptrack.errors import ConfigError


@dataclass
class RecipeLoaders:
    """``train`` carries the view augmentation; the others carry none.

    ``val`` is what training evaluates on: the validation images carved out of the training split
    when ``validation_fraction`` > 0, else the held-out split itself; ``heldout`` is always the
    held-out split (scored by the end-of-run evaluation). ``train_plain`` holds the training images
    (without the validation ones), un-augmented, for probes and kNN banks.
    """

    train: DataLoader
    train_plain: DataLoader
    val: DataLoader
    heldout: DataLoader
    #: What global rank 0 alone reads for the end-of-run probe, when it differs from ``train_plain`` /
    #: ``heldout`` (a stream splits itself over the ranks, so these read the whole split).
    final_train: Optional[DataLoader] = None
    final_heldout: Optional[DataLoader] = None

    @property
    def channels(self) -> int:
        """Channels of the images (the dataset's ``channels``, else the first held-out image's): what the encoder takes in."""
        channels = getattr(_under_subsets(self.heldout.dataset), "channels", None)
        return int(channels) if channels is not None else int(self.heldout.dataset[0]["image"].shape[0])

    @property
    def num_classes(self) -> int:
        """The dataset's ``num_classes``, else 1 + the largest label of the training and held-out images."""
        count = getattr(_under_subsets(self.heldout.dataset), "num_classes", None)
        if count is not None:
            return int(count)
        return 1 + int(max(sample_labels(self.train_plain.dataset).max(), sample_labels(self.heldout.dataset).max()))


def _under_subsets(dataset):
    """The dataset under any nesting of ``Subset`` s."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def recipe_loaders(
    dataset: str,
    batch_size: int,
    val_batch_size: int,
    train_transform: Optional[Callable[[dict], Any]],
    num_workers: int = 0,
    subset: Optional[int] = None,
    seed: int = 0,
    shuffle_seed: int = 0,
    validation_fraction: float = 0.0,
    worker_crops: Optional[WorkerCrops] = None,
    **dataset_kwargs: Any,
) -> RecipeLoaders:
    """Build the train/val splits of ``dataset`` and their loaders.

    The augmented training set is shuffled with ``drop_last=True`` (multi-view losses want full
    batches). For quick runs ``subset`` keeps N training samples drawn at random with ``seed``: splits
    may be sorted by class, so the first N could all share one label. The transform is attached as
    the training dataset's ``gpu_transform`` so the Module applies it on the device. The training order
    comes from a :class:`ResumableSampler` seeded with ``shuffle_seed`` (epoch ``e`` uses
    ``shuffle_seed + e``), so a run resumed mid-epoch continues the same order.

    ``validation_fraction`` > 0 holds back that share of the training images (after ``subset``;
    class-stratified, drawn with ``seed``) as the ``val`` loader; they are never trained on.

    ``worker_crops`` (for datasets that decode files: they take ``dtype`` and have ``load_uint8``
    and ``with_options``) moves the views' geometry into the loader workers: each training sample
    is decoded at full resolution and its views cut from it there (:mod:`sptrack.data.crops`),
    every loader carries uint8 pixels, and the device makes them float (the training transform,
    or :class:`~sptrack.data.normalize.PixelsToFloat` for the others). Loaders pin their memory
    when CUDA is available (Lightning then copies batches with ``non_blocking``).
    """
    if dataset == "shards":
        if subset is not None or validation_fraction > 0:
            raise ConfigError("data.subset" if subset is not None else "data.validation_fraction",
                              "does not apply to a stream of shards (it is read, not indexed).",
                              "Write a smaller shard set, or rely on its val split.")
        return shard_loaders(batch_size, val_batch_size, train_transform, num_workers, shuffle_seed, worker_crops, **dataset_kwargs)
    if worker_crops is not None:
        dataset_kwargs = {**dataset_kwargs, "dtype": torch.uint8}
    train = build_dataset(dataset, "train", seed=seed, **dataset_kwargs)
    heldout = build_dataset(dataset, "val", seed=seed, **dataset_kwargs)
    if subset is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = Subset(train, order[: min(subset, len(train))].sort().values.tolist())
    val = heldout
    if validation_fraction > 0:
        train, val = carve_validation(train, validation_fraction, seed)
    if worker_crops is None:
        augmented = _with_transform(train, train_transform)
    else:
        base, rows = flatten_subsets(train)
        augmented = CroppedViews(base.with_options(size=None), rows, worker_crops, gpu_transform=train_transform)
        val_is_heldout = val is heldout
        train, val, heldout = (_with_transform(d, PixelsToFloat()) for d in (train, val, heldout))
        val = heldout if val_is_heldout else val
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    heldout_loader = DataLoader(heldout, batch_size=val_batch_size, shuffle=False, generator=_own_generator(shuffle_seed), **common)
    return RecipeLoaders(
        train=DataLoader(augmented, batch_size=min(batch_size, len(augmented)), sampler=ResumableSampler(augmented, seed=shuffle_seed, keyed=worker_crops is not None),
                         drop_last=True, generator=_own_generator(shuffle_seed), **common),
        train_plain=DataLoader(train, batch_size=val_batch_size, shuffle=False, generator=_own_generator(shuffle_seed), **common),
        val=heldout_loader if val is heldout else DataLoader(val, batch_size=val_batch_size, shuffle=False,
                                                             generator=_own_generator(shuffle_seed), **common),
        heldout=heldout_loader,
    )


def shard_loaders(batch_size: int, val_batch_size: int, train_transform: Optional[Callable[[dict], Any]], num_workers: int,
                  shuffle_seed: int, worker_crops: Optional[WorkerCrops], root: str, size=None, grayscale: bool = False,
                  **options: Any) -> RecipeLoaders:
    """The loaders of a tar-shard set (:class:`~sptrack.data.shards.ShardedImages`): streams split over ranks and workers.

    Training reads the "train" shards shuffled (``shuffle_seed`` + epoch) with ``drop_last``, the
    views' geometry cut in the workers when ``worker_crops`` is given; evaluation reads "train" and
    "val" in order, every image once, padded to equal batch counts per rank. The end-of-run probe
    (global rank 0 alone) gets its own whole-split loaders. Pixels are uint8 to the device.
    """
    from sptrack.data.shards import ShardedImages, ShardLoader

    common = dict(grayscale=grayscale, dtype=torch.uint8, **options)
    loader_args = dict(num_workers=num_workers, pin_memory=torch.cuda.is_available())
    train = ShardedImages(root, "train", batch_size, shuffle=True, seed=shuffle_seed, drop_last=True,
                          size=None if worker_crops is not None else size, sample_transform=worker_crops,
                          gpu_transform=train_transform, **common)

    def plain(split: str, split_over_ranks: bool = True) -> ShardLoader:
        dataset = ShardedImages(root, split, val_batch_size, shuffle=False, drop_last=False, size=size,
                                gpu_transform=PixelsToFloat(), **common)
        return ShardLoader(dataset, split_over_ranks=split_over_ranks, **loader_args)

    heldout = plain("val")
    return RecipeLoaders(train=ShardLoader(train, **loader_args), train_plain=plain("train"), val=heldout, heldout=heldout,
                         final_train=plain("train", split_over_ranks=False), final_heldout=plain("val", split_over_ranks=False))


def sample_labels(dataset) -> np.ndarray:
    """Integer labels of every sample of ``dataset`` (read from ``labels``/``targets`` when it has them, else sample by sample)."""
    if isinstance(dataset, Subset):
        return sample_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64).reshape(-1)
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def carve_validation(train, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """``(rest, validation)``: ``round(fraction * len(train))`` (at least 1) images, class-stratified and seeded, held back."""
    labels = sample_labels(train)
    count = min(max(1, round(fraction * len(train))), len(train) - 1)
    rows = split_indices(labels, count, "val", seed)
    rest = np.setdiff1d(np.arange(len(train)), rows, assume_unique=True)
    return Subset(train, rest.tolist()), Subset(train, rows.tolist())


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
