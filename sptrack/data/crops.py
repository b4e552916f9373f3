"""The geometric half of multi-crop views, cut in the loader workers from the full-resolution decode.

A 224-px global crop of a 500×375 photo keeps its detail only if it is cut from the photo itself,
not from a copy already shrunk to 224 px. So for sources of encoded images (folders, shards,
tables) each view's box and flip are decided per sample in the workers, on the decoded original:
the box is cut and resized to the view's size by Pillow (antialiased bilinear, uint8 in and out),
and only uint8 views cross the worker queues and go to the device. There
:class:`~sptrack.data.views.MultiCropViews` makes the photometric half (blur, jitter, solarize)
as for any batch. Both halves read the same :class:`~sptrack.data.views.ViewSpec` list.

Randomness: a sample's crops are a function of ``(seed, epoch, index)`` alone, through a generator
made for that sample, so they do not depend on the number of workers, on which worker reads the
sample, or on where a resumed run restarts.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from sptrack.data.augment import sample_view_params
from sptrack.data.decode import decode_pil, pil_to_tensor, tensor_to_pil
from sptrack.data.views import CROPS_KEY, ViewSpec, settings_table


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, index)`` (mixed by numpy's SeedSequence, so nearby keys do not correlate)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def crop_boxes(settings: torch.Tensor, height: int, width: int, generator: torch.Generator) -> list[tuple[tuple[float, float, float, float], bool]]:
    """Per view (a row of ``settings``, see :func:`~sptrack.data.views.settings_table`): its crop box
    ``(left, top, right, bottom)`` in pixels of a ``height×width`` image, and whether it is mirrored.

    The boxes are those of :func:`~sptrack.data.augment.sample_view_params` (torchvision's
    RandomResizedCrop rule, continuous), converted from its normalised centre/size to pixels.
    """
    params = sample_view_params(settings, aspect=height / width, generator=generator)
    out = []
    for box_w, box_h, cx, cy, flip in params.table[:, :5].tolist():
        left, right = (cx - box_w + 1) / 2 * width, (cx + box_w + 1) / 2 * width
        top, bottom = (cy - box_h + 1) / 2 * height, (cy + box_h + 1) / 2 * height
        out.append(((left, top, right, bottom), flip > 0))
    return out


class WorkerCrops:
    """``crops(sample, epoch)``: the sample with its views' uint8 crops added and its image resized.

    ``sample["image"]`` is the full-resolution ``(C, H, W)`` uint8 decode. The result has
    ``"crops"``: one uint8 ``(C, h, w)`` tensor per spec (cut from the original, resized, mirrored
    when drawn), and ``"image"``: the whole image resized to ``image_size`` (what probes and kNN
    embed during training). Other keys pass through.

    Args:
        specs: the views, as :class:`~sptrack.data.views.MultiCropViews` holds them (``.specs``).
        image_size: side (or ``(height, width)``) of the resized whole image.
        seed: mixed with the epoch and the sample's ``index`` into the sample's generator.
    """

    def __init__(self, specs: Sequence[ViewSpec], image_size: Union[int, tuple[int, int]], seed: int = 0):
        self.specs = list(specs)
        self._settings = settings_table(self.specs)  # built once: every sample draws from the same table
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.seed = int(seed)

    def __call__(self, sample: dict, epoch: int) -> dict:
        """``sample`` (its ``"image"`` a ``(C, H, W)`` uint8 tensor or a Pillow image) with ``"crops"`` added and ``"image"`` resized."""
        from PIL import Image

        image = sample["image"]
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8:
                raise TypeError(f"WorkerCrops expects the uint8 decode of an image, got {image.dtype}.")
            image = tensor_to_pil(image)
        generator = sample_generator(self.seed, epoch, int(sample["index"]))
        crops = []
        for spec, (box, flip) in zip(self.specs, crop_boxes(self._settings, image.height, image.width, generator)):
            out_h, out_w = spec.out_size
            view = image.resize((out_w, out_h), Image.BILINEAR, box=box)
            crops.append(pil_to_tensor(view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view))
        size_h, size_w = self.image_size
        whole = image if (image.height, image.width) == (size_h, size_w) else image.resize((size_w, size_h), Image.BILINEAR)
        out = dict(sample)
        out["image"] = pil_to_tensor(whole)
        out[CROPS_KEY] = crops
        return out


def flatten_subsets(dataset: Any) -> tuple[Any, list[int]]:
    """``(base, rows)``: the dataset under any nesting of ``Subset`` s, and the base row of each of ``dataset``'s samples."""
    rows = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        rows = [int(dataset.indices[r]) for r in rows]
        dataset = dataset.dataset
    return dataset, rows


class CroppedViews(Dataset):
    """Rows of a decoding dataset with :class:`WorkerCrops` applied; read with keys ``(epoch, i)``.

    ``base`` is an :class:`~sptrack.data.encoded.EncodedImages` (its ``encoded``, ``grayscale``,
    ``decoder`` and ``targets`` are read); each sample is decoded at full resolution. A
    :class:`~sptrack.data.sampler.ResumableSampler` built with ``keyed=True`` yields the keys; a
    plain int key counts as epoch 0. ``gpu_transform`` is what the Module applies on the device
    (the photometric half of the views).
    """

    def __init__(self, base: Any, rows: Sequence[int], crops: WorkerCrops, gpu_transform: Optional[Any] = None):
        self.base = base
        self.rows = [int(r) for r in rows]
        self.crops = crops
        self.gpu_transform = gpu_transform
        self._labels = base.targets[torch.tensor(self.rows, dtype=torch.int64)] if len(self.rows) else torch.zeros(0, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> torch.Tensor:
        """Labels of the rows, in order."""
        return self._labels

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        # Decoded straight to a Pillow image, which WorkerCrops cuts from (no tensor round trip).
        image = decode_pil(self.base.encoded(self.rows[i]), self.base.grayscale, self.base.decoder)
        sample = {"image": image, "label": self._labels[i], "index": torch.tensor(i, dtype=torch.int64)}
        return self.crops(sample, epoch)
