"""The thin client that talks to one tracking URI: REST without retries of its own, or a store.

Every failure comes out as one of two exceptions the sender acts on: :class:`Transient` (no
answer, 5xx, 429, a locked database: keep the records and retry) or :class:`Rejected` (the backend
refused them: retrying cannot help). Requests to an ``http(s)`` server use MLflow's own HTTP helper
and credentials with ``max_retries=0``, so a dead server never blocks for minutes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Optional

from sptrack.track.base import TrackerUnreachableError
from sptrack.track.mlflow.uris import is_http
from sptrack.track.params import redact_value

#: MLflow error codes that mean "this request will never succeed".
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
    "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND", "ENDPOINT_NOT_FOUND",
})


class Transient(Exception):
    """The backend did not answer (or answered 5xx/429): keep the records and retry later."""


class Rejected(Exception):
    """The backend refused the records (4xx): retrying cannot help."""


def one_line(error: BaseException) -> str:
    """A short, single-line description of a connection or MLflow error."""
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    for marker in ("Read timed out", "timed out", "Connection refused", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


class Backend:
    """Talks to one tracking URI: ``log_batch``/status over REST (no built-in retries) or a store.

    ``client`` is the ``MlflowClient`` for everything else (runs, experiments, artifacts).
    """

    def __init__(self, uri: str, request_timeout_s: float = 15.0, connect_timeout_s: float = 5.0):
        from mlflow import MlflowClient

        self.uri = uri
        self.shown_uri = redact_value(uri)
        self.http = is_http(uri)
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
            raise Transient(one_line(e)) from e
        if response.status_code >= 500 or response.status_code == 429:
            raise Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(f"HTTP {response.status_code}: {response.text[:300]}")
        return response

    def healthy(self) -> bool:
        """Whether the backend answers now (any HTTP answer below 500 counts)."""
        if not self.http:
            return True
        try:
            self._request("/health", "GET", None, self.connect_timeout_s)
        except Transient:
            return False
        except Rejected:
            return True
        return True

    def check(self) -> None:
        """Raise TrackerUnreachableError (one line, naming the URI) when the server does not answer."""
        if not self.http:
            return
        try:
            self._request("/health", "GET", None, self.connect_timeout_s)
        except Transient as e:
            raise TrackerUnreachableError(
                f"MLflow tracking server {self.shown_uri} is unreachable ({e}); start it or pass another tracking URI."
            ) from None
        except Rejected:
            pass

    # -- operations
    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        """Send queued ``{"k", "v", "ts", "s"}`` metric and ``{"k", "v"}`` param/tag records in one request."""
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
        self.store_call(lambda: self.client.log_batch(run_id, metrics=metric_objs, params=param_objs, tags=tag_objs, synchronous=True))

    def set_status(self, run_id: str, status: str, end_time: Optional[int]) -> None:
        if self.http:
            body = {"run_id": run_id, "status": status}
            if end_time is not None:
                body["end_time"] = int(end_time)
            self._request("/api/2.0/mlflow/runs/update", "POST", body, self.request_timeout_s)
            return
        if status == "RUNNING":
            self.store_call(lambda: self.client.update_run(run_id, status="RUNNING"))
        else:
            self.store_call(lambda: self.client.set_terminated(run_id, status=status, end_time=end_time))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._artifact_call(lambda: self.client.log_text(run_id, text, artifact_file))

    def log_file(self, run_id: str, path: str, artifact_path: Optional[str]) -> None:
        if not os.path.exists(path):
            raise Rejected(f"artifact file {path} no longer exists")
        self._artifact_call(lambda: self.client.log_artifact(run_id, path, artifact_path))

    def _artifact_call(self, fn: Callable[[], object]) -> None:
        if self.http and not self.healthy():
            raise Transient("server unreachable")
        self.store_call(fn)

    @staticmethod
    def store_call(fn: Callable[[], object]) -> None:
        """Run one ``MlflowClient`` call, its failure turned into :class:`Transient` or :class:`Rejected`."""
        from mlflow.exceptions import MlflowException

        try:
            fn()
        except MlflowException as e:
            if getattr(e, "error_code", None) in PERMANENT_CODES:
                raise Rejected(one_line(e)) from e
            raise Transient(one_line(e)) from e
        except (OSError, TimeoutError) as e:
            raise Transient(one_line(e)) from e
        except Exception as e:  # noqa: BLE001 - e.g. sqlalchemy OperationalError (database is locked)
            if type(e).__module__.startswith("sqlalchemy") and "Operational" in type(e).__name__:
                raise Transient(one_line(e)) from e
            raise Rejected(one_line(e)) from e
