"""Batch-level pixel transforms: ``Normalize`` (per-channel standardisation) and ``PixelsToFloat`` (uint8 to [0, 1])."""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from sptrack.data.decode import to_float
from sptrack.errors import ConfigError

#: Pixel mean / std of the full MNIST training set, for images in [0, 1].
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on ``batch[key]`` for every key in ``keys`` that is present.

    A value may be one ``(B, C, H, W)`` tensor (e.g. "image") or a list of them (e.g. "views" from
    :class:`MultiCropViews`). Returns a new dict; other keys pass through. Chain it after the views:
    ``dataset.gpu_transform = nn.Sequential(MultiCropViews(...), Normalize(MNIST_MEAN, MNIST_STD))``.

    Args:
        mean, std: one value per channel (a single value is used for every channel).
        keys: batch keys to normalise.
    """

    def __init__(
        self,
        mean: Union[float, Sequence[float]],
        std: Union[float, Sequence[float]],
        keys: Sequence[str] = ("image", "views"),
    ):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if (std_t <= 0).any():
            raise ConfigError("normalize.std", f"must be > 0, got {std!r}.")
        if len(mean_t) != len(std_t) and 1 not in (len(mean_t), len(std_t)):
            raise ConfigError("normalize.std", f"has {len(std_t)} values but mean has {len(mean_t)}.")
        # Buffers: they follow the module to the batch's device (GpuTransformCache calls .to()).
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("inv_std", 1 / std_t, persistent=False)
        self.keys = tuple(keys)

    def _apply_one(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * self.inv_std.to(x.dtype)

    def forward(self, batch: Any) -> Any:
        """The normalised batch (a plain tensor is normalised and returned)."""
        if isinstance(batch, torch.Tensor):
            return self._apply_one(batch)
        out = dict(batch)
        for key in self.keys:
            value = out.get(key)
            if isinstance(value, torch.Tensor):
                out[key] = self._apply_one(value)
            elif isinstance(value, (list, tuple)):
                out[key] = [self._apply_one(v) for v in value]
        return out


class PixelsToFloat(nn.Module):
    """uint8 ``batch[key]`` tensors as float32 in [0, 1] (others pass through): the device-side end of a uint8 pipeline.

    Loaders of decoded images send uint8 pixels (a quarter of float32's bytes through the worker
    queues and the host-to-device copy); this makes them what encoders take, on the device.
    """

    def __init__(self, keys: Sequence[str] = ("image",)):
        super().__init__()
        self.keys = tuple(keys)

    def forward(self, batch: dict) -> dict:
        out = dict(batch)
        for key in self.keys:
            if key in out:
                out[key] = to_float(out[key])
        return out
