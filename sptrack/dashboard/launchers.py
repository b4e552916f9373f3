"""Launch ``mlflow ui`` on an MLflow store and ``optuna-dashboard`` on a study storage, bound to 127.0.0.1.

Both print the URL first (``<name> at http://127.0.0.1:PORT``), then serve in the foreground
until interrupted. The launcher process *becomes* the server (``exec`` for MLflow, in-process for
optuna-dashboard), so whoever started it stops it by its PID. A store that does not exist is an
error naming the option: both tools would otherwise create an empty store and show nothing.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

from sptrack.errors import ConfigError, close_matches, suggestion
from sptrack.track.params import redact_value

HOST = "127.0.0.1"  # local only: the UIs have no authentication


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _missing_file(option: str, path: str) -> ConfigError:
    """The error for a store file that does not exist, suggesting a file of that folder with a close name."""
    folder, name = Path(path).parent, Path(path).name
    siblings = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    hits = close_matches(name, siblings, n=1)
    hint = f" Did you mean '{folder / hits[0]}'?" if hits else (f" {folder} does not exist." if not folder.is_dir() else " Check the path.")
    return ConfigError(option, f"{path} does not exist (the server would start on a new, empty store).", hint)


def mlflow_ui_command(backend_store_uri: str, port: int, artifacts_destination: Optional[str] = None) -> list[str]:
    """The ``mlflow ui`` command line for ``backend_store_uri`` (a ``sqlite:///`` file is checked first)."""
    if backend_store_uri.startswith("sqlite:"):
        path = backend_store_uri.split(":///", 1)[1] if ":///" in backend_store_uri else ""
        if not path or not os.path.isfile(path):
            raise _missing_file("--backend-store-uri", path or backend_store_uri)
    elif "://" not in backend_store_uri and not os.path.isdir(backend_store_uri):
        raise _missing_file("--backend-store-uri", backend_store_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri,
           "--host", HOST, "--port", str(port), "--workers", "1"]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    return cmd


def run_mlflow_ui(backend_store_uri: str, port: int = 5000, artifacts_destination: Optional[str] = None) -> None:
    """Print the URL, then replace this process with ``mlflow ui`` (never returns)."""
    port = port or free_port()
    cmd = mlflow_ui_command(backend_store_uri, port, artifacts_destination)
    env = dict(os.environ)
    # MLflow 3 starts a job runner (five worker processes) next to the UI; a local viewer does not use it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"mlflow ui at http://{HOST}:{port} (store: {redact_value(backend_store_uri)})", flush=True)
    os.execve(sys.executable, cmd, env)


def open_study_storage(storage: str):
    """A read/write Optuna storage for ``--storage`` (same forms as ``--sweep --storage``)."""
    import optuna

    from sptrack.tune.storage import resolve_storage

    spec = resolve_storage(storage, ".")
    if spec.path and not os.path.isfile(spec.path):
        raise _missing_file("--storage", spec.path)
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec.path))
    return optuna.storages.RDBStorage(spec.url)


def run_optuna_dashboard(storage: str, port: int = 8080, study: Optional[str] = None) -> None:
    """Print the URL and the studies, then serve ``optuna-dashboard`` until interrupted."""
    import optuna
    from optuna_dashboard import run_server

    store = open_study_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study is not None and study not in names:
        raise ConfigError("--study", f"no study {study!r} in {redact_value(storage)}.", suggestion(study, names) or f" Studies there: {', '.join(names) or 'none'}.")
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    target = f"{url}/dashboard/studies/{store.get_study_id_from_name(study)}" if study is not None else f"{url}/dashboard"
    print(f"optuna-dashboard at {target} (studies: {', '.join(names) or 'none'})", flush=True)
    run_server(store, host=HOST, port=port)
