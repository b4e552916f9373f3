"""``MLflowTracker``: one MLflow run per job, metrics batched from a background thread, outages survived.

Data path: ``log_*`` calls only append records to the :class:`~sptrack.track.mlflow.sender.Sender`'s
queue (cheap on the training thread); the sender thread sends them every ``flush_interval_s`` with
``log_batch`` (up to 1000 metrics per request) and uploads artifacts. When the server stops
answering, the sender keeps the records, probes the server every ``retry_interval_s`` and, once the
outage lasts ``spill_after_s`` or more than ``max_buffered_points`` records wait, appends them to
``<work_dir>/.sptrack/mlflow-spill/<run_id>.jsonl``. When the server answers again the file is
replayed first, then the queue. If the server is still away when the run ends, everything left
(including the final status) stays in that file; it is replayed automatically the next time a run
starts against the same tracking URI from the same working directory, or by
``python -m sptrack.track replay FILE``.
"""

from __future__ import annotations

import atexit
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from sptrack.errors import missing_driver_error
from sptrack.track.base import FAILED, FINISHED, STATUSES, Tracker, TrackerError, log
from sptrack.track.mlflow.backend import Backend, one_line
from sptrack.track.mlflow.limits import LIMITS, KeyMapper, load_limits, safe_name
from sptrack.track.mlflow.runs import default_run_tags, ensure_experiment, last_steps
from sptrack.track.mlflow.sender import Sender, SendPolicy
from sptrack.track.mlflow.spill import SPILL_DIR, SpillFile, replay_leftovers, spill_header
from sptrack.track.mlflow.system import SystemMetrics
from sptrack.track.mlflow.uris import DEFAULT_EXPERIMENT, is_http, resolve_tracking_uri
from sptrack.track.params import prepare_params, redact_value

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
        experiment: experiment name (created when missing, tagged ``mlflow.experimentKind=custom_model_development``).
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

    Read-only: :attr:`tracking_uri` (resolved), :attr:`shown_uri` (password masked), and after
    :meth:`start` :attr:`experiment_id` and :attr:`run_id`: the run's page in the MLflow UI is
    ``<ui>/#/experiments/<experiment_id>/runs/<run_id>``.
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
        self._tracking_uri = resolve_tracking_uri(tracking_uri, str(self.work_dir))
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
        self._experiment_id: Optional[str] = None
        self._backend: Optional[Backend] = None
        self._sender: Optional[Sender] = None
        self._system: Optional[SystemMetrics] = None
        self._params: dict[str, str] = {}
        self._key = KeyMapper()
        self._changed_files = 0
        self._resume_step: Optional[int] = None

    @property
    def tracking_uri(self) -> str:
        """The resolved tracking URI (credentials included: print :attr:`shown_uri` instead)."""
        return self._tracking_uri

    @property
    def shown_uri(self) -> str:
        """The tracking URI with any password masked."""
        return redact_value(self._tracking_uri)

    @property
    def experiment_id(self) -> Optional[str]:
        """The id of the run's experiment; None before :meth:`start`."""
        return self._experiment_id

    # ------------------------------------------------------------------ lifecycle
    def _get_backend(self) -> Backend:
        if self._backend is None:
            load_limits()
            try:
                self._backend = Backend(self._tracking_uri, self.request_timeout_s, self.connect_timeout_s)
            except ImportError as e:  # a database URI's SQLAlchemy driver (psycopg, pymysql, ...)
                raise TrackerError(str(missing_driver_error("MLflow tracking URI", self.shown_uri, e)).split(": ", 1)[1]) from None
        return self._backend

    def check(self) -> None:
        """Fail fast, in one line naming the URI: an http(s) server that does not answer, a database URI whose
        driver is missing."""
        load_limits()
        backend = self._get_backend()  # opens a database store (and its driver) now, not at the first step
        if is_http(self._tracking_uri):
            backend.check()

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
                    raise TrackerError(f"MLflow run {run_id} cannot be resumed from {self.shown_uri}: {one_line(e)}") from None
                self._experiment_id = run.info.experiment_id
                self._params = dict(run.data.params)
                self._step_floor = last_steps(client, run)
                self._resume_step = max(self._step_floor.values(), default=None)
                client.update_run(run_id, status="RUNNING")
                self.resumed = True
            else:
                self._experiment_id = ensure_experiment(client, self.experiment, self._tracking_uri, self.shown_uri)
                tags = {**default_run_tags(), **{k: str(redact_value(v)) for k, v in self.tags.items()}}
                run = client.create_run(self._experiment_id, run_name=self.run_name, tags=tags)
                run_id = run.info.run_id
                self._params = {}
                self._step_floor = {}
                self.resumed = False
        except MlflowException as e:
            raise TrackerError(f"MLflow at {self.shown_uri}: {one_line(e)}") from None
        self.run_id = run_id
        self.last_step = None
        spill = SpillFile(self.spill_dir / f"{run_id}.jsonl", header=spill_header(self.shown_uri, run_id, self.experiment))
        policy = SendPolicy(self.flush_interval_s, self.retry_interval_s, self.max_buffered_points, self.spill_after_s)
        self._sender = Sender(backend, run_id, spill, policy)
        self.active = True
        _LIVE.add(self)
        if self.system_metrics:
            try:
                self._system = SystemMetrics(self._log_system, self.system_metrics_interval_s)
            except Exception as e:  # noqa: BLE001 - e.g. psutil missing
                log.warning("sptrack.track: system metrics are off (%s).", one_line(e))
        return run_id

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

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = prepare_params(params)
        changed = {}
        shortened_before = len(self._key.shortened)
        for key, value in flat.items():
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            name = self._key(key)
            if len(text) > LIMITS.param_value:
                artifact = f"params/{safe_name(key)[:150]}.txt"
                self.log_text(text, artifact)
                text = f"<{len(text)} characters, more than MLflow's {LIMITS.param_value}: full value in artifact {artifact}>"
            logged = self._params.get(name)
            if logged is not None:
                if logged != text:
                    changed[name] = {"logged": logged, "new": text}
                continue
            self._params[name] = text
            self._put({"t": "p", "k": name, "v": text})
        if len(self._key.shortened) > shortened_before:
            self.log_dict(self._key.shortened, "params/long_keys.json")
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
        """System samples, at the latest training step (the first new one of a resumed run before any)."""
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
