"""Scheduler declarations, sptrack's warm-up + cosine schedule, and defaults for omitted arguments.

Defaults are computed from ``total``: the number of times the scheduler will be stepped during the
run (optimizer steps for ``interval="step"``, epochs for ``interval="epoch"``). Whatever the user
gives overrides the default of that argument only, so ``{"type": "CosineAnnealingLR",
"eta_min": 1e-6}`` still gets ``T_max`` from the run length.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from sptrack.errors import ConfigError
from sptrack.optim.spec import ClassSpec, resolve_class_spec


class LinearWarmupCosineAnnealingLR(LRScheduler):
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_steps`` (or
    ``warmup_fraction * total_steps``), then cosine decay to ``eta_min`` at ``total_steps``;
    constant at ``eta_min`` afterwards."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.01,
        eta_min: float = 0.0,
        warmup_fraction: Optional[float] = None,
        last_epoch: int = -1,
    ):
        if warmup_fraction is not None:
            if not 0.0 <= warmup_fraction <= 1.0:
                raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}.")
            warmup_steps = int(round(warmup_fraction * total_steps))
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}.")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, base_lr: float, step: int) -> float:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return base_lr * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.eta_min + (base_lr - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        """Learning rates of every param group at the current step (closed form)."""
        return [self._lr_at(base, self.last_epoch) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


@functools.lru_cache(maxsize=1)
def scheduler_registry() -> dict[str, type]:
    """Every scheduler class in ``torch.optim.lr_scheduler`` plus sptrack's own, by class name."""
    mod = torch.optim.lr_scheduler
    found = {
        name: obj
        for name, obj in vars(mod).items()
        if isinstance(obj, type)
        and (issubclass(obj, LRScheduler) or obj is ReduceLROnPlateau)
        and obj not in (LRScheduler, getattr(mod, "_LRScheduler", None))
        and not name.startswith("_")
    }
    found["LinearWarmupCosineAnnealingLR"] = LinearWarmupCosineAnnealingLR
    return found


def resolve_scheduler(spec: Any, key: str) -> Optional[ClassSpec]:
    """Validate a scheduler declaration; None/"none" means no scheduler."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    # Schedulers do not all share one base class (ReduceLROnPlateau predates LRScheduler in old torch).
    return resolve_class_spec(spec, key, scheduler_registry(), "scheduler", object)


def is_plateau(spec: Optional[ClassSpec]) -> bool:
    """True when ``spec`` builds a ReduceLROnPlateau, which steps on a monitored metric."""
    return spec is not None and spec.cls is not None and issubclass(spec.cls, ReduceLROnPlateau)


def _needs_total(cls: type, key: str, total: Optional[int]) -> int:
    if total is None or total < 1:
        raise ConfigError(
            key,
            f"{cls.__name__} needs the run length to fill its defaults, but the trainer has no finite "
            "max_steps/max_epochs and a sized train dataloader.",
            "Give the argument explicitly (e.g. T_max / total_steps) or set Trainer(max_epochs=...).",
        )
    return total


def scheduler_defaults(spec: ClassSpec, optimizer: torch.optim.Optimizer, total: Optional[int], key: str) -> dict:
    """Default arguments for the known schedulers, for the arguments the user did not give."""
    cls, given = spec.cls, spec.kwargs
    if cls is None:
        return {}
    name = cls.__name__

    def need() -> int:
        return _needs_total(cls, key, total)

    defaults: dict[str, Any] = {}
    if name == "CosineAnnealingLR" and "T_max" not in given:
        defaults["T_max"] = need()
    elif name == "CosineAnnealingWarmRestarts" and "T_0" not in given:
        defaults["T_0"] = need()
    elif name == "OneCycleLR":
        if "max_lr" not in given:
            defaults["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        if not {"total_steps", "epochs", "steps_per_epoch"} & set(given):
            defaults["total_steps"] = need()
    elif name == "StepLR" and "step_size" not in given:
        defaults["step_size"] = max(1, need() // 3)
    elif name == "MultiStepLR" and "milestones" not in given:
        n = need()
        defaults["milestones"] = sorted({max(1, n // 2), max(1, (3 * n) // 4)})
    elif name == "ExponentialLR" and "gamma" not in given:
        # Decays the lr by 100x over the run, whatever its length.
        defaults["gamma"] = 0.01 ** (1.0 / need())
    elif name == "LinearLR":
        defaults.update({"start_factor": 1.0, "end_factor": 0.0})
        if "total_iters" not in given:
            defaults["total_iters"] = need()
    elif name == "ConstantLR":
        # torch's own default factor is 1/3; a "constant" schedule should keep the lr as declared.
        defaults["factor"] = 1.0
        if "total_iters" not in given:
            defaults["total_iters"] = need()
    elif name == "PolynomialLR" and "total_iters" not in given:
        defaults["total_iters"] = need()
    elif name == "LinearWarmupCosineAnnealingLR" and "total_steps" not in given:
        n = need()
        defaults["total_steps"] = n
        if "warmup_fraction" not in given:
            defaults["warmup_steps"] = min(given.get("warmup_steps", n // 10), n)
    return {k: v for k, v in defaults.items() if k not in given}


def build_scheduler(spec: ClassSpec, optimizer: torch.optim.Optimizer, total: Optional[int], key: str):
    """Instantiate ``spec`` on ``optimizer`` with defaults filled from the run length ``total``."""
    try:
        return spec.build(optimizer, scheduler_defaults(spec, optimizer, total, key))
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(key, f"building {spec.name} failed: {err}") from err
