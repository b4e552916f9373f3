"""A small convolutional encoder for 28x28-ish images."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from sptrack.errors import ConfigError


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages (each halves the resolution after the first) and global average pooling.

    Args:
        in_chans: input channels.
        widths: channels of each stage.
        depths: 3x3 convolutions in each stage (the first of a stage changes the width and, after the
            first stage, halves the resolution); default two per stage.
        out_dim: if given, a final linear layer maps the pooled ``widths[-1]`` features to this
            width; else the pooled features are the embedding.
        channels_last: run the convolutions in the channels-last memory layout: the input is
            converted and the activations follow it, while the parameters stay contiguous (FSDP2
            shards only contiguous parameters). The outputs equal the contiguous layout's up to float
            rounding; on CPU at these widths it is about 1.3x faster (``bench/cnn_layout.py``).

    ``embed_dim`` is the output width. Under DDP, convert BatchNorm to SyncBatchNorm if the
    per-rank batch is small (``nn.SyncBatchNorm.convert_sync_batchnorm``).
    """

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (32, 64, 128), out_dim: Optional[int] = None,
                 channels_last: bool = True, depths: Optional[Sequence[int]] = None):
        super().__init__()
        widths = tuple(widths)
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ConfigError("widths", f"must be a non-empty sequence of positive ints, got {widths!r}.")
        depths = (2,) * len(widths) if depths is None else tuple(depths)
        if len(depths) != len(widths) or not all(isinstance(d, int) and d > 0 for d in depths):
            raise ConfigError("depths", f"must give a positive int for each of the {len(widths)} stages, got {depths!r}.")
        if out_dim is not None and (not isinstance(out_dim, int) or out_dim < 1):
            raise ConfigError("out_dim", f"must be a positive int or None, got {out_dim!r}.")
        layers: list[nn.Module] = []
        prev = in_chans
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                layers += [nn.Conv2d(prev, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, out_dim) if out_dim is not None else None
        self.embed_dim = out_dim if out_dim is not None else prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, embed_dim)``."""
        # The layout is set on the first convolution's output: with one input channel (MNIST) the input's
        # strides fit both layouts, and the convolutions would then stay contiguous.
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == 0:
                x = x.contiguous(memory_format=self.memory_format)
        x = self.pool(x).flatten(1)
        return self.fc(x) if self.fc is not None else x
