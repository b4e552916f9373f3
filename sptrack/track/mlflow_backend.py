"""MLflow limits, tracking-URI resolution and the thin client that talks to a store or server."""

from __future__ import annotations

import json
import os
import re
from typing import Optional
from urllib.parse import urlparse

from sptrack.track.base import TrackerError, TrackerUnreachableError
from sptrack.track.params import redact_value

DEFAULT_EXPERIMENT = "sptrack"
DEFAULT_DB_NAME = "mlflow.db"
SPILL_DIR = os.path.join(".sptrack", "mlflow-spill")
_SPILL_VERSION = 1

class _Limits:
    """MLflow 3.x validation limits; :func:`_load_limits` refreshes them from mlflow.utils.validation.

    One shared object (not module constants) so that every module of the adapter sees the refresh.
    """

    param_value = 6000
    tag_value = 8000
    key = 250
    metrics_per_batch = 1000
    params_tags_per_batch = 100


LIMITS = _Limits()
_MAX_BATCH_VALUE_CHARS = 500_000  # well under MAX_BATCH_LOG_REQUEST_SIZE (1e6 bytes)
_SPILL_READ_OPS = 5000
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
    "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND", "ENDPOINT_NOT_FOUND",
}


def _load_limits() -> None:
    try:
        from mlflow.utils import validation as v
    except ImportError:  # pragma: no cover - MLflow is a dependency
        return
    LIMITS.param_value = getattr(v, "MAX_PARAM_VAL_LENGTH", LIMITS.param_value)
    LIMITS.tag_value = getattr(v, "MAX_TAG_VAL_LENGTH", LIMITS.tag_value)
    LIMITS.key = getattr(v, "MAX_ENTITY_KEY_LENGTH", LIMITS.key)
    LIMITS.metrics_per_batch = getattr(v, "MAX_METRICS_PER_BATCH", LIMITS.metrics_per_batch)
    LIMITS.params_tags_per_batch = getattr(v, "MAX_PARAMS_TAGS_PER_BATCH", LIMITS.params_tags_per_batch)



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
