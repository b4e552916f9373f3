"""Optimizer declarations: the names sptrack accepts and how they are resolved."""

from __future__ import annotations

import functools
from typing import Any

import torch

from sptrack.optim.lars import LARS
from sptrack.optim.spec import ClassSpec, resolve_class_spec


@functools.lru_cache(maxsize=1)
def optimizer_registry() -> dict[str, type]:
    """Every optimizer class in ``torch.optim`` plus sptrack's own (LARS), by class name."""
    found = {
        name: obj
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer
    }
    found["LARS"] = LARS
    return found


def resolve_optimizer(spec: Any, key: str) -> ClassSpec:
    """Validate an optimizer declaration (str | dict | partial | class | callable(params))."""
    return resolve_class_spec(spec, key, optimizer_registry(), "optimizer", torch.optim.Optimizer)
