"""A real ``mlflow server`` on 127.0.0.1 for the tests: its backend store a SQLite file, or any database URL.

Started in its own process group (``mlflow server`` runs uvicorn as a child), so :meth:`kill`
ends both by the PID of the process we started. The job runner MLflow 3 starts next to the server
(five extra worker processes) is switched off: the tests do not use it and it doubles the start
time on two cores.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

START_TIMEOUT_S = 120  # a first start on a new database creates MLflow's schema (its alembic migrations)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class MlflowServer:
    """``backend_uri`` None: ``sqlite:///<root>/server.db``; else e.g. ``postgresql://user:pw@127.0.0.1:port/mlflow``."""

    def __init__(self, root: Path, port: Optional[int] = None, backend_uri: Optional[str] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend_uri = backend_uri or f"sqlite:///{self.root / 'server.db'}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        atexit.register(self.kill)

    def start(self) -> "MlflowServer":
        """Start (or restart, same port and database) and wait for ``/health``."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(self.root / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if healthy(self.url):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        output = (self.root / f"server-{self.starts - 1}.log").read_text(errors="replace")[-4000:]
        self.kill()
        raise RuntimeError(f"mlflow server did not become healthy at {self.url}:\n{output}")

    def log(self) -> str:
        """Everything the server printed, over all its starts."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))

    def kill(self) -> None:
        """SIGKILL the server and its children (its process group, whose id is the PID we started)."""
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also when the leader is gone but uvicorn is not
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Children are in the same group; wait until the port is free again.
        deadline = time.monotonic() + 10
        while healthy(self.url, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.1)

