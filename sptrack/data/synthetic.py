"""``SyntheticImages``: deterministic class-dependent images for fast tests and smoke runs."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from sptrack.data.base import TensorImageDataset
from sptrack.errors import ConfigError


class SyntheticImages(TensorImageDataset):
    """``n`` generated images whose content depends on the class, so that methods can learn on them.

    Class ``c`` of ``K`` draws (i) a Gaussian blob centred at angle ``2πc/K`` on a circle around the
    image centre and (ii) a stripe pattern at orientation ``πc/K``; every sample then gets its own
    blob offset, stripe phase, brightness and uniform pixel noise, and (for ``channels > 1``) a
    class-specific colour. The stripes show in any crop and the blob position carries the class in
    whole views, so both a linear probe on raw images and SSL methods under augmentation find signal. Labels are
    balanced (``n // K`` or one more per class) and shuffled. Everything is drawn from a private
    ``torch.Generator`` seeded with ``seed``: same arguments, same tensors, on any machine.

    Args:
        n: number of images.
        channels: image channels (1 = grayscale, 3 = RGB-like).
        size: height and width in pixels.
        num_classes: number of classes ``K`` (at least 2).
        seed: generator seed; use different seeds for train and val sets.
        noise: amplitude of the uniform pixel noise in [0, 1].
        gpu_transform: optional batch-level transform (see :class:`TensorImageDataset`).
    """

    def __init__(
        self,
        n: int,
        channels: int = 1,
        size: int = 28,
        num_classes: int = 10,
        seed: int = 0,
        noise: float = 0.15,
        gpu_transform: Optional[Callable[[dict], dict]] = None,
    ):
        for key, value, low in (("n", n, 1), ("channels", channels, 1), ("size", size, 4), ("num_classes", num_classes, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"synthetic.{key}", f"must be an integer >= {low}, got {value!r}.")
        if not 0.0 <= noise <= 1.0:
            raise ConfigError("synthetic.noise", f"must be in [0, 1], got {noise!r}.")
        g = torch.Generator().manual_seed(int(seed))
        labels = torch.randperm(n, generator=g) % num_classes
        images = _draw(labels, channels, size, num_classes, noise, g)
        super().__init__(images, labels, classes=[str(c) for c in range(num_classes)], gpu_transform=gpu_transform)
        self.seed = seed


def _draw(labels: torch.Tensor, channels: int, size: int, k: int, noise: float, g: torch.Generator) -> torch.Tensor:
    """Render one image per label, vectorised over the batch; returns (n, channels, size, size)."""
    n = len(labels)
    c = labels.to(torch.float32)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    xx, yy = xx[None], yy[None]

    # Blob: class position on a circle, jittered per sample.
    angle = 2 * math.pi * c / k
    px = 0.5 * torch.cos(angle) + 0.08 * torch.randn(n, generator=g)
    py = 0.5 * torch.sin(angle) + 0.08 * torch.randn(n, generator=g)
    blob = torch.exp(-((xx - px[:, None, None]) ** 2 + (yy - py[:, None, None]) ** 2) / (2 * 0.25**2))

    # Stripes: class orientation in [0, π), random phase so position alone does not identify them.
    theta = math.pi * c / k
    phase = 2 * math.pi * torch.rand(n, generator=g)
    along = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
    stripes = 0.5 + 0.5 * torch.cos(3 * math.pi * along + phase[:, None, None])

    brightness = 0.75 + 0.25 * torch.rand(n, generator=g)
    gray = brightness[:, None, None] * (0.6 * blob + 0.3 * stripes)
    # Colour: each channel weighted by a class-dependent phase (all ones for grayscale).
    chan = torch.arange(channels, dtype=torch.float32)
    if channels == 1:
        weights = torch.ones(n, 1)
    else:
        weights = 0.55 + 0.45 * torch.cos(2 * math.pi * (c[:, None] / k + chan[None] / channels))
    images = weights[:, :, None, None] * gray[:, None]
    images = images + noise * torch.rand(n, channels, size, size, generator=g)
    return images.clamp_(0.0, 1.0)
