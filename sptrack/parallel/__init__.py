"""Parallel strategies: FSDP2 registration and sharding helpers.

The FSDP2 names are imported on first use, so the light helpers (``collectives``,
``process_group``) can be used without importing Lightning.
"""

from typing import Any

__all__ = ["FSDP2Strategy", "default_parallelize_fn", "register_fsdp2_strategy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sptrack.parallel import fsdp2

        return getattr(fsdp2, name)
    raise AttributeError(f"module 'sptrack.parallel' has no attribute {name!r}")
