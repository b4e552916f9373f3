"""The sweep's options (``--sweep --trials N ...``), checked before anything is built.

Kept free of heavy imports so that ``python -m sptrack.run --help`` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

from sptrack.errors import ConfigError, unknown_name_error
from sptrack.recipe.validate import fraction

SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "halving", "hyperband", "none")
DIRECTIONS = ("max", "min")
DEFAULT_OBJECTIVE = "eval/knn_acc"
#: ``data.validation_fraction`` of a sweep whose config leaves it at 0: trials are evaluated (objective,
#: pruning) on this share of the training images, so the held-out split stays out of the selection.
SWEEP_VALIDATION_FRACTION = 0.1
#: Reports to the pruner per trial when ``--prune-every`` is not given.
REPORTS_PER_TRIAL = 10


@dataclass
class SweepOptions:
    """Everything ``--sweep`` needs besides the recipe and its config.

    ``storage`` None means ``sqlite:///<trainer.output_dir>/<recipe>/optuna.db``; ``study`` None
    means ``<recipe>-sweep``; ``prune_metric`` None means the objective; ``prune_every`` None means
    :data:`REPORTS_PER_TRIAL` reports per trial; ``prune_warmup`` is the fraction of a trial's steps
    before which it is never pruned; ``heartbeat_s`` is Optuna's
    heartbeat interval (RDB storages; a trial whose worker is silent for twice as long is FAIL and
    retried up to ``max_retry`` times).
    """

    trials: int = 20
    storage: Optional[str] = None
    study: Optional[str] = None
    workers: int = 1
    sampler: str = "tpe"
    pruner: str = "halving"
    objective: str = DEFAULT_OBJECTIVE
    direction: str = "max"
    prune_every: Optional[int] = None
    prune_metric: Optional[str] = None
    prune_startup: int = 3
    prune_warmup: float = 0.0
    heartbeat_s: int = 60
    max_retry: int = 3
    sampler_seed: Optional[int] = None

    @property
    def monitor(self) -> str:
        """The metric reported to the pruner (the objective unless ``--prune-metric`` says otherwise)."""
        return self.prune_metric or self.objective

    def validate(self) -> "SweepOptions":
        """Raise :class:`ConfigError` naming the option for any bad value; returns self."""
        for name, low in (("trials", 1), ("workers", 1), ("prune_every", 1), ("prune_startup", 0), ("heartbeat_s", 1), ("max_retry", 0)):
            value = getattr(self, name)
            if name == "prune_every" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(_flag(name), f"must be an integer >= {low}, got {value!r}.")
        fraction("--prune-warmup", self.prune_warmup, "Use e.g. --prune-warmup 0.3 (a fraction of each trial's steps).")
        for name, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("direction", DIRECTIONS)):
            value = getattr(self, name)
            if value not in valid:
                raise unknown_name_error(_flag(name), name, str(value), valid)
        for name in ("objective", "prune_metric"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or " " in value):
                raise ConfigError(_flag(name), f"must be a logged metric name such as 'eval/knn_acc', got {value!r}.")
        if self.study is not None and (not self.study.strip() or any(c in self.study for c in "/\\\n")):
            raise ConfigError("--study", f"must be a plain name (no slashes), got {self.study!r}.")
        if self.sampler == "cmaes":
            import importlib.util

            if importlib.util.find_spec("cmaes") is None:
                raise ConfigError("--sampler", "cmaes needs the 'cmaes' package, which is not installed.",
                                  "Install it (pip install cmaes) or use --sampler tpe.")
        return self


def heldout_name(objective: str) -> str:
    """The held-out counterpart of an evaluation metric: ``eval/knn_acc`` -> ``test/knn_acc``."""
    return "test/" + objective.split("/", 1)[-1]


def _flag(name: str) -> str:
    return "--" + {"heartbeat_s": "heartbeat"}.get(name, name).replace("_", "-")


def option_names() -> list[str]:
    """The dataclass fields (for tests and help)."""
    return [f.name for f in fields(SweepOptions)]


def finite(value: Optional[float]) -> bool:
    """Whether ``value`` is a finite number."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
