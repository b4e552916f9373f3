"""Optimizer and scheduler declarations, LARS, and regex assignment of parameters.

Names are imported on first use: :mod:`sptrack.optim.entry` (the :class:`OptimizerEntry` schema
that recipes write) imports no torch, and importing it must not pull in the rest of this package.
"""

from __future__ import annotations

from sptrack.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
