"""I-JEPA multi-block masking (Assran et al. 2023, Sec. 3): one context block and M target blocks per image.

Per batch, the target block shape (scale ~ U(target_scale), aspect ~ U(target_aspect)) and the
context block shape (scale ~ U(context_scale), aspect ~ U(context_aspect)) are drawn once; per
image, M target blocks and one context block are placed uniformly on the patch grid, and every
target patch is removed from the context. Sharing the shapes across the batch gives every image
the same number of target patches, and the context sets are cut to the smallest context of the
batch by keeping a random subset (not the first patches, which would bias towards the block's top
rows): tensors stay rectangular, so the encoder and predictor run without padding or attention
masks, for any patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sptrack.errors import ConfigError


@dataclass
class BlockMasks:
    """Patch indices of one batch (row-major on the patch grid).

    ``context``: long ``(B, K_ctx)``, sorted per row; ``targets``: long ``(B, M, K_tgt)``, each
    block's indices sorted. No index of ``context[b]`` appears in ``targets[b]``.
    """

    context: torch.Tensor
    targets: torch.Tensor
    target_shape: tuple[int, int]
    context_shape: tuple[int, int]


def _range(value: Sequence[float], key: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low < lo <= hi <= high:
        raise ConfigError(key, f"must satisfy {low} < low <= high <= {high}, got {tuple(value)!r}.")
    return lo, hi


class BlockMaskSampler:
    """Samples I-JEPA context/target block masks on a ``grid = (rows, cols)`` patch grid.

    Args:
        grid: patch grid (int for square).
        num_targets: target blocks per image (M = 4 in the paper).
        target_scale, target_aspect: area fraction and height/width aspect of a target block
            ((0.15, 0.2) and (0.75, 1.5) in the paper).
        context_scale, context_aspect: the same for the context block ((0.85, 1.0), (1, 1)).
        min_context: fewest context patches an image may keep; placements leaving fewer are
            redrawn (up to ``max_tries``), then the target blocks are redrawn too.
    """

    def __init__(
        self,
        grid: int | Sequence[int],
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] = (0.85, 1.0),
        context_aspect: Sequence[float] = (1.0, 1.0),
        min_context: int = 4,
        max_tries: int = 50,
    ):
        rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if rows < 2 or cols < 2:
            raise ConfigError("ijepa.grid", f"needs at least 2x2 patches, got {(rows, cols)}.")
        if not isinstance(num_targets, int) or num_targets < 1:
            raise ConfigError("ijepa.num_targets", f"must be a positive integer, got {num_targets!r}.")
        self.grid = (rows, cols)
        self.num_targets = num_targets
        self.target_scale = _range(target_scale, "ijepa.target_scale", 0.0, 1.0)
        self.target_aspect = _range(target_aspect, "ijepa.target_aspect", 0.0, math.inf)
        self.context_scale = _range(context_scale, "ijepa.context_scale", 0.0, 1.0)
        self.context_aspect = _range(context_aspect, "ijepa.context_aspect", 0.0, math.inf)
        if not 1 <= min_context < rows * cols:
            raise ConfigError("ijepa.min_context", f"must be in [1, {rows * cols - 1}], got {min_context!r}.")
        self.min_context = min_context
        self.max_tries = max_tries

    def block_shape(self, scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator) -> tuple[int, int]:
        """``(height, width)`` in patches of a block with area ~ U(scale) * N and aspect ~ U(aspect)."""
        rows, cols = self.grid
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        area = (scale[0] + u[0] * (scale[1] - scale[0])) * rows * cols
        ar = aspect[0] + u[1] * (aspect[1] - aspect[0])
        h = min(rows, max(1, round(math.sqrt(area * ar))))
        w = min(cols, max(1, round(math.sqrt(area / ar))))
        return h, w

    def _block(self, top: int, left: int, shape: tuple[int, int]) -> torch.Tensor:
        """The flattened boolean mask of an ``(h, w)`` block whose top-left patch is ``(top, left)``."""
        block = torch.zeros(self.grid, dtype=torch.bool)
        block[top : top + shape[0], left : left + shape[1]] = True
        return block.flatten()

    def _place(self, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        rows, cols = self.grid
        h, w = shape
        top = int(torch.randint(0, rows - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, cols - w + 1, (1,), generator=generator))
        return self._block(top, left, shape)

    def placement_mass(self, shape: tuple[int, int], content: torch.Tensor) -> torch.Tensor:
        """Content covered by every placement of an ``(h, w)`` block: ``(rows - h + 1) * (cols - w + 1)``, row-major.

        ``content`` is ``(rows, cols)``; the sums come from its summed-area table.
        """
        h, w = shape
        corner = F.pad(content.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
        mass = corner[h:, w:] - corner[:-h, w:] - corner[h:, :-w] + corner[:-h, :-w]
        return mass.clamp_min(0).flatten()

    def _place_by_mass(self, shape: tuple[int, int], mass: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A block placed with probability proportional to ``mass`` (:meth:`placement_mass`; uniform if it is all zero)."""
        if not float(mass.sum()) > 0:
            return self._place(shape, generator)
        top, left = divmod(int(torch.multinomial(mass, 1, generator=generator)), self.grid[1] - shape[1] + 1)
        return self._block(top, left, shape)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, content: torch.Tensor | None = None) -> BlockMasks:
        """Masks for ``batch_size`` images (CPU tensors).

        ``content``: optional non-negative ``(batch_size, rows * cols)`` per-patch weights; target blocks
        are then placed with probability proportional to the weight they cover (the context block stays uniform).
        """
        g = generator if generator is not None else torch.default_generator
        t_shape = self.block_shape(self.target_scale, self.target_aspect, g)
        c_shape = self.block_shape(self.context_scale, self.context_aspect, g)
        if content is not None and tuple(content.shape) != (batch_size, self.grid[0] * self.grid[1]):
            raise ValueError(f"content must be (batch, {self.grid[0] * self.grid[1]}) per-patch weights, got {tuple(content.shape)}.")
        contexts, targets = [], []
        for i in range(batch_size):
            # one image's placement weights serve all its tries and target blocks
            mass = None if content is None else self.placement_mass(t_shape, content[i].reshape(self.grid))
            for _ in range(self.max_tries):
                blocks = [self._place(t_shape, g) if mass is None else self._place_by_mass(t_shape, mass, g)
                          for _ in range(self.num_targets)]
                covered = torch.stack(blocks).any(0)
                context = self._place(c_shape, g) & ~covered
                if int(context.sum()) >= self.min_context:
                    break
            else:
                raise ConfigError("ijepa.min_context", f"no placement kept {self.min_context} context patches in "
                                  f"{self.max_tries} tries (target block {t_shape}, context block {c_shape}).",
                                  "Lower num_targets or target_scale, or raise context_scale.")
            contexts.append(context.nonzero().flatten())
            targets.append(torch.stack([b.nonzero().flatten() for b in blocks]))
        keep = min(len(c) for c in contexts)
        trimmed = [c[torch.randperm(len(c), generator=g)[:keep]].sort().values for c in contexts]
        return BlockMasks(torch.stack(trimmed), torch.stack(targets), t_shape, c_shape)


def patch_content(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pixel variance of every patch, over its channels and pixels: ``(B, C, H, W)`` -> ``(B, rows * cols)``, row-major."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch_size) * (w // patch_size), -1).var(-1, unbiased=False)


class IJEPAMasks(nn.Module):
    """Batch transform adding I-JEPA masks: ``batch["context_idx"]`` ``(B, K_ctx)`` and ``batch["target_idx"]`` ``(B, M, K_tgt)``.

    Use it as the training dataset's ``gpu_transform`` (``sptrack.Module`` applies it to the
    collated batch on the device). Masks are drawn on the CPU from a private generator when
    ``seed`` is given (the same masks on every device), else from torch's global RNG.

    Args:
        sampler: the block sampler (its grid is the encoder's patch grid).
        seed: seed of the private generator.
        image_key: the batch entry whose first dimension is the batch size.
        content_of: optional ``batch -> (B, C, H, W)`` images whose per-patch pixel variance weights the
            target placement (:func:`patch_content` with ``patch_size``); None places targets uniformly.
        patch_size: the encoder's patch side, needed with ``content_of``.
    """

    def __init__(self, sampler: BlockMaskSampler, seed: int | None = None, image_key: str = "image",
                 content_of: Callable[[dict], torch.Tensor] | None = None, patch_size: int | None = None):
        super().__init__()
        if content_of is not None and patch_size is None:
            raise ValueError("content_of needs the encoder's patch_size.")
        self.sampler = sampler
        self.image_key = image_key
        self.content_of = content_of
        self.patch_size = patch_size
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, batch: dict) -> dict:
        images = batch[self.image_key]
        content = None
        if self.content_of is not None:
            content = patch_content(self.content_of(batch).detach().float(), self.patch_size).cpu()
        masks = self.sampler.sample(images.shape[0], self.generator, content)
        return {**batch, "context_idx": masks.context.to(images.device), "target_idx": masks.targets.to(images.device)}
