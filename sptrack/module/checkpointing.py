"""Gradients of unfinished accumulation/frequency cycles, saved in and restored from checkpoints."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from sptrack.parallel.fsdp2 import to_full_tensor, to_local_like


def collect_pending_grads(named_params: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of the gradients that ``names`` still hold.

    A collective under FSDP2, so every rank must call it (Lightning runs ``on_save_checkpoint`` on
    all ranks).
    """
    pending = {}
    for name in names:
        grad = named_params[name].grad
        if grad is not None:
            pending[name] = to_full_tensor(grad).detach().cpu().clone()
    return pending


def attach_pending_grads(named_params: Mapping[str, torch.Tensor], pending: Mapping[str, torch.Tensor]) -> None:
    """Put saved gradients back on their parameters (sharded like the parameter under FSDP2)."""
    for name, grad in pending.items():
        if name not in named_params:
            raise KeyError(f"checkpoint holds a pending gradient for {name!r}, which this Module does not have.")
        param = named_params[name]
        param.grad = to_local_like(grad, param)
