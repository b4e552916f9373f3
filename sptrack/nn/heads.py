"""Projection heads: a configurable MLP (SimCLR/BYOL/VICReg style) and the DINO head."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from sptrack.errors import ConfigError

NORMS = ("bn", "ln", None)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _norm(kind: Optional[str], dim: int, affine: bool = True) -> Optional[nn.Module]:
    if kind == "bn":
        return nn.BatchNorm1d(dim, affine=affine)
    if kind == "ln":
        return nn.LayerNorm(dim, elementwise_affine=affine)
    return None


def _check(layers: int, norm: Optional[str], activation: str) -> None:
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError("layers", f"must be an int >= 1, got {layers!r}.")
    if norm not in NORMS:
        raise ConfigError("norm", f"unknown norm {norm!r}.", "Use 'bn', 'ln' or None.")
    if activation not in ACTIVATIONS:
        raise ConfigError("activation", f"unknown activation {activation!r}.", f"Use one of {sorted(ACTIVATIONS)}.")


def mlp_layers(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int, norm: Optional[str], activation: str, last_bias: bool = True
) -> list[nn.Module]:
    """``layers`` linear layers with norm + activation between them (none after the last)."""
    _check(layers, norm, activation)
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == layers - 1
        # A bias right before BatchNorm is cancelled by its mean subtraction.
        modules.append(nn.Linear(a, b, bias=last_bias if last else norm != "bn"))
        if not last:
            if norm is not None:
                modules.append(_norm(norm, b))
            modules.append(ACTIVATIONS[activation]())
    return modules


class MLP(nn.Sequential):
    """Projection/prediction head: ``(Linear -> norm -> act) x (layers-1) -> Linear [-> norm]``.

    Args:
        in_dim, hidden_dim, out_dim: widths.
        layers: number of linear layers (1 = a single Linear).
        norm: ``"bn"`` (BatchNorm1d), ``"ln"`` (LayerNorm) or None, after each hidden linear.
        last_norm: also normalise the output, without affine parameters (SimSiam/MoCo v3
            projectors end this way so the output is standardised per feature).
        activation: ``"relu"`` or ``"gelu"``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        layers: int = 3,
        norm: Optional[str] = "bn",
        last_norm: bool = False,
        activation: str = "relu",
    ):
        if last_norm and norm is None:
            raise ConfigError("last_norm", "needs a norm kind.", "Set norm='bn' or 'ln', or last_norm=False.")
        modules = mlp_layers(in_dim, hidden_dim, out_dim, layers, norm, activation, last_bias=not (last_norm and norm == "bn"))
        if last_norm:
            modules.append(_norm(norm, out_dim, affine=False))
        super().__init__(*modules)
        self.out_dim = out_dim


class DINOHead(nn.Module):
    """DINO head (Caron et al. 2021): MLP -> L2-normalised bottleneck -> weight-normalised linear, no bias.

    The last layer is ``torch.nn.utils.parametrizations.weight_norm`` (per output row: magnitude
    ``original0`` times direction ``original1``); the magnitude starts at 1 and, with
    ``norm_last_layer=True``, is frozen, so every prototype has unit norm and logits are cosine
    similarities (stabilises training, as in the paper).

    Args:
        in_dim: backbone width.
        out_dim: number of prototypes (K).
        hidden_dim, bottleneck_dim, layers: the MLP (GELU activations).
        norm_last_layer: freeze the weight-norm magnitude at 1.
        norm: optional ``"bn"``/``"ln"`` in the MLP (the paper uses none for ViTs).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        layers: int = 3,
        norm_last_layer: bool = True,
        norm: Optional[str] = None,
    ):
        super().__init__()
        self.mlp = nn.Sequential(*mlp_layers(in_dim, hidden_dim, bottleneck_dim, layers, norm, "gelu"))
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)`` logits (before the DINO temperature)."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)
