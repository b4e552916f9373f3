"""The one schema of a named optimizer: what a recipe writes and what every ``optim`` form becomes.

:class:`OptimizerEntry` is a plain dataclass (no torch here, so recipes and the CLI's config errors
stay fast). A recipe declares ``optim = {name: OptimizerEntry(...)}`` and hands it to
``sptrack.Module(optim=...)`` unchanged; the Module's dict form (``{"optimizer": ..., "scheduler":
...}``) is parsed into the same shape (:func:`sptrack.optim.config.entry_from_dict`), and
:func:`sptrack.optim.config.optimizer_config` turns an entry into the validated
:class:`~sptrack.optim.config.OptimizerConfig` the Module builds from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sptrack.errors import ConfigError, suggestion

#: The optimizer arguments an entry names as fields (all others go in ``optimizer_args``).
OPTIMIZER_FIELDS = ("lr", "weight_decay", "momentum", "betas")
INTERVALS = ("step", "epoch")
CLIP_ALGORITHMS = ("norm", "value")


@dataclass
class OptimizerEntry:
    """One named optimizer: the modules it owns, the optimizer, its schedule and its step rules.

    ``modules`` is a regex matched in full against qualified module names (children inherit); None
    makes this the catch-all optimizer, allowed only when it is the only one. ``type`` and
    ``scheduler`` are class names (``torch.optim``/``LARS``, ``torch.optim.lr_scheduler``/
    ``LinearWarmupCosineAnnealingLR``); in Python code also a class, a ``functools.partial`` or a
    factory ``fn(params)`` / ``fn(optimizer)``. The optimizer gets ``lr``, ``weight_decay``,
    ``momentum``, ``betas`` (each when not None: None is the optimizer's own default) and
    ``optimizer_args`` (any other keyword: ``eps``, ``nesterov`` ...). The scheduler gets
    ``scheduler_args`` (e.g. ``{"T_max": 100}`` or ``{"patience": 2}``); arguments left out that
    depend on the run length are filled from it. ``warmup_fraction`` is a short form of
    ``scheduler_args["warmup_fraction"]`` for LinearWarmupCosineAnnealingLR (ignored by other
    schedulers). ``monitor`` is the metric a ReduceLROnPlateau watches (default ``val_loss``).
    """

    modules: Optional[str] = None
    type: Any = "AdamW"
    lr: Optional[float] = 1e-3
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    betas: Optional[tuple] = None
    optimizer_args: dict = field(default_factory=dict)
    scheduler: Any = "LinearWarmupCosineAnnealingLR"
    scheduler_args: dict = field(default_factory=dict)
    warmup_fraction: Optional[float] = None
    monitor: Optional[str] = None
    interval: str = "step"
    frequency: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None

    def optimizer_arguments(self) -> dict[str, tuple[Any, str]]:
        """``{argument: (value, path)}`` of every optimizer argument given, ``path`` naming its field."""
        out: dict[str, tuple[Any, str]] = {}
        for name in OPTIMIZER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = (tuple(value) if name == "betas" and isinstance(value, list) else value, name)
        for name, value in (self.optimizer_args or {}).items():
            out[name] = (value, f"optimizer_args.{name}")
        return out


def check_entry(entry: "OptimizerEntry", at: Callable[[str], str]) -> None:
    """The checks of an entry that need no torch: its modules regex, interval, frequency, argument dicts,
    monitor and clipping. ``at(path)`` is the key a field was written at (``optim.head.interval``).

    Run by :func:`sptrack.optim.config.optimizer_config` (every Module) and by the recipe layer's
    config check (before anything is built).
    """
    modules = entry.modules
    if modules is not None:
        if not isinstance(modules, str):
            raise ConfigError(at("modules"), f"must be a regex string, got {type(modules).__name__}.")
        try:
            re.compile(modules)
        except re.error as err:
            raise ConfigError(at("modules"), f"invalid regex {modules!r}: {err}.") from err
    if entry.interval not in INTERVALS:
        raise ConfigError(at("interval"), f"must be 'step' or 'epoch', got {entry.interval!r}.", suggestion(str(entry.interval), INTERVALS))
    frequency = entry.frequency
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ConfigError(at("frequency"), f"must be an integer >= 1, got {frequency!r}.")
    for path in ("optimizer_args", "scheduler_args"):
        value = getattr(entry, path)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(at(path), f"must be a dict of keyword arguments, got {value!r}.", "Write e.g. {'eps': 1e-6}.")
    for arg in entry.optimizer_args:
        if arg in OPTIMIZER_FIELDS or arg == "type":
            raise ConfigError(at(f"optimizer_args.{arg}"), "is a field of the entry itself.", f"Set {at(arg)} instead.")
    monitor = entry.monitor
    if monitor is not None and (not isinstance(monitor, str) or not monitor.strip()):
        raise ConfigError(at("monitor"), f"must be a metric name, got {monitor!r}.")
    clip_val = entry.gradient_clip_val
    if clip_val is not None and (isinstance(clip_val, bool) or not isinstance(clip_val, (int, float)) or clip_val < 0):
        raise ConfigError(at("gradient_clip_val"), f"must be a number >= 0, got {clip_val!r}.")
    clip_algo = entry.gradient_clip_algorithm
    if clip_algo is not None and clip_algo not in CLIP_ALGORITHMS:
        raise ConfigError(
            at("gradient_clip_algorithm"), f"must be 'norm' or 'value', got {clip_algo!r}.", suggestion(str(clip_algo), CLIP_ALGORITHMS)
        )
