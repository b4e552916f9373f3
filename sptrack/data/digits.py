"""``Digits``: scikit-learn's 1,797 8×8 handwritten digits, split 1,437 / 360."""

from __future__ import annotations

import functools

import numpy as np
import torch

from sptrack.data.base import SplitImageDataset

#: Rows held out for the "val" split (about 20%); the other 1,437 are "train".
DIGITS_VAL_SIZE = 360


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 rows as ``(1797, 1, 8, 8)`` float32 in [0, 1] and int64 labels (cached, shared)."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    bunch = load_digits()
    # Pixel values are counts 0..16 (a 4×4 block of a 32×32 bitmap), so 16 is full ink.
    images = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return images, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


class Digits(SplitImageDataset):
    """scikit-learn's ``load_digits()``: 1,797 8×8 single-channel digits, 10 classes.

    ``split="train"`` has 1,437 rows, ``"val"`` 360, ``"all"`` 1,797; the partition is seeded and
    class-stratified, deterministic for a given ``seed``, and disjoint.

    Args:
        split: "train", "val" or "all".
        seed: seed of the train/val partition (use the same one for both splits).
        gpu_transform: optional batch-level transform (see :class:`TensorImageDataset`).
    """

    load = staticmethod(load_digits_tensors)
    val_size = DIGITS_VAL_SIZE
