"""The one schema of a named optimizer: what a recipe writes and what every ``optim`` form becomes.

:class:`OptimizerEntry` is a plain dataclass (no torch here, so recipes and the CLI's config errors
stay fast). A recipe declares ``optim = {name: OptimizerEntry(...)}`` and hands it to
``sptrack.Module(optim=...)`` unchanged; the Module's dict form (``{"optimizer": ..., "scheduler":
...}``) is parsed into the same shape (:func:`sptrack.optim.config.entry_from_dict`), and
:func:`sptrack.optim.config.optimizer_config` turns an entry into the validated
:class:`~sptrack.optim.config.OptimizerConfig` the Module builds from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

#: The optimizer arguments an entry names as fields (all others go in ``optimizer_args``).
OPTIMIZER_FIELDS = ("lr", "weight_decay", "momentum", "betas")


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
