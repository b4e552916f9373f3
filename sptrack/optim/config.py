"""The ``optim`` declaration of a Module: one optimizer, or several named ones assigned by regex."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sptrack.errors import ConfigError, suggestion
from sptrack.optim.factory import resolve_optimizer
from sptrack.optim.schedulers import is_plateau, resolve_scheduler
from sptrack.optim.spec import ClassSpec

#: Name given to the optimizer of the single-optimizer form.
DEFAULT_NAME = "default"
#: Metric a ReduceLROnPlateau watches when no ``monitor`` is given.
DEFAULT_MONITOR = "val_loss"
INTERVALS = ("step", "epoch")
CLIP_ALGORITHMS = ("norm", "value")
ENTRY_KEYS = (
    "modules",
    "optimizer",
    "scheduler",
    "interval",
    "frequency",
    "monitor",
    "gradient_clip_val",
    "gradient_clip_algorithm",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class OptimizerConfig:
    """One named optimizer and everything that controls when and how it steps.

    ``modules`` is a regex matched in full against qualified module names; None makes this the
    catch-all optimizer that owns the Module itself (and so every child nobody else claims).
    ``gradient_clip_val``/``gradient_clip_algorithm`` left as None are filled from the Trainer.
    """

    name: str
    optimizer: ClassSpec
    modules: Optional[str] = None
    scheduler: Optional[ClassSpec] = None
    interval: str = "step"
    frequency: int = 1
    monitor: Optional[str] = None
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None
    #: Dotted path of this entry in the user's declaration, for messages.
    key: str = "optim"


def _is_single_form(optim: Mapping) -> bool:
    # An entry *named* "optimizer" in the named form is itself a dict holding an "optimizer" key.
    if "optimizer" not in optim:
        return False
    value = optim["optimizer"]
    return not (isinstance(value, Mapping) and "optimizer" in value)


def parse_entry(name: str, entry: Any, key: str) -> OptimizerConfig:
    if not isinstance(entry, Mapping):
        raise ConfigError(key, f"must be a dict with an 'optimizer' entry, got {type(entry).__name__}.")
    for k in entry:
        if k not in ENTRY_KEYS:
            raise ConfigError(f"{key}.{k}", "unknown option.", suggestion(k, ENTRY_KEYS) or f"Valid: {', '.join(ENTRY_KEYS)}.")
    if "optimizer" not in entry:
        raise ConfigError(key, "missing 'optimizer'.", "Add e.g. 'optimizer': 'AdamW'.")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(key, f"optimizer name {name!r} must be letters, digits, '_', '-' or '.'.")

    modules = entry.get("modules")
    if modules is not None:
        if not isinstance(modules, str):
            raise ConfigError(f"{key}.modules", f"must be a regex string, got {type(modules).__name__}.")
        try:
            re.compile(modules)
        except re.error as err:
            raise ConfigError(f"{key}.modules", f"invalid regex {modules!r}: {err}.") from err

    interval = entry.get("interval", "step")
    if interval not in INTERVALS:
        raise ConfigError(f"{key}.interval", f"must be 'step' or 'epoch', got {interval!r}.", suggestion(str(interval), INTERVALS))
    frequency = entry.get("frequency", 1)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ConfigError(f"{key}.frequency", f"must be an integer >= 1, got {frequency!r}.")

    scheduler_decl = entry.get("scheduler")
    monitor = entry.get("monitor")
    if isinstance(scheduler_decl, Mapping) and "monitor" in scheduler_decl:
        scheduler_decl = dict(scheduler_decl)
        inner_monitor = scheduler_decl.pop("monitor")
        if monitor is not None and monitor != inner_monitor:
            raise ConfigError(f"{key}.monitor", f"given twice with different values: {monitor!r} and {inner_monitor!r}.")
        monitor = inner_monitor
    scheduler = resolve_scheduler(scheduler_decl, f"{key}.scheduler")
    if is_plateau(scheduler) and monitor is None:
        monitor = DEFAULT_MONITOR
    if monitor is not None and not isinstance(monitor, str):
        raise ConfigError(f"{key}.monitor", f"must be a metric name, got {monitor!r}.")

    clip_val = entry.get("gradient_clip_val")
    if clip_val is not None and (isinstance(clip_val, bool) or not isinstance(clip_val, (int, float)) or clip_val < 0):
        raise ConfigError(f"{key}.gradient_clip_val", f"must be a number >= 0, got {clip_val!r}.")
    clip_algo = entry.get("gradient_clip_algorithm")
    if clip_algo is not None and clip_algo not in CLIP_ALGORITHMS:
        raise ConfigError(
            f"{key}.gradient_clip_algorithm", f"must be 'norm' or 'value', got {clip_algo!r}.", suggestion(str(clip_algo), CLIP_ALGORITHMS)
        )
    return OptimizerConfig(
        name=name,
        optimizer=resolve_optimizer(entry["optimizer"], f"{key}.optimizer"),
        modules=modules,
        scheduler=scheduler,
        interval=interval,
        frequency=frequency,
        monitor=monitor,
        gradient_clip_val=None if clip_val is None else float(clip_val),
        gradient_clip_algorithm=clip_algo,
        key=key,
    )


def parse_optim(optim: Any, key: str = "optim") -> list[OptimizerConfig]:
    """Validate a Module's ``optim`` declaration and return one config per named optimizer.

    Accepts the single form ``{"optimizer": ..., "scheduler": ..., ...}`` (one optimizer named
    ``"default"`` owning every parameter) and the named form ``{name: {"modules": regex, ...}}``.
    """
    if optim is None:
        return []
    if not isinstance(optim, Mapping):
        raise ConfigError(key, f"must be a dict, got {type(optim).__name__}.")
    if _is_single_form(optim):
        entry = dict(optim)
        if "modules" in entry:
            raise ConfigError(f"{key}.modules", "the single-optimizer form owns every parameter.", "Use the named form {name: {'modules': ...}}.")
        return [parse_entry(DEFAULT_NAME, entry, key)]
    if not optim:
        raise ConfigError(key, "declares no optimizer.", "Add e.g. {'optimizer': 'AdamW'}.")
    configs = [parse_entry(name, entry, f"{key}.{name}") for name, entry in optim.items()]
    catch_all = [c.name for c in configs if c.modules is None]
    if len(configs) > 1 and catch_all:
        # Two optimizers without patterns would both claim everything.
        raise ConfigError(f"{key}.{catch_all[0]}.modules", "is required when several optimizers are declared.", "Give each a regex over module names.")
    return configs
