"""``EncodedImages``: the part every dataset of encoded image files shares (decode on read, uint8 or float out, select, re-options)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

import torch
from torch.utils.data import Dataset

from sptrack.data.decode import decode_image, resolve_decoder
from sptrack.errors import ConfigError

Size = Optional[Union[int, tuple[int, int]]]
_OPTIONS = ("size", "dtype", "grayscale", "gpu_transform")


def parse_size(size: Any, key: str = "image_folder.size") -> Optional[tuple[int, int]]:
    """``(height, width)`` of an int or pair of positive ints (None stays None), or a ConfigError naming ``key``."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ConfigError(key, f"must be a positive int or (height, width), got {size!r}.")


class DecodedImageSource:
    """What every source of decoded, labelled images tells its users: ``num_classes`` (from ``classes``) and ``channels``."""

    classes: list
    grayscale: bool

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels of every decoded image: 1 with ``grayscale``, else 3."""
        return 1 if self.grayscale else 3


class EncodedImages(DecodedImageSource, Dataset):
    """Labelled encoded images (PNG/JPEG/...) decoded when a sample is read, so loader workers share the work.

    Subclasses provide ``encoded(i)`` (the bytes of sample ``i``), ``targets`` (int64 labels),
    ``classes`` and ``_take(rows)`` (narrow a copy to ``rows``). ``dataset[i]`` is
    ``{"image": (C, H, W), "label": int64, "index": int64}`` with the image as float32 in [0, 1],
    or as its uint8 pixels with ``dtype=torch.uint8`` (a quarter of the bytes through the worker
    queues and to the device, made float there).

    Args:
        size: resize every image to ``size×size`` (int) or ``(height, width)``, bilinear
            (antialiased). With None images keep their size, and batching needs them all to have the same one.
        grayscale: decode to 1 channel ("L") instead of 3 ("RGB").
        gpu_transform: optional batch-level transform applied by ``sptrack.Module`` on the device.
        decoder: JPEG decoder: "auto" (simplejpeg when installed, the ``[fast]`` extra; else
            Pillow), "pillow" or "simplejpeg". Other formats are always read by Pillow.
        dtype: ``torch.float32`` or ``torch.uint8`` images.
        key: the config prefix errors name (e.g. ``image_folder``).
    """

    targets: torch.Tensor

    def __init__(self, size: Size = None, grayscale: bool = False, gpu_transform: Optional[Callable[[dict], dict]] = None,
                 decoder: str = "auto", dtype: torch.dtype = torch.float32, key: str = "image_folder"):
        if dtype not in (torch.float32, torch.uint8):
            raise ConfigError(f"{key}.dtype", f"must be torch.float32 or torch.uint8, got {dtype!r}.")
        self.decoder = resolve_decoder(decoder, key=f"{key}.decoder")
        self.size = parse_size(size, f"{key}.size")
        self.grayscale = bool(grayscale)
        self.gpu_transform = gpu_transform
        self.dtype = dtype

    def encoded(self, i: int) -> bytes:
        """The encoded bytes of sample ``i``."""
        raise NotImplementedError

    def _take(self, rows: list[int]) -> None:
        """Narrow this (fresh copy) to the samples ``rows``, in that order; ``targets`` is done by :meth:`select`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def load_uint8(self, i: int) -> torch.Tensor:
        """Decode image ``i`` to its ``(C, H, W)`` uint8 pixels (resized if ``size`` is set)."""
        return decode_image(self.encoded(i), self.grayscale, self.decoder, self.size)

    def load(self, i: int) -> torch.Tensor:
        """Decode image ``i`` to a ``(C, H, W)`` float32 tensor in [0, 1] (resized if ``size`` is set)."""
        return self.load_uint8(i).to(torch.float32).div_(255.0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.load_uint8(i) if self.dtype == torch.uint8 else self.load(i)
        return {"image": image, "label": self.targets[i], "index": torch.tensor(i, dtype=torch.int64)}

    def select(self, rows) -> "EncodedImages":
        """A copy holding only the samples ``rows``, in that order (same classes; ``index`` counts from 0 again)."""
        rows = [int(i) for i in rows]
        out = copy.copy(self)
        out._take(rows)
        out.targets = self.targets[torch.tensor(rows, dtype=torch.int64)]
        return out

    def with_options(self, **options: Any) -> "EncodedImages":
        """A copy with some of ``size``, ``dtype``, ``grayscale``, ``gpu_transform`` changed (same images and labels)."""
        out = copy.copy(self)
        for name, value in options.items():
            if name not in _OPTIONS:
                raise TypeError(f"with_options: unknown option {name!r}; options: {', '.join(_OPTIONS)}")
            setattr(out, name, parse_size(value) if name == "size" else value)
        return out
