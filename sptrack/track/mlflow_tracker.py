"""MLflow adapter: one run per job, metrics batched from a background thread, outages survived.

Data path: ``log_*`` calls only append records to an in-memory queue (cheap on the training
thread). A sender thread sends them every ``flush_interval_s`` with ``log_batch`` (up to 1000
metrics per request) and uploads artifacts. When the server stops answering, the sender keeps the
records, probes the server every ``retry_interval_s`` and, once the outage lasts
``spill_after_s`` or more than ``max_buffered_points`` records wait, appends them to
``<work_dir>/.sptrack/mlflow-spill/<run_id>.jsonl``. When the server answers again the file is
replayed first, then the queue. If the server is still away when the run ends, everything left
(including the final status) stays in that file; it is replayed automatically the next time a run
starts against the same tracking URI from the same working directory, or by
``python -m sptrack.track replay FILE``. Each step is announced once on the ``sptrack.track``
logger (a warning when the server goes away, when records are spilled and when it is back).

Requests to an ``http(s)`` server are made with MLflow's own HTTP helper and credentials, with
no retries of their own (the sender retries), so a dead server never blocks for minutes.
"""

from __future__ import annotations

import atexit
import getpass
import hashlib
import json
import os
import re
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from sptrack.track.base import (
    FAILED,
    FINISHED,
    STATUSES,
    Tracker,
    TrackerError,
    log,
)
from sptrack.track.mlflow_backend import (
    _INVALID_KEY_CHARS,
    _SPILL_VERSION,
    DEFAULT_EXPERIMENT,
    LIMITS,
    SPILL_DIR,
    _Backend,
    _is_http,
    _load_limits,
    _one_line,
    _safe_name,
    resolve_tracking_uri,
)
from sptrack.track.mlflow_sender import _Sender, _SystemMetrics
from sptrack.track.mlflow_spill import replay_leftovers
from sptrack.track.params import prepare_params, redact_value

# ---------------------------------------------------------------------------------------- tracker
_LIVE: "weakref.WeakSet[MLflowTracker]" = weakref.WeakSet()


@atexit.register
def _spill_on_exit() -> None:  # pragma: no cover - exercised by interpreter shutdown
    for tracker in list(_LIVE):
        if tracker.active and tracker._sender is not None:
            log.warning("sptrack.track: MLflow run %s was not finished before exit; marking it FAILED.", tracker.run_id)
            tracker._finish(FAILED, timeout=min(10.0, tracker.finish_timeout_s))


class MLflowTracker(Tracker):
    """An MLflow run per job.

    Args:
        tracking_uri: ``http(s)://host:port`` of an MLflow server, any SQLAlchemy URI, or ``None``
            for ``$MLFLOW_TRACKING_URI`` or else ``sqlite:///<work_dir>/mlflow.db`` (never the
            deprecated ``./mlruns`` file store).
        experiment: experiment name (created when missing).
        run_name, tags: for new runs.
        run_id: resume this run instead of creating one (a checkpoint's run id wins over nothing,
            this wins over a checkpoint).
        system_metrics: sample CPU/memory/disk/network (GPU where present) every
            ``system_metrics_interval_s`` seconds as ``system/*`` metrics.
        work_dir: where the default database and the spill files live (default: cwd).
        flush_interval_s: how often the sender thread sends (also sends at 1000 queued records).
        max_buffered_points / spill_after_s: during an outage, records go to the spill file once
            more than this many wait or the outage lasts this long.
        finish_timeout_s: how long the end of the run waits for an absent server before leaving
            the rest in the spill file.
        request_timeout_s / connect_timeout_s / retry_interval_s: HTTP timeouts and probe period.
    """

    kind = "mlflow"

    def __init__(
        self,
        tracking_uri: Optional[str] = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: Optional[str] = None,
        tags: Optional[Mapping[str, Any]] = None,
        *,
        run_id: Optional[str] = None,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        work_dir: Optional[str] = None,
        flush_interval_s: float = 2.0,
        max_buffered_points: int = 100_000,
        spill_after_s: float = 60.0,
        finish_timeout_s: float = 120.0,
        request_timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        retry_interval_s: float = 1.0,
    ):
        super().__init__()
        self.work_dir = Path(os.path.abspath(work_dir or os.getcwd()))
        self.tracking_uri = resolve_tracking_uri(tracking_uri, str(self.work_dir))
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.requested_run_id = run_id
        self.system_metrics = system_metrics
        self.system_metrics_interval_s = system_metrics_interval_s
        self.spill_dir = self.work_dir / SPILL_DIR
        self.flush_interval_s = flush_interval_s
        self.max_buffered_points = max_buffered_points
        self.spill_after_s = spill_after_s
        self.finish_timeout_s = finish_timeout_s
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_interval_s = retry_interval_s
        self.experiment_id: Optional[str] = None
        self._backend: Optional[_Backend] = None
        self._sender: Optional[_Sender] = None
        self._system: Optional[_SystemMetrics] = None
        self._params: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._long_keys: dict[str, str] = {}
        self._changed_files = 0
        self._resume_step: Optional[int] = None

    @property
    def shown_uri(self) -> str:
        """The tracking URI with any password masked."""
        return redact_value(self.tracking_uri)

    # ------------------------------------------------------------------ lifecycle
    def _get_backend(self) -> _Backend:
        if self._backend is None:
            _load_limits()
            self._backend = _Backend(self.tracking_uri, self.request_timeout_s, self.connect_timeout_s)
        return self._backend

    def check(self) -> None:
        """Fail fast, in one line naming the URI, when an http(s) server does not answer."""
        _load_limits()
        if _is_http(self.tracking_uri):
            self._get_backend().check()

    def start(self, run_id: Optional[str] = None) -> str:
        from mlflow.exceptions import MlflowException

        if self.active:
            raise TrackerError(f"MLflow run {self.run_id} is already active; finish it first.")
        backend = self._get_backend()
        backend.check()
        client = backend.client
        run_id = self.requested_run_id or run_id
        replay_leftovers(self.spill_dir, self.shown_uri, backend)
        try:
            if run_id:
                try:
                    run = client.get_run(run_id)
                except MlflowException as e:
                    raise TrackerError(f"MLflow run {run_id} cannot be resumed from {self.shown_uri}: {_one_line(e)}") from None
                self.experiment_id = run.info.experiment_id
                self._params = dict(run.data.params)
                self._step_floor = self._last_steps(client, run)
                self._resume_step = max(self._step_floor.values(), default=None)
                client.update_run(run_id, status="RUNNING")
                self.resumed = True
            else:
                self.experiment_id = self._experiment_id(client)
                tags = {**self._default_tags(), **{k: str(redact_value(v)) for k, v in self.tags.items()}}
                run = client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
                run_id = run.info.run_id
                self._params = {}
                self._step_floor = {}
                self.resumed = False
        except MlflowException as e:
            raise TrackerError(f"MLflow at {self.shown_uri}: {_one_line(e)}") from None
        self.run_id = run_id
        self.last_step = None
        self._sender = _Sender(self, backend, run_id)
        self.active = True
        _LIVE.add(self)
        if self.system_metrics:
            try:
                self._system = _SystemMetrics(self, self.system_metrics_interval_s)
            except Exception as e:  # noqa: BLE001 - e.g. psutil missing
                log.warning("sptrack.track: system metrics are off (%s).", _one_line(e))
        return run_id

    def _experiment_id(self, client) -> str:
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackerError(
                    f"MLflow experiment {self.experiment!r} at {self.shown_uri} is deleted; restore it or choose another name."
                )
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            # Artifacts next to the database, not in a ./mlruns folder that looks like the old file store.
            db_dir = os.path.dirname(self.tracking_uri[len("sqlite:///"):])
            location = Path(db_dir, "mlartifacts", _safe_name(self.experiment)).as_uri()
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:
            experiment = client.get_experiment_by_name(self.experiment)  # created concurrently
            if experiment is None:
                raise
            return experiment.experiment_id

    def _default_tags(self) -> dict[str, str]:
        from sptrack import __version__
        from sptrack.track.environment import git_info

        tags = {
            "mlflow.source.name": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
            "mlflow.source.type": "LOCAL",
            "sptrack.version": __version__,
        }
        try:
            tags["mlflow.user"] = getpass.getuser()
        except Exception:  # noqa: BLE001
            pass
        git = git_info()
        if git:
            tags["mlflow.source.git.commit"] = git["commit"]
        return tags

    @staticmethod
    def _last_steps(client, run) -> dict[str, int]:
        """Largest step per metric key (from the run's latest metrics: no full history download)."""
        steps = {}
        for metric in getattr(run.data, "_metric_objs", None) or []:
            steps[metric.key] = max(steps.get(metric.key, metric.step), metric.step)
        if not steps:
            for key in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, key)
                if history:
                    steps[key] = max(m.step for m in history)
        return steps

    def _spill_header(self, run_id: str) -> dict:
        return {
            "sptrack_spill": _SPILL_VERSION,
            "tracking_uri": self.shown_uri,
            "run_id": run_id,
            "experiment": self.experiment,
            "created": time.time(),
        }

    def flush(self, timeout: Optional[float] = None) -> bool:
        return self._sender.flush(timeout) if self._sender is not None else True

    def finish(self, status: str = FINISHED) -> None:
        self._finish(status, self.finish_timeout_s)

    def _finish(self, status: str, timeout: float) -> None:
        if not self.active:
            return
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self._system is not None:
            self._system.stop()
            self._system = None
        self._sender.put({"t": "status", "status": status, "end": int(time.time() * 1000)})
        sent = self._sender.close(timeout)
        self.active = False
        _LIVE.discard(self)
        if not sent:
            log.warning(
                "sptrack.track: MLflow tracking server %s did not come back within %.0f s; the rest of run %s "
                "(metrics, artifacts and its %s status) is in %s. It is sent automatically when a run starts "
                "again from %s, or with: python -m sptrack.track replay %s",
                self.shown_uri, timeout, self.run_id, status, self._sender.spill.path,
                self.work_dir, self._sender.spill.path,
            )

    # ------------------------------------------------------------------ data
    def _put(self, op: dict) -> None:
        if not self.active or self._sender is None:
            raise TrackerError("MLflowTracker: start() the run before logging.")
        self._sender.put(op)

    def _key(self, key: str) -> str:
        """A valid MLflow key for ``key`` (invalid characters -> ``_``; over-long keys shortened with a hash)."""
        cached = self._keys.get(key)
        if cached is not None:
            return cached
        clean = _INVALID_KEY_CHARS.sub("_", key)
        clean = re.sub(r"/{2,}", "/", clean).strip("/")
        clean = "/".join("_" if part in (".", "..") else part for part in clean.split("/")) or "_"
        if len(clean) > LIMITS.key:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            clean = clean[: LIMITS.key - 11] + "-" + digest
            self._long_keys[clean] = key
        self._keys[key] = clean
        return clean

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = prepare_params(params)
        changed = {}
        long_keys_before = len(self._long_keys)
        for key, value in flat.items():
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            name = self._key(key)
            if len(text) > LIMITS.param_value:
                artifact = f"params/{_safe_name(key)[:150]}.txt"
                self.log_text(text, artifact)
                text = f"<{len(text)} characters, more than MLflow's {LIMITS.param_value}: full value in artifact {artifact}>"
            logged = self._params.get(name)
            if logged is not None:
                if logged != text:
                    changed[name] = {"logged": logged, "new": text}
                continue
            self._params[name] = text
            self._put({"t": "p", "k": name, "v": text})
        if len(self._long_keys) > long_keys_before:
            self.log_dict(self._long_keys, "params/long_keys.json")
        if changed:
            self._changed_files += 1
            artifact = f"params/changed_{self._changed_files}.json"
            self.log_dict(changed, artifact)
            log.warning(
                "sptrack.track: %d parameter(s) differ from the values run %s already holds (MLflow parameters "
                "cannot change); the new values are in artifact %s: %s",
                len(changed), self.run_id, artifact, ", ".join(sorted(changed)[:5]) + (" ..." if len(changed) > 5 else ""),
            )

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self._put({"t": "m", "k": self._key(key), "v": value, "ts": ts, "s": step})

    def _log_system(self, metrics: dict[str, float]) -> None:
        if not self.active or self._sender is None:
            return
        step = self.last_step if self.last_step is not None else (self._resume_step + 1 if self._resume_step is not None else 0)
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self._sender.put({"t": "m", "k": self._key(key), "v": value, "ts": ts, "s": step})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            text = str(redact_value(value))
            if len(text) > LIMITS.tag_value:
                text = text[: LIMITS.tag_value - 20] + "... (truncated)"
            self._put({"t": "tag", "k": self._key(str(key)), "v": text})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put({"t": "text", "f": artifact_file, "c": text})

    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        self._put({"t": "file", "p": os.path.abspath(local_path), "a": artifact_path})

    def log_table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        import csv
        import io

        rows = [list(r) for r in rows]
        self.log_dict({"columns": list(columns), "data": rows}, f"{name}.json")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in r] for r in rows)
        self.log_text(buffer.getvalue(), f"{name}.csv")
