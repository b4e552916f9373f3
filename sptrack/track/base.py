"""The ``Tracker`` interface shared by the MLflow and W&B adapters, and the no-op tracker."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Iterable, Mapping, Optional, Sequence

log = logging.getLogger("sptrack.track")

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
STATUSES = (FINISHED, FAILED, KILLED)


class TrackerError(RuntimeError):
    """A tracker could not do what was asked (bad run id, rejected data, ...)."""


class TrackerUnreachableError(TrackerError):
    """The tracking backend cannot be reached when a run starts; the message is one line naming the URI."""


class Tracker(ABC):
    """One experiment-tracking run per job, driven from global rank 0.

    Lifecycle: :meth:`check` (optional, fails fast when the backend is unreachable) ->
    :meth:`start` (a new run, or the run ``run_id`` resumed) -> ``log_*`` -> :meth:`finish` with
    ``FINISHED`` / ``FAILED`` / ``KILLED``. Other ranks never call these; they learn the run id
    through :meth:`attach`.

    Metric points carry an explicit ``step`` (sptrack uses ``trainer.global_step`` units). After a
    resume, points at or below the last step the run already holds for that metric are dropped, so
    replaying the steps between a checkpoint and a crash adds no duplicates.
    """

    kind: str = "base"

    def __init__(self) -> None:
        self.run_id: Optional[str] = None
        self.resumed: bool = False
        self.active: bool = False
        self.last_step: Optional[int] = None
        self._step_floor: dict[str, int] = {}
        self._global_floor: Optional[int] = None
        self._warned_keys: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def check(self) -> None:
        """Raise :class:`TrackerUnreachableError` if the backend cannot be reached (default: no check)."""

    @abstractmethod
    def start(self, run_id: Optional[str] = None) -> str:
        """Start a new run, or resume ``run_id`` (same run, its steps continue); returns the run id."""

    def attach(self, run_id: Optional[str]) -> None:
        """Record the run id on a rank that does not talk to the backend."""
        self.run_id = run_id

    @abstractmethod
    def finish(self, status: str = FINISHED) -> None:
        """Send everything buffered and close the run with ``status`` (FINISHED, FAILED or KILLED)."""

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Send what is buffered; True when nothing is left pending."""
        return True

    def on_checkpoint(self) -> None:
        """Called when a checkpoint is saved (adapters may persist resume state)."""

    # ------------------------------------------------------------------ data
    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log hyper-parameters (nested mappings are flattened with dotted keys; secrets are masked)."""

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Log scalar metrics at ``step`` (default: the last step seen)."""
        if step is None:
            step = self.last_step if self.last_step is not None else 0
        step = int(step)
        kept = {}
        for key, value in metrics.items():
            number = _to_float(value)
            if number is None:
                if key not in self._warned_keys:
                    self._warned_keys.add(key)
                    log.warning("sptrack.track: metric %r has a non-numeric value (%r); not logged.", key, value)
                continue
            floor = self._step_floor.get(key, self._global_floor)
            if floor is not None and step <= floor:
                continue  # already in the resumed run
            kept[key] = number
        if self.last_step is None or step > self.last_step:
            self.last_step = step
        if kept:
            self._log_metrics(kept, step)

    @abstractmethod
    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Send already validated points."""

    @abstractmethod
    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Log a table (MLflow: ``<name>.json`` + ``<name>.csv`` artifacts; W&B: a ``wandb.Table``)."""

    @abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the run file ``artifact_file`` (a relative path such as ``config/resolved.json``)."""

    @abstractmethod
    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        """Store a local file under the run's folder ``artifact_path``."""

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Store ``data`` as indented JSON."""
        self.log_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (no-op where unsupported)."""


def _to_float(value: Any) -> Optional[float]:
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) or str(value).lower() == "nan" else None


class NoTracker(Tracker):
    """Tracks nothing (``--tracker none``)."""

    kind = "none"

    def start(self, run_id: Optional[str] = None) -> str:
        self.run_id = run_id
        self.active = True
        return run_id  # type: ignore[return-value]

    def finish(self, status: str = FINISHED) -> None:
        self.active = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        pass
