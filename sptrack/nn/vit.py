"""A small vision transformer (own code) for self-supervised pretraining on small images."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.nn.pos_embed import resample_table, sincos_2d
from sptrack.nn.transformer import build_blocks, init_vit_weights

POS_EMBEDS = ("sincos", "learned")
REMAINDERS = ("error", "crop")


def _pair(value: Union[int, Sequence[int]], key: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConfigError(key, f"must be a positive int or a pair of them, got {value!r}.")
    return pair


class ViT(nn.Module):
    """Vision transformer: Conv2d patch embedding, 2-D positional embedding, pre-norm blocks, final LayerNorm.

    Inputs of any size whose sides are multiples of ``patch_size`` are accepted (e.g. 12x12 or
    16x16 local crops of a 28x28 model with patch 4); positional embeddings are resampled over the
    extent of the ``img_size`` grid (see :mod:`sptrack.nn.pos_embed`). Sizes that are not
    multiples of the patch size raise a ConfigError (``remainder="error"``, the default) rather
    than silently dropping pixels, or are centre-cropped (``remainder="crop"``).

    Args:
        img_size: training image size (int or (h, w)); fixes the base patch grid.
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio: transformer size.
        drop_path: maximal stochastic-depth rate (linearly increasing over blocks).
        use_cls_token: prepend a learned CLS token; :meth:`forward` returns it (else the mean of
            the patch tokens).
        use_mask_token: learn a mask token that replaces masked patch embeddings (``mask=``
            argument; for iBOT/SimMIM-style masked modelling).
        pos_embed: ``"sincos"`` (fixed, MAE/I-JEPA) or ``"learned"`` (DINO).
        qkv_bias: bias in the attention's qkv projection.
        remainder: inputs whose sides are not multiples of ``patch_size``: ``"error"`` raises a
            ConfigError, ``"crop"`` centre-crops them to the largest multiple (14x14 with patch 4
            is read as its central 12x12, a 3x3 grid).
    """

    # FSDP2 must gather the parameters on this entry point too (forward_tokens bypasses forward).
    fsdp_forward_methods = ("forward_features",)

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 28,
        patch_size: int = 4,
        in_chans: int = 1,
        embed_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        use_cls_token: bool = True,
        use_mask_token: bool = False,
        pos_embed: str = "sincos",
        qkv_bias: bool = True,
        remainder: str = "error",
    ):
        super().__init__()
        self.img_size = _pair(img_size, "img_size")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ConfigError("patch_size", f"must be a positive int, got {patch_size!r}.")
        if pos_embed not in POS_EMBEDS:
            raise ConfigError("pos_embed", f"unknown kind {pos_embed!r}.", f"Use one of {POS_EMBEDS}.")
        if remainder not in REMAINDERS:
            raise ConfigError("remainder", f"unknown mode {remainder!r}.", f"Use one of {REMAINDERS}.")
        self.patch_size = patch_size
        self.remainder = remainder
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.pos_embed_kind = pos_embed
        self._base_grid = self._grid_for(*self.img_size, key="img_size", strict=True)

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        else:
            self.pos_embed = None
            # Not persistent: it is a pure function of the config, so checkpoints need not carry it.
            self.register_buffer("pos_table", sincos_2d(embed_dim, self._base_grid)[None], persistent=False)
        self._sincos_cache: dict = {}
        self.blocks = build_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_vit_weights)
        # Like a linear layer on flattened patches (MAE), not a conv fan-in init.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.embed_dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        for token in (self.cls_token, self.mask_token, self.pos_embed):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)

    # ------------------------------------------------------------------ grids
    def _grid_for(self, h: int, w: int, key: str = "input", strict: bool = False) -> tuple[int, int]:
        p = self.patch_size
        cropping = self.remainder == "crop" and not strict
        if h < p or w < p or (not cropping and (h % p or w % p)):
            raise ConfigError(
                key,
                f"image size {h}x{w} is not a positive multiple of patch_size {p}.",
                f"Crop or resize to multiples of {p} (e.g. {max(p, h // p * p)}x{max(p, w // p * p)}), "
                "or build the ViT with remainder='crop'.",
            )
        return h // p, w // p

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of an ``img_size`` input."""
        return self._base_grid

    @property
    def num_patches(self) -> int:
        """Number of patch tokens of an ``img_size`` input."""
        return self._base_grid[0] * self._base_grid[1]

    def num_patches_for(self, h: int, w: int) -> int:
        """Number of patch tokens of an ``h x w`` input (ConfigError for sizes the ``remainder`` mode rejects)."""
        gh, gw = self._grid_for(h, w)
        return gh * gw

    def pos_embed_for(self, grid: Sequence[int]) -> torch.Tensor:
        """Positional embeddings ``(1, gh*gw, D)`` of a patch grid, resampled over the base grid's extent."""
        grid = tuple(grid)
        if self.pos_embed is not None:
            return resample_table(self.pos_embed, self._base_grid, grid)
        if grid == self._base_grid:
            return self.pos_table
        key = (grid, self.pos_table.device, self.pos_table.dtype)
        if key not in self._sincos_cache:
            table = sincos_2d(self.embed_dim, self._base_grid, grid)[None]
            self._sincos_cache[key] = table.to(device=self.pos_table.device, dtype=self.pos_table.dtype)
        return self._sincos_cache[key]

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError("input", f"expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        gh, gw = self._grid_for(h, w)
        p = self.patch_size
        top, left = (h - gh * p) // 2, (w - gw * p) // 2
        if (gh * p, gw * p) != (h, w):
            x = x[..., top : top + gh * p, left : left + gw * p]
        return x, (gh, gw)

    def _check_index(self, idx: torch.Tensor, batch: int, key: str) -> None:
        if idx.ndim != 2 or idx.shape[0] != batch or idx.dtype != torch.long:
            raise ConfigError(key, f"must be a LongTensor (B={batch}, K), got {idx.dtype} of shape {tuple(idx.shape)}.")

    def forward_features(
        self, x: torch.Tensor, keep: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> dict:
        """One pass returning ``{"cls": (B, D) or None, "patch": (B, K, D)}`` after the final norm.

        ``mask`` (bool ``(B, N)``, True = masked) replaces those patch embeddings by the mask token
        before positional embeddings are added. ``keep`` (long ``(B, K)``) selects the patch tokens
        that enter the blocks, in that order; the others are dropped right after the patch
        embedding, so they cannot influence the output (I-JEPA/MAE context encoders).
        """
        x, grid = self._check_input(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        b, n, d = tokens.shape
        if mask is not None:
            if self.mask_token is None:
                raise ConfigError("mask", "this ViT has no mask token.", "Build it with use_mask_token=True.")
            if mask.shape != (b, n) or mask.dtype != torch.bool:
                raise ConfigError("mask", f"must be a bool tensor of shape {(b, n)}, got {mask.dtype} {tuple(mask.shape)}.")
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.pos_embed_for(grid).to(tokens.dtype)
        if keep is not None:
            self._check_index(keep, b, "keep")
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, d))
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        if self.cls_token is None:
            return {"cls": None, "patch": tokens}
        return {"cls": tokens[:, 0], "patch": tokens[:, 1:]}

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image embedding ``(B, D)``: the CLS token, or the mean patch token without one."""
        out = self.forward_features(x, mask=mask)
        return out["cls"] if out["cls"] is not None else out["patch"].mean(dim=1)

    def forward_tokens(
        self, x: torch.Tensor, keep: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Patch tokens ``(B, N_keep, D)``; with ``keep`` only those patches go through the blocks."""
        return self.forward_features(x, keep=keep, mask=mask)["patch"]
