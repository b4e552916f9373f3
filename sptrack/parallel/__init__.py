"""Parallel strategies: FSDP2 registration and sharding helpers.

The FSDP2 names are imported on first use, so the light helpers (``collectives``,
``process_group``, ``launch``) can be used without importing Lightning.
"""

from sptrack.lazy import lazy_exports

__all__ = ["FSDP2Strategy", "default_parallelize_fn", "register_fsdp2_strategy"]

__getattr__ = lazy_exports(__name__, {name: "sptrack.parallel.fsdp2" for name in __all__})
