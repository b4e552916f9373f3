"""A throwaway PostgreSQL server on a free 127.0.0.1 port, in a temporary directory.

Debian's ``postgresql`` package (``apt-get install -y postgresql``, what ``.ci/run`` does) puts its
binaries under ``/usr/lib/postgresql/<major>/bin``; ``SPTRACK_PG_BINDIR`` names another folder.
``initdb`` refuses to run as root, so under root the cluster belongs to the ``postgres`` OS user
the package creates, and both ``initdb`` and ``postgres`` run as that user.

The cluster authenticates TCP clients by password (scram-sha-256): the superuser ``postgres`` sets
it up, the tests connect as the ordinary role ``sptrack``, owner of the databases they need, so
every URL carries a password (:meth:`PostgresServer.url`). Durability is switched off (fsync,
synchronous commit): nothing here has to survive a crash, and two shared cores are slow enough.

:func:`postgres_fixture` is the session-scoped pytest fixture (``postgres``). Where no server can
be found it skips with the reason, except under ``CI=true``, where that is a failure, so the tests
cannot silently drop out of CI.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

BINDIR_ENV = "SPTRACK_PG_BINDIR"
START_TIMEOUT_S = 60
ROLE = "sptrack"
DATABASES = ("optuna", "mlflow")


class Unavailable(RuntimeError):
    """No usable PostgreSQL installation (the tests skip, or fail under CI=true)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres`` (the newest major version), or :class:`Unavailable`."""
    def usable(d: Path) -> bool:
        return all(os.access(d / tool, os.X_OK) for tool in ("initdb", "postgres"))

    if os.environ.get(BINDIR_ENV):
        d = Path(os.environ[BINDIR_ENV])
        if usable(d):
            return d
        raise Unavailable(f"${BINDIR_ENV}={d} holds no executable initdb and postgres")
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if usable(Path(p))]
    if found:
        return max(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0])
    on_path = shutil.which("initdb")
    if on_path and usable(Path(os.path.realpath(on_path)).parent):
        return Path(os.path.realpath(on_path)).parent
    raise Unavailable("no initdb/postgres under /usr/lib/postgresql/*/bin or on PATH (install it: apt-get install -y postgresql)")


class PostgresServer:
    """``start()`` (initdb, postgres, roles and databases), ``url(db)``, ``stop()`` (by PID)."""

    def __init__(self, bindir: Path, databases: tuple[str, ...] = DATABASES):
        self.bindir = Path(bindir)
        self.databases = databases
        self.password = "pw-" + secrets.token_hex(12)  # distinctive: tests assert it never appears in output
        self._admin_password = "admin-" + secrets.token_hex(12)
        self.port: Optional[int] = None
        self.root: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self._as_user: dict = {}
        atexit.register(self.stop)

    # ------------------------------------------------------------------ URLs
    def url(self, database: str = "optuna", password: Optional[str] = None) -> str:
        """``postgresql://sptrack:<password>@127.0.0.1:<port>/<database>`` (SQLAlchemy picks psycopg 3)."""
        return f"postgresql://{ROLE}:{self.password if password is None else password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", admin: bool = False, timeout: float = 5):
        import psycopg

        user, password = ("postgres", self._admin_password) if admin else (ROLE, self.password)
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, password=password, dbname=database,
                               connect_timeout=max(1, int(timeout)), autocommit=True)

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ lifecycle
    def _owner(self) -> None:
        """Run the server as ``postgres`` when we are root (initdb refuses root)."""
        if os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root but there is no 'postgres' OS user to own the cluster (initdb refuses root)") from None
        self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._uid_gid = (entry.pw_uid, entry.pw_gid)

    def _chown(self, path: Path) -> None:
        if self._as_user:
            os.chown(path, *self._uid_gid)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(self.root), TZ="UTC")
        return env

    def start(self) -> "PostgresServer":
        self._owner()
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, out of reach of the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="sptrack-pg-"))
        self._chown(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._admin_password + "\n")
        self._chown(pwfile)
        data = self.root / "data"
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
             "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            cwd=self.root, env=self._env(), capture_output=True, text=True, timeout=120, **self._as_user,
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout[-3000:]}\n{init.stderr[-3000:]}")
        for attempt in range(3):  # a free port can be taken between free_port() and the bind: try another
            self.port = free_port()
            if self._launch(data):
                break
            bind_error = "could not bind" in self.log_tail() or "already in use" in self.log_tail()
            self._kill()
            if not bind_error or attempt == 2:
                raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{self.port}:\n{self.log_tail()}")
        with self.connect(admin=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            for db in self.databases:
                conn.execute(f"CREATE DATABASE {db} OWNER {ROLE}")
        return self

    def _launch(self, data: Path) -> bool:
        import psycopg

        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=100"],
                cwd=self.root, env=self._env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **self._as_user,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with self.connect(admin=True, timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def _kill(self) -> None:
        """SIGKILL the postmaster (the PID we started) and its children (each in a session of its own)."""
        if self.proc is None:
            return
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for p in [psutil.Process(self.proc.pid), *children] if self.proc.poll() is None else children:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), SIGKILL after 15 s; then delete the cluster."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._kill()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def unavailable(reason: str):
    """Skip with ``reason``; under ``CI=true`` fail instead (the tests must not vanish from CI)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run (CI=true, so this is a failure, not a skip): {reason}", pytrace=False)
    print(f"\nPostgreSQL tests skipped: {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture():
    """One PostgreSQL server for the session, with databases ``optuna`` and ``mlflow`` owned by ``sptrack``."""
    try:
        import psycopg  # noqa: F401 - the driver SQLAlchemy needs for postgresql:// (pip install 'sptrack[postgres]')
    except ImportError:
        unavailable("the psycopg driver is not installed (pip install -e '.[postgres]')")
    try:
        server = PostgresServer(find_bindir())
    except Unavailable as err:
        unavailable(str(err))
    try:
        server.start()
    except Unavailable as err:
        server.stop()
        unavailable(str(err))
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()
