"""Pre-norm transformer blocks shared by :class:`~sptrack.nn.ViT` and :class:`~sptrack.nn.ViTPredictor`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sptrack.errors import ConfigError


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation (timm/DINO): truncated-normal(0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError("drop_path", f"must be in [0, 1), got {p}.")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` scaled by a per-sample Bernoulli(1-p)/(1-p) mask, or ``x`` in eval / p=0."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        """Shown in the module's repr."""
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels where available)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError("num_heads", f"embed_dim {dim} is not divisible by num_heads {num_heads}.", "Pick num_heads dividing embed_dim.")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """The block's two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, each with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float) -> nn.ModuleList:
    """``depth`` blocks whose drop-path rate grows linearly from 0 to ``drop_path`` (DeiT/DINO schedule)."""
    if depth < 1:
        raise ConfigError("depth", f"must be >= 1, got {depth}.")
    if mlp_ratio <= 0:
        raise ConfigError("mlp_ratio", f"must be > 0, got {mlp_ratio}.")
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
