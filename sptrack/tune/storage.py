"""Where a study lives: an embedded SQLite file (default), an Optuna journal file, or any RDB URL.

``--storage`` accepts

* nothing: ``sqlite:///<trainer.output_dir>/<recipe>/optuna.db``;
* ``sqlite:///PATH`` or a path ending in ``.db``/``.sqlite``/``.sqlite3``: SQLite (fine for a few
  local workers; a 30 s lock timeout rides out concurrent writes);
* ``journal:PATH`` / ``journal:///PATH`` or a path ending in ``.log``/``.journal``/``.jsonl``:
  Optuna's journal file (the safer choice on network file systems; Optuna 5 has no heartbeat for
  it, so a killed worker's trial is not retried automatically);
* any other SQLAlchemy URL (``postgresql://...``, ``mysql+pymysql://...``): that database.

RDB storages get Optuna's heartbeat: a running trial whose worker stops beating for
``2 x heartbeat`` seconds is marked FAIL by the next worker that asks for a trial, and a copy of
it (same parameters) is queued by ``RetryHeartbeatStaleTrialCallback``.

Workers admit new trials under an exclusive lock, so that "count, then ask" cannot overshoot the
requested number of trials: a file lock next to a SQLite/journal file, a named lock of the server for
PostgreSQL and MySQL (see :func:`admission_lock`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlparse

from sptrack.errors import ConfigError, missing_driver_error, suggestion
from sptrack.track.params import redact_value

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql", "cockroachdb")


@dataclass(frozen=True)
class StorageSpec:
    """A resolved ``--storage``: ``kind`` is ``"rdb"`` or ``"journal"``; ``path`` is the local file, if any."""

    kind: str
    url: str
    path: Optional[str] = None

    @property
    def shown_url(self) -> str:
        """The URL with any credentials masked: the form every message and printed command uses."""
        return redact_value(self.url)

    @property
    def dashboard_command(self) -> str:
        """The command that opens optuna-dashboard on this storage (a password in the URL masked)."""
        return f"optuna-dashboard {self.path if self.kind == 'journal' else self.shown_url}"

    @property
    def heartbeat(self) -> bool:
        """Whether Optuna can track live trials (and retry those of dead workers) on this storage."""
        return self.kind == "rdb"


def resolve_storage(storage: Optional[str], default_dir: str) -> StorageSpec:
    """Parse ``--storage`` (None: a SQLite file in ``default_dir``)."""
    if storage is None:
        path = os.path.abspath(os.path.join(default_dir, "optuna.db"))
        return StorageSpec("rdb", "sqlite:///" + path, path)
    text = storage.strip()
    shown = redact_value(text)
    if not text:
        raise ConfigError("--storage", "is empty.", "Give e.g. sqlite:///sweeps.db or journal:sweeps.log.")
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        path = path[2:] if path.startswith("///") else path  # journal:///abs/path -> /abs/path
        if not path:
            raise ConfigError("--storage", f"{shown!r} names no journal file.", "Write journal:PATH.")
        return StorageSpec("journal", "journal:" + os.path.abspath(path), os.path.abspath(path))
    scheme = urlparse(text).scheme.split("+", 1)[0].lower()
    if "://" not in text:
        if text.endswith(_SQLITE_SUFFIXES):
            path = os.path.abspath(text)
            return StorageSpec("rdb", "sqlite:///" + path, path)
        if text.endswith(_JOURNAL_SUFFIXES):
            path = os.path.abspath(text)
            return StorageSpec("journal", "journal:" + path, path)
        raise ConfigError("--storage", f"{shown!r} is neither a URL nor a .db / .log file.",
                          "Use sqlite:///PATH.db, journal:PATH.log or a database URL such as postgresql://user@host/db.")
    if scheme not in _RDB_SCHEMES:
        raise ConfigError("--storage", f"unknown storage scheme {scheme!r}.",
                          (suggestion(scheme, [*_RDB_SCHEMES, "journal"]) + " Use sqlite:///, journal:, or an SQLAlchemy database URL.").strip())
    if scheme == "sqlite":
        raw = text.split(":///", 1)[1] if ":///" in text else ""
        if not raw or raw == ":memory:":
            raise ConfigError("--storage", f"{shown!r} is not a SQLite file.", "Workers share a study through a file: sqlite:///PATH.db.")
        path = os.path.abspath(raw)
        return StorageSpec("rdb", "sqlite:///" + path, path)
    return StorageSpec("rdb", text)


def open_storage(spec: StorageSpec, heartbeat_s: int, max_retry: int):
    """The Optuna storage object for ``spec`` (creates a SQLite file's folder)."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    if spec.path:
        os.makedirs(os.path.dirname(spec.path) or ".", exist_ok=True)
    if spec.kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec.path))
    engine_kwargs = {"connect_args": {"timeout": 30}} if spec.url.startswith("sqlite") else None
    # Under the file lock: two commands creating a new SQLite store at once would race in Optuna's schema
    # creation (alembic_version UNIQUE constraint).
    with admission_lock(spec) if spec.path else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat and its retry callback are "experimental"
        try:
            return optuna.storages.RDBStorage(
                spec.url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
        except ImportError as err:  # SQLAlchemy's driver for the scheme (psycopg for postgresql://, ...)
            raise missing_driver_error("--storage", spec.shown_url, err, "use sqlite:/// or journal:") from None
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's connection errors: one line, the password masked
            if type(err).__module__.split(".")[0] != "sqlalchemy":
                raise
            first = redact_value(str(err).strip().splitlines()[0]) if str(err).strip() else type(err).__name__
            raise ConfigError("--storage", f"cannot open {spec.shown_url}: {first}.", "Check the server, the database name and the credentials.") from None


@contextlib.contextmanager
def admission_lock(spec: StorageSpec, study_name: str = "") -> Iterator[None]:
    """Exclusive across every worker of a study, on any machine, while it counts trials and asks for one.

    File storages: an ``fcntl`` lock on a file beside the store (machines sharing the file system).
    PostgreSQL / MySQL: a lock of the database server itself, keyed by the study name
    (``pg_advisory_lock`` / ``GET_LOCK``), released at the end or when the connection drops (a
    killed worker cannot leave it held). Other databases have no lock: two workers that both see
    one trial left at the same instant may both start one (one extra trial; none lost or repeated).
    """
    if spec.path:
        import fcntl

        with open(spec.path + ".sptrack-lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    dialect = urlparse(spec.url).scheme.split("+", 1)[0].lower()
    statements = _SERVER_LOCKS.get("postgresql" if dialect == "postgres" else dialect)
    if statements is None:
        yield
        return
    import sqlalchemy

    lock, unlock = statements
    key = f"sptrack-admission:{study_name}"
    with _lock_engine(spec.url).connect() as connection:
        connection.execute(sqlalchemy.text(lock), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), {"key": key})
            connection.commit()


#: dialect -> (take, release) statements of a server-side named lock (session level).
_SERVER_LOCKS = {
    "postgresql": ("SELECT pg_advisory_lock(hashtextextended(:key, 0))", "SELECT pg_advisory_unlock(hashtextextended(:key, 0))"),
    "mysql": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
    "mariadb": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
}
_ENGINES: dict = {}


def _lock_engine(url: str):
    """One small SQLAlchemy engine per database URL for the admission lock (apart from Optuna's own)."""
    if url not in _ENGINES:
        import sqlalchemy

        _ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    return _ENGINES[url]
