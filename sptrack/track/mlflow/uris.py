"""Which tracking URI a run uses: the argument, ``$MLFLOW_TRACKING_URI``, or SQLite in the working directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from sptrack.track.base import TrackerError
from sptrack.track.mlflow.limits import safe_name
from sptrack.track.params import redact_value

DEFAULT_EXPERIMENT = "sptrack"
DEFAULT_DB_NAME = "mlflow.db"


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


def is_http(uri: str) -> bool:
    """Whether ``uri`` is an MLflow server (``http(s)://``) rather than a database."""
    return urlparse(uri).scheme in ("http", "https")


def artifact_location(tracking_uri: str, experiment: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: next to a SQLite database (``<db dir>/mlartifacts/<name>``),
    not in a ``./mlruns`` folder that looks like the old file store; None (the server's choice) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_dir = os.path.dirname(tracking_uri[len("sqlite:///"):])
    return Path(db_dir, "mlartifacts", safe_name(experiment)).as_uri()
