"""sptrack: self-supervised pretraining with exact multi-optimizer semantics, tracking and sweeps.

Heavy imports (torch, Lightning) happen on first use of an exported name, so ``python -m
sptrack.run --help`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Module": "sptrack.module.module",
    "Trainer": "sptrack.module.trainer",
    "LARS": "sptrack.optim.lars",
    "FSDP2Strategy": "sptrack.parallel.fsdp2",
    "ConfigError": "sptrack.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sptrack' has no attribute {name!r}")
