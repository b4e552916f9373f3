"""sptrack: self-supervised pretraining with exact multi-optimizer semantics, tracking and sweeps.

Heavy imports (torch, Lightning) happen on first use of an exported name, so ``python -m
sptrack.run --help`` stays fast.
"""

from __future__ import annotations

from sptrack.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Module": "sptrack.module.module",
    "Trainer": "sptrack.module.trainer",
    "LARS": "sptrack.optim.lars",
    "FSDP2Strategy": "sptrack.parallel.fsdp2",
    "ConfigError": "sptrack.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
