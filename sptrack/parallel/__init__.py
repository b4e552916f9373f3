"""Parallel strategies: FSDP2 registration and sharding helpers."""

from sptrack.parallel.fsdp2 import FSDP2Strategy, default_parallelize_fn, register_fsdp2_strategy

__all__ = ["FSDP2Strategy", "default_parallelize_fn", "register_fsdp2_strategy"]
