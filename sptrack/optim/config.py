"""The ``optim`` declaration of a Module: one optimizer, or several named ones assigned by regex.

Every form is one schema, :class:`~sptrack.optim.entry.OptimizerEntry`: a recipe's entries are used
as they are, and the dict form (``{"optimizer": ..., "scheduler": ..., ...}``) is parsed into an
entry by :func:`entry_from_dict`. :func:`optimizer_config` is the one function that validates an
entry and resolves it into the :class:`OptimizerConfig` the Module builds optimizers from. Errors
name the key where the user wrote the value: ``optim.head.lr`` for a recipe entry,
``optim.head.optimizer.lr`` for the same value in the dict form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from sptrack.errors import ConfigError, suggestion
from sptrack.optim.entry import OPTIMIZER_FIELDS, OptimizerEntry, check_entry
from sptrack.optim.factory import optimizer_registry, resolve_optimizer
from sptrack.optim.schedulers import LinearWarmupCosineAnnealingLR, is_plateau, resolve_scheduler, scheduler_registry
from sptrack.optim.spec import ClassSpec, check_arguments

#: Name given to the optimizer of the single-optimizer form.
DEFAULT_NAME = "default"
#: Metric a ReduceLROnPlateau watches when no ``monitor`` is given.
DEFAULT_MONITOR = "val_loss"
#: Keys of an entry of the dict form.
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
    #: Where parts of the entry were written when not at ``key.<part>``: ``"optimizer"``,
    #: ``"optimizer.<argument>"``, ``"scheduler"``, ``"scheduler.<argument>"`` -> dotted key.
    keys: dict = field(default_factory=dict)

    def key_of(self, part: str) -> str:
        """The dotted key the user wrote ``part`` (``"optimizer"``, ``"scheduler.T_max"``, ``"monitor"``) at."""
        return self.keys.get(part, f"{self.key}.{part}")


# ---------------------------------------------------------------------------------------------- entries
def optimizer_config(name: str, entry: OptimizerEntry, key: str, keys: Optional[Mapping[str, str]] = None) -> OptimizerConfig:
    """Validate ``entry`` and resolve its optimizer and scheduler: the one way to an :class:`OptimizerConfig`.

    ``key`` is the entry's dotted key (``optim.head``); ``keys`` maps the entry's field paths
    (``"type"``, ``"lr"``, ``"optimizer_args.eps"``, ``"scheduler_args.T_max"``, ...) to the keys
    they were written at, when not ``key.<path>`` (the recipe's own layout), and may also give
    ``"optimizer"``/``"scheduler"``, the declarations as a whole (default: the keys of ``type`` and
    ``scheduler``), and ``"scheduler.type"``, where the scheduler's class was named.
    """
    keys = dict(keys or {})

    def at(path: str) -> str:
        return keys.get(path, f"{key}.{path}")

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(key, f"optimizer name {name!r} must be letters, digits, '_', '-' or '.'.")
    check_entry(entry, at)
    scheduler, scheduler_keys = _scheduler(entry, at, keys.get("scheduler.type", at("scheduler")))
    monitor = DEFAULT_MONITOR if is_plateau(scheduler) and entry.monitor is None else entry.monitor
    clip_val = entry.gradient_clip_val

    optimizer_key = keys.get("optimizer", at("type"))
    arguments = {arg: (value, at(path)) for arg, (value, path) in entry.optimizer_arguments().items()}
    optimizer = _with_arguments(resolve_optimizer(entry.type, at("type")), arguments, "optimizer", at("type"))
    return OptimizerConfig(
        name=name,
        optimizer=optimizer,
        modules=entry.modules,
        scheduler=scheduler,
        interval=entry.interval,
        frequency=entry.frequency,
        monitor=monitor,
        gradient_clip_val=None if clip_val is None else float(clip_val),
        gradient_clip_algorithm=entry.gradient_clip_algorithm,
        key=key,
        keys={
            "optimizer": optimizer_key,
            **{f"optimizer.{arg}": k for arg, (_, k) in arguments.items()},
            "scheduler": keys.get("scheduler", at("scheduler")),
            **scheduler_keys,
            **{p: keys.get(p, at(p)) for p in ("modules", "monitor")},
        },
    )


def _scheduler(entry: OptimizerEntry, at: Callable[[str], str], type_key: str) -> tuple[Optional[ClassSpec], dict[str, str]]:
    spec = resolve_scheduler(entry.scheduler, type_key)
    arguments = {arg: (value, at(f"scheduler_args.{arg}")) for arg, value in entry.scheduler_args.items()}
    if spec is None:
        if arguments:
            first = next(iter(arguments.values()))[1]
            raise ConfigError(first, "is an argument of a scheduler, but none is declared.", f"Set {at('scheduler')} or drop the argument.")
        return None, {}
    if entry.warmup_fraction is not None and spec.cls is not None and issubclass(spec.cls, LinearWarmupCosineAnnealingLR):
        given = arguments.get("warmup_fraction", (None,))[0]
        if given is not None and given != entry.warmup_fraction:
            raise ConfigError(at("warmup_fraction"), f"given twice with different values: {entry.warmup_fraction!r} and {given!r}.")
        arguments["warmup_fraction"] = (entry.warmup_fraction, at("warmup_fraction"))
    spec = _with_arguments(spec, arguments, "scheduler", type_key)
    return spec, {f"scheduler.{arg}": k for arg, (_, k) in arguments.items()}


def _with_arguments(spec: ClassSpec, arguments: Mapping[str, tuple[Any, str]], kind: str, type_key: str) -> ClassSpec:
    """``spec`` with ``{argument: (value, key)}`` added; each argument the class does not take names its key."""
    if not arguments:
        return spec
    if spec.cls is None:
        raise ConfigError(type_key, f"must be a {kind} name or class, got {spec.factory!r}.", "A factory function takes no arguments.")
    check_arguments(spec.cls, {arg: k for arg, (_, k) in arguments.items()})
    return ClassSpec(cls=spec.cls, kwargs={**spec.kwargs, **{arg: value for arg, (value, _) in arguments.items()}})


# ---------------------------------------------------------------------------------------------- dict form
def entry_from_dict(entry: Any, key: str) -> tuple[OptimizerEntry, dict[str, str]]:
    """Parse one entry of the dict form into an :class:`OptimizerEntry` and where each part was written.

    ``{"optimizer": {"type": "SGD", "lr": 0.1, "nesterov": True}, "scheduler": {"type": "StepLR",
    "step_size": 2}}`` becomes ``OptimizerEntry(type="SGD", lr=0.1, optimizer_args={"nesterov": True},
    scheduler="StepLR", scheduler_args={"step_size": 2})``; what the dict leaves out is left to the
    classes (no lr: the optimizer's default; no scheduler: none). A ``monitor`` inside the scheduler
    dict moves to ``monitor``. The second value maps field paths to their keys in the dict
    (``"lr"`` -> ``optim.head.optimizer.lr``), for :func:`optimizer_config`.
    """
    if not isinstance(entry, Mapping):
        raise ConfigError(key, f"must be a dict with an 'optimizer' entry or an OptimizerEntry, got {type(entry).__name__}.")
    for k in entry:
        if k not in ENTRY_KEYS:
            raise ConfigError(f"{key}.{k}", "unknown option.", suggestion(k, ENTRY_KEYS) or f"Valid: {', '.join(ENTRY_KEYS)}.")
    if "optimizer" not in entry:
        raise ConfigError(key, "missing 'optimizer'.", "Add e.g. 'optimizer': 'AdamW'.")
    keys: dict[str, str] = {"optimizer": f"{key}.optimizer"}
    fields: dict[str, Any] = {k: entry[k] for k in ("modules", "interval", "frequency", "gradient_clip_val", "gradient_clip_algorithm") if k in entry}

    fields.update({name: None for name in OPTIMIZER_FIELDS})
    optimizer = entry["optimizer"]
    if isinstance(optimizer, Mapping):
        kind_type, arguments = _split_type(optimizer, f"{key}.optimizer", "optimizer", optimizer_registry())
        fields["type"], keys["type"] = kind_type, f"{key}.optimizer.type"
        fields["optimizer_args"] = {}
        for arg, value in arguments.items():
            if arg in OPTIMIZER_FIELDS:
                fields[arg], keys[arg] = value, f"{key}.optimizer.{arg}"
            else:
                fields["optimizer_args"][arg] = value
                keys[f"optimizer_args.{arg}"] = f"{key}.optimizer.{arg}"
    else:
        fields["type"], keys["type"] = optimizer, f"{key}.optimizer"

    scheduler = entry.get("scheduler")
    monitor = entry.get("monitor")
    fields["scheduler_args"] = {}
    keys["scheduler"] = f"{key}.scheduler"
    if isinstance(scheduler, Mapping):
        scheduler_type, arguments = _split_type(scheduler, f"{key}.scheduler", "scheduler", scheduler_registry())
        if "monitor" in arguments:
            inner = arguments.pop("monitor")
            if monitor is not None and monitor != inner:
                raise ConfigError(f"{key}.monitor", f"given twice with different values: {monitor!r} and {inner!r}.")
            monitor = inner
        fields["scheduler"], keys["scheduler.type"] = scheduler_type, f"{key}.scheduler.type"
        fields["scheduler_args"] = arguments
        keys.update({f"scheduler_args.{arg}": f"{key}.scheduler.{arg}" for arg in arguments})
    else:
        fields["scheduler"] = scheduler
    fields["monitor"] = monitor
    return OptimizerEntry(**fields), keys


def _split_type(spec: Mapping, key: str, kind: str, registry: Mapping[str, type]) -> tuple[Any, dict]:
    if "type" not in spec:
        raise ConfigError(
            key,
            f"a {kind} dict needs a 'type' entry; got keys {sorted(spec)}.",
            f"Write e.g. {{'type': {next(iter(sorted(registry)))!r}, ...}}.",
        )
    return spec["type"], {k: v for k, v in spec.items() if k != "type"}


def parse_entry(name: str, entry: Any, key: str) -> OptimizerConfig:
    """One named entry, an :class:`OptimizerEntry` or a dict of the dict form, as an :class:`OptimizerConfig`."""
    if isinstance(entry, OptimizerEntry):
        return optimizer_config(name, entry, key)
    parsed, keys = entry_from_dict(entry, key)
    return optimizer_config(name, parsed, key, keys)


# ---------------------------------------------------------------------------------------------- optim
def _is_single_form(optim: Mapping) -> bool:
    # An entry *named* "optimizer" in the named form is itself an entry (a dict holding an "optimizer" key).
    if "optimizer" not in optim:
        return False
    value = optim["optimizer"]
    return not (isinstance(value, OptimizerEntry) or (isinstance(value, Mapping) and "optimizer" in value))


def parse_optim(optim: Any, key: str = "optim") -> list[OptimizerConfig]:
    """Validate a Module's ``optim`` declaration and return one config per named optimizer.

    Accepts the named form ``{name: entry}``, each entry an :class:`OptimizerEntry` or a dict
    ``{"modules": regex, "optimizer": ..., ...}``, and the single form (one optimizer named
    ``"default"`` owning every parameter): a dict ``{"optimizer": ..., "scheduler": ..., ...}`` or
    one :class:`OptimizerEntry` without ``modules``.
    """
    if optim is None:
        return []
    if isinstance(optim, OptimizerEntry):
        if optim.modules is not None:
            raise ConfigError(f"{key}.modules", "a single optimizer owns every parameter.", "Use the named form {name: OptimizerEntry(modules=...)}.")
        return [optimizer_config(DEFAULT_NAME, optim, key)]
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
