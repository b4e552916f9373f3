"""Optimizer and scheduler declarations, LARS, and regex assignment of parameters.

Names are imported on first use: :mod:`sptrack.optim.entry` (the :class:`OptimizerEntry` schema
that recipes write) imports no torch, and importing it must not pull in the rest of this package.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LARS": "sptrack.optim.lars",
    "Assignment": "sptrack.optim.assign",
    "LinearWarmupCosineAnnealingLR": "sptrack.optim.schedulers",
    "OptimizerConfig": "sptrack.optim.config",
    "OptimizerEntry": "sptrack.optim.entry",
    "assign_parameters": "sptrack.optim.assign",
    "optimizer_config": "sptrack.optim.config",
    "optimizer_registry": "sptrack.optim.factory",
    "parse_optim": "sptrack.optim.config",
    "resolve_optimizer": "sptrack.optim.factory",
    "resolve_scheduler": "sptrack.optim.schedulers",
    "scheduler_registry": "sptrack.optim.schedulers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sptrack.optim' has no attribute {name!r}")
