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
import collections
import getpass
import hashlib
import json
import os
import re
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from sptrack.track.base import FAILED, FINISHED, STATUSES, Tracker, TrackerError, TrackerUnreachableError, log
from sptrack.track.params import prepare_params, redact_value

DEFAULT_EXPERIMENT = "sptrack"
DEFAULT_DB_NAME = "mlflow.db"
SPILL_DIR = os.path.join(".sptrack", "mlflow-spill")
_SPILL_VERSION = 1

# MLflow 3.x limits (mlflow.utils.validation); read at import of the adapter when MLflow is present.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_BATCH_VALUE_CHARS = 500_000  # well under MAX_BATCH_LOG_REQUEST_SIZE (1e6 bytes)
_SPILL_READ_OPS = 5000
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
    "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND", "ENDPOINT_NOT_FOUND",
}


def _load_limits() -> None:
    global MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH, MAX_KEY_LENGTH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
    try:
        from mlflow.utils import validation as v
    except ImportError:  # pragma: no cover - MLflow is a dependency
        return
    MAX_PARAM_VAL_LENGTH = getattr(v, "MAX_PARAM_VAL_LENGTH", MAX_PARAM_VAL_LENGTH)
    MAX_TAG_VAL_LENGTH = getattr(v, "MAX_TAG_VAL_LENGTH", MAX_TAG_VAL_LENGTH)
    MAX_KEY_LENGTH = getattr(v, "MAX_ENTITY_KEY_LENGTH", MAX_KEY_LENGTH)
    MAX_METRICS_PER_BATCH = getattr(v, "MAX_METRICS_PER_BATCH", MAX_METRICS_PER_BATCH)
    MAX_PARAMS_TAGS_PER_BATCH = getattr(v, "MAX_PARAMS_TAGS_PER_BATCH", MAX_PARAMS_TAGS_PER_BATCH)


# ---------------------------------------------------------------------------------------- URIs
def resolve_tracking_uri(tracking_uri: Optional[str] = None, work_dir: Optional[str] = None) -> str:
    """The tracking URI to use: the argument, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<work_dir or cwd>/mlflow.db``.

    MLflow's file store (``./mlruns``, ``file:``) is refused: MLflow 3.x keeps it in maintenance
    mode. A bare path ending in ``.db``/``.sqlite`` is taken as a SQLite file.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return "sqlite:///" + os.path.abspath(os.path.join(work_dir or os.getcwd(), DEFAULT_DB_NAME))
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):] if uri.startswith("file:") else uri
        if path.endswith((".db", ".sqlite", ".sqlite3")):
            return "sqlite:///" + os.path.abspath(path)
        raise TrackerError(
            f"MLflow tracking URI {redact_value(uri)!r} is a file store, which MLflow 3 no longer supports for tracking. "
            f"Use sqlite:///{os.path.abspath(os.path.join(path, DEFAULT_DB_NAME))} (or a path ending in .db), "
            "or an http(s):// server."
        )
    return uri


def _is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _one_line(error: BaseException) -> str:
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    for marker in ("Read timed out", "timed out", "Connection refused", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def _safe_name(key: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", key).strip("._") or "value"


# ---------------------------------------------------------------------------------------- backend
class _Transient(Exception):
    """The backend did not answer (or answered 5xx/429): keep the records and retry later."""


class _Rejected(Exception):
    """The backend refused the records (4xx): retrying cannot help."""


class _Backend:
    """Talks to one tracking URI: ``log_batch``/status over REST (no built-in retries) or a store."""

    def __init__(self, uri: str, request_timeout_s: float = 15.0, connect_timeout_s: float = 5.0):
        from mlflow import MlflowClient

        self.uri = uri
        self.shown_uri = redact_value(uri)
        self.http = _is_http(uri)
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.client = MlflowClient(uri)
        self._creds = None
        if self.http:
            from mlflow.utils.credentials import get_default_host_creds

            self._creds = get_default_host_creds(uri)

    # -- REST
    def _request(self, endpoint: str, method: str, body: Optional[dict], timeout: float):
        from mlflow.utils.rest_utils import http_request

        kwargs = {"json": body} if method != "GET" else ({"params": body} if body else {})
        try:
            response = http_request(
                self._creds, endpoint, method, max_retries=0, backoff_factor=0, timeout=timeout,
                raise_on_status=False, **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - connection errors come as MlflowException
            raise _Transient(_one_line(e)) from e
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _Rejected(f"HTTP {response.status_code}: {response.text[:300]}")
        return response

    def healthy(self) -> bool:
        """Whether the backend answers now (any HTTP answer below 500 counts)."""
        if not self.http:
            return True
        try:
            self._request("/health", "GET", None, self.connect_timeout_s)
        except _Transient:
            return False
        except _Rejected:
            return True
        return True

    def check(self) -> None:
        """Raise TrackerUnreachableError (one line, naming the URI) when the server does not answer."""
        if not self.http:
            return
        try:
            self._request("/health", "GET", None, self.connect_timeout_s)
        except _Transient as e:
            raise TrackerUnreachableError(
                f"MLflow tracking server {self.shown_uri} is unreachable ({e}); start it or pass another tracking URI."
            ) from None
        except _Rejected:
            pass

    # -- operations
    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metric_objs = [Metric(op["k"], op["v"], op["ts"], op["s"]) for op in metrics]
        param_objs = [Param(op["k"], op["v"]) for op in params]
        tag_objs = [RunTag(op["k"], op["v"]) for op in tags]
        if self.http:
            from mlflow.protos.service_pb2 import LogBatch
            from mlflow.utils.proto_json_utils import message_to_json

            body = message_to_json(
                LogBatch(
                    run_id=run_id,
                    metrics=[m.to_proto() for m in metric_objs],
                    params=[p.to_proto() for p in param_objs],
                    tags=[t.to_proto() for t in tag_objs],
                )
            )
            self._request("/api/2.0/mlflow/runs/log-batch", "POST", json.loads(body), self.request_timeout_s)
            return
        self._store_call(lambda: self.client.log_batch(run_id, metrics=metric_objs, params=param_objs, tags=tag_objs, synchronous=True))

    def set_status(self, run_id: str, status: str, end_time: Optional[int]) -> None:
        if self.http:
            body = {"run_id": run_id, "status": status}
            if end_time is not None:
                body["end_time"] = int(end_time)
            self._request("/api/2.0/mlflow/runs/update", "POST", body, self.request_timeout_s)
            return
        if status == "RUNNING":
            self._store_call(lambda: self.client.update_run(run_id, status="RUNNING"))
        else:
            self._store_call(lambda: self.client.set_terminated(run_id, status=status, end_time=end_time))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._artifact_call(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_file(self, run_id: str, path: str, artifact_path: Optional[str]) -> None:
        if not os.path.exists(path):
            raise _Rejected(f"artifact file {path} no longer exists")
        self._artifact_call(lambda: self.client.log_artifact(run_id, path, artifact_path))

    def _artifact_call(self, fn) -> None:
        if self.http and not self.healthy():
            raise _Transient("server unreachable")
        self._store_call(fn)

    @staticmethod
    def _store_call(fn) -> None:
        from mlflow.exceptions import MlflowException

        try:
            fn()
        except MlflowException as e:
            if getattr(e, "error_code", None) in _PERMANENT_CODES:
                raise _Rejected(_one_line(e)) from e
            raise _Transient(_one_line(e)) from e
        except (OSError, TimeoutError) as e:
            raise _Transient(_one_line(e)) from e
        except Exception as e:  # noqa: BLE001 - e.g. sqlalchemy OperationalError (database is locked)
            if type(e).__module__.startswith("sqlalchemy") and "Operational" in type(e).__name__:
                raise _Transient(_one_line(e)) from e
            raise _Rejected(_one_line(e)) from e


# ---------------------------------------------------------------------------------------- records
def _take_chunk(ops: "collections.deque[dict]") -> list[dict]:
    """Pop the next request's worth of records: a log_batch group, or one artifact/status record."""
    if not ops:
        return []
    if ops[0]["t"] not in ("m", "p", "tag"):
        return [ops.popleft()]
    chunk: list[dict] = []
    n_metrics = n_small = chars = 0
    while ops and ops[0]["t"] in ("m", "p", "tag"):
        op = ops[0]
        if op["t"] == "m":
            if n_metrics >= MAX_METRICS_PER_BATCH or n_metrics + n_small >= 1000:
                break
            n_metrics += 1
        else:
            size = len(op["v"]) + len(op["k"])
            if n_small >= MAX_PARAMS_TAGS_PER_BATCH or chars + size > _MAX_BATCH_VALUE_CHARS or n_metrics + n_small >= 1000:
                break
            if op["t"] == "p" and any(o["t"] == "p" and o["k"] == op["k"] for o in chunk):
                break  # one value per key per request
            n_small += 1
            chars += size
        chunk.append(ops.popleft())
    return chunk


def _send_chunk(backend: _Backend, run_id: str, chunk: list[dict]) -> None:
    kind = chunk[0]["t"]
    if kind in ("m", "p", "tag"):
        backend.log_batch(
            run_id,
            [op for op in chunk if op["t"] == "m"],
            [op for op in chunk if op["t"] == "p"],
            [op for op in chunk if op["t"] == "tag"],
        )
    elif kind == "text":
        backend.log_text(run_id, chunk[0]["c"], chunk[0]["f"])
    elif kind == "file":
        backend.log_file(run_id, chunk[0]["p"], chunk[0].get("a"))
    elif kind == "status":
        backend.set_status(run_id, chunk[0]["status"], chunk[0].get("end"))
    else:
        raise _Rejected(f"unknown record type {kind!r}")


def _send_or_isolate(backend: _Backend, run_id: str, chunk: list[dict], rejected_path: Path) -> None:
    """Send ``chunk``; when the backend refuses it, resend halves so only the bad records are set aside."""
    try:
        _send_chunk(backend, run_id, chunk)
    except _Rejected as e:
        if len(chunk) == 1:
            _reject(rejected_path, chunk, e)
            return
        middle = len(chunk) // 2
        _send_or_isolate(backend, run_id, chunk[:middle], rejected_path)
        _send_or_isolate(backend, run_id, chunk[middle:], rejected_path)


def _count_points(ops: Iterable[dict]) -> int:
    return sum(1 for op in ops if op["t"] == "m")


class _SpillFile:
    """``<run_id>.jsonl``: a header line then one record per line; ``.sent`` holds the replayed byte offset."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset_path = self.path.with_name(self.path.name + ".sent")

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > self.sent_offset()

    def sent_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, ops: list[dict], header: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps(header) + "\n")
            for op in ops:
                f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def header(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            return json.loads(f.readline())

    def read(self, limit: int = _SPILL_READ_OPS) -> list[tuple[dict, int]]:
        """Up to ``limit`` unsent records with the byte offset just after each."""
        out = []
        offset = self.sent_offset()
        with open(self.path, "rb") as f:
            if offset == 0:
                f.readline()  # header
                offset = f.tell()
            f.seek(offset)
            while len(out) < limit:
                line = f.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # a partial last line (crash while writing): not a record
                offset += len(line)
                out.append((json.loads(line), offset))
        return out

    def lock(self) -> bool:
        """Take the file's lock (held while a run may append to it); False when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process protection
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            return False
        return True

    def unlock(self) -> None:
        lock_file = getattr(self, "_lock_file", None)
        if lock_file is not None:
            lock_file.close()  # releases the flock
            self._lock_file = None
            if not self.path.exists():
                try:
                    os.unlink(lock_file.name)
                except OSError:
                    pass

    def mark_sent(self, offset: int) -> None:
        self.offset_path.write_text(str(offset))

    def remove(self) -> None:
        for p in (self.path, self.offset_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _replay_file(backend: _Backend, spill: _SpillFile, run_id: str) -> int:
    """Send a spill file's unsent records; raises _Transient (progress kept) or returns the points sent."""
    points = 0
    while True:
        batch = spill.read()
        if not batch:
            break
        offsets = {id(op): off for op, off in batch}
        pending = collections.deque(op for op, _ in batch)
        while pending:
            chunk = _take_chunk(pending)
            _send_or_isolate(backend, run_id, chunk, spill.path.with_suffix(".rejected.jsonl"))
            spill.mark_sent(offsets[id(chunk[-1])])
            points += _count_points(chunk)
    spill.remove()
    return points


def _reject(path: Path, chunk: list[dict], error: Exception) -> None:
    log.error(
        "sptrack.track: MLflow refused %d record(s) (%s); they are kept in %s.", len(chunk), error, path
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for op in chunk:
            f.write(json.dumps({**op, "error": str(error)}) + "\n")


def replay(path: str, tracking_uri: Optional[str] = None) -> int:
    """Send the unsent records of a spill file to its run; returns the number of metric points sent.

    ``tracking_uri`` defaults to the one recorded in the file (credentials are never recorded:
    pass the URI again, or set ``MLFLOW_TRACKING_URI``, when it holds them).
    """
    _load_limits()
    spill = _SpillFile(Path(path))
    header = spill.header()
    uri = tracking_uri or header.get("tracking_uri")
    if "***" in (uri or ""):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    backend = _Backend(uri)
    backend.check()
    if not spill.lock():
        raise TrackerError(f"{path} is in use by a running job; it sends the file itself when the server is back.")
    try:
        return _replay_file(backend, spill, header["run_id"])
    except _Transient as e:
        raise TrackerUnreachableError(f"MLflow tracking server {backend.shown_uri} went away during the replay ({e}); run it again.") from None
    finally:
        spill.unlock()


# ---------------------------------------------------------------------------------------- sender
class _Sender:
    """The background thread that owns all communication with the backend after the run started."""

    def __init__(self, tracker: "MLflowTracker", backend: _Backend, run_id: str):
        self.tracker = tracker
        self.backend = backend
        self.run_id = run_id
        self.spill = _SpillFile(tracker.spill_dir / f"{run_id}.jsonl")
        self.spill.lock()  # other jobs starting in this folder leave our spill file alone
        self._ops: collections.deque[dict] = collections.deque()
        self._cv = threading.Condition()
        self._inflight: list[dict] = []
        self._busy = False
        self._exit = False
        self._down_since: Optional[float] = None
        self._spill_warned = False
        self._sent_at_down = 0
        self.sent_points = 0
        self._thread = threading.Thread(target=self._loop, name=f"sptrack-mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- producer side (training thread)
    def put(self, op: dict) -> None:
        with self._cv:
            self._ops.append(op)
            if len(self._ops) >= MAX_METRICS_PER_BATCH:
                self._cv.notify_all()

    def flush(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._flush_now = True
            self._cv.notify_all()
            while True:
                if not self._ops and not self._inflight and not self._busy and not self.spill.exists():
                    return True
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._flush_now = True
                self._cv.notify_all()
                self._cv.wait(0.05 if left is None else min(0.05, left))

    def close(self, timeout: float) -> bool:
        """Flush for up to ``timeout`` s, stop the thread, and spill whatever could not be sent."""
        done = self.flush(timeout)
        with self._cv:
            self._exit = True
            self._cv.notify_all()
        self._thread.join(timeout=max(1.0, self.backend.request_timeout_s + 1))
        with self._cv:
            left = list(self._inflight) + list(self._ops)
            self._ops.clear()
            self._inflight = []
        if left:
            self._spill(left)
        self.spill.unlock()
        return done and not left

    # -- thread
    _flush_now = False

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._exit:
                    return
                if self._down_since is not None:
                    # Probe at the retry pace, whatever is logged or flushed meanwhile.
                    self._cv.wait_for(lambda: self._exit, timeout=self.tracker.retry_interval_s)
                else:
                    self._cv.wait_for(
                        lambda: self._exit or self._flush_now or len(self._ops) >= MAX_METRICS_PER_BATCH,
                        timeout=self.tracker.flush_interval_s,
                    )
                if self._exit:
                    return
                self._flush_now = False
                self._busy = True
            try:
                self._pump()
            except Exception:  # noqa: BLE001 - the sender must survive anything
                log.exception("sptrack.track: unexpected error in the MLflow sender thread")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _pump(self) -> None:
        if self._down_since is not None and not self.backend.healthy():
            self._maybe_spill()
            return
        try:
            if self.spill.exists():
                self.sent_points += _replay_file(self.backend, self.spill, self.run_id)
            while True:
                with self._cv:
                    chunk = _take_chunk(self._ops)
                    self._inflight = chunk
                if not chunk:
                    break
                try:
                    _send_or_isolate(self.backend, self.run_id, chunk, self.spill.path.with_suffix(".rejected.jsonl"))
                    self.sent_points += _count_points(chunk)
                except _Transient:
                    with self._cv:
                        self._ops.extendleft(reversed(chunk))
                        self._inflight = []
                    raise
                with self._cv:
                    self._inflight = []
        except _Transient as e:
            self._went_down(e)
            self._maybe_spill()
            return
        if self._down_since is not None:
            log.warning(
                "sptrack.track: MLflow tracking server %s is reachable again after %.0f s; "
                "%d buffered metric points were sent.",
                self.backend.shown_uri, time.monotonic() - self._down_since, self.sent_points - self._sent_at_down,
            )
            self._down_since = None
            self._spill_warned = False

    def _went_down(self, error: Exception) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._sent_at_down = self.sent_points
        log.warning(
            "sptrack.track: MLflow tracking server %s is unreachable (%s). Training continues; "
            "points are buffered and sent when it is back.", self.backend.shown_uri, error,
        )

    def _maybe_spill(self) -> None:
        with self._cv:
            too_many = len(self._ops) > self.tracker.max_buffered_points
            too_long = time.monotonic() - (self._down_since or time.monotonic()) >= self.tracker.spill_after_s
            if not self._ops or not (too_many or too_long):
                return
            ops = list(self._ops)
            self._ops.clear()
        self._spill(ops)

    def _spill(self, ops: list[dict]) -> None:
        self.spill.append(ops, self.tracker._spill_header(self.run_id))
        if not self._spill_warned:
            self._spill_warned = True
            log.warning(
                "sptrack.track: MLflow tracking server %s still unreachable; buffered records are written to %s "
                "and will be replayed when it is back (or with: python -m sptrack.track replay %s).",
                self.backend.shown_uri, self.spill.path, self.spill.path,
            )


# ---------------------------------------------------------------------------------------- system metrics
class _SystemMetrics:
    """Samples CPU, memory, disk, network (and NVIDIA/AMD GPU when present) like MLflow's own monitor,
    but feeds the tracker's buffered queue so the samples survive outages too."""

    def __init__(self, tracker: "MLflowTracker", interval_s: float):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.tracker = tracker
        self.interval_s = interval_s
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        for gpu in ("gpu_monitor.GPUMonitor", "rocm_monitor.ROCMMonitor"):
            module, cls = gpu.split(".")
            try:
                mod = __import__(f"mlflow.system_metrics.metrics.{module}", fromlist=[cls])
                self.monitors.append(getattr(mod, cls)())
                break
            except Exception:  # noqa: BLE001 - no GPU / no pynvml
                continue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sptrack-system-metrics", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, float]:
        metrics = {}
        for monitor in self.monitors:
            try:
                monitor.collect_metrics()
                metrics.update(monitor.aggregate_metrics())
            except Exception:  # noqa: BLE001 - a failing probe must not stop the others
                pass
            finally:
                monitor.clear_metrics()
        return {f"system/{k}": float(v) for k, v in metrics.items()}

    def _loop(self) -> None:
        self._sample()  # psutil's first cpu_percent() is meaningless
        while not self._stop.wait(self.interval_s):
            self.tracker._log_system(self._sample())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
        self._replay_leftovers(backend)
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

    def _replay_leftovers(self, backend: _Backend) -> None:
        """Send spill files an earlier process left for this tracking URI."""
        if not self.spill_dir.is_dir():
            return
        for path in sorted(self.spill_dir.glob("*.jsonl")):
            if path.name.endswith(".rejected.jsonl"):
                continue
            spill = _SpillFile(path)
            try:
                header = spill.header()
            except (OSError, ValueError):
                continue
            if header.get("tracking_uri") != self.shown_uri or not spill.exists():
                continue
            if not spill.lock():
                continue  # a running job owns it
            try:
                points = _replay_file(backend, spill, header["run_id"])
            except _Transient as e:
                raise TrackerUnreachableError(
                    f"MLflow tracking server {self.shown_uri} went away while replaying {path} ({e})."
                ) from None
            finally:
                spill.unlock()
            log.warning("sptrack.track: replayed %d metric points for run %s from %s.", points, header["run_id"], path)

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
        if len(clean) > MAX_KEY_LENGTH:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            clean = clean[: MAX_KEY_LENGTH - 11] + "-" + digest
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
            if len(text) > MAX_PARAM_VAL_LENGTH:
                artifact = f"params/{_safe_name(key)[:150]}.txt"
                self.log_text(text, artifact)
                text = f"<{len(text)} characters, more than MLflow's {MAX_PARAM_VAL_LENGTH}: full value in artifact {artifact}>"
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
            if len(text) > MAX_TAG_VAL_LENGTH:
                text = text[: MAX_TAG_VAL_LENGTH - 20] + "... (truncated)"
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
