"""The spill file of an outage and its replay.

``<work_dir>/.sptrack/mlflow-spill/<run_id>.jsonl``: a header line (format version, tracking URI
without credentials, run id, experiment, creation time), then one record per line (see
:mod:`~sptrack.track.mlflow.records`); ``<run_id>.jsonl.sent`` holds the byte offset already
replayed, so a replay cut short resumes where it stopped. While a run may append to its file it
holds ``<run_id>.jsonl.lock`` (``flock``), and other jobs leave the file alone.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Optional

from sptrack.track.base import TrackerError, TrackerUnreachableError, log
from sptrack.track.mlflow.backend import Backend, Transient
from sptrack.track.mlflow.limits import load_limits
from sptrack.track.mlflow.records import count_points, send_or_isolate, take_chunk

SPILL_DIR = os.path.join(".sptrack", "mlflow-spill")
SPILL_VERSION = 1
#: Records read from a spill file at a time during a replay.
READ_OPS = 5000


def spill_header(tracking_uri: str, run_id: str, experiment: Optional[str]) -> dict:
    """The first line of a spill file (``tracking_uri`` as shown: without credentials)."""
    return {"sptrack_spill": SPILL_VERSION, "tracking_uri": tracking_uri, "run_id": run_id, "experiment": experiment}


class SpillFile:
    """One spill file; ``header`` (from :func:`spill_header`) is written when :meth:`append` creates it."""

    def __init__(self, path: Path, header: Optional[dict] = None):
        self.path = Path(path)
        self.offset_path = self.path.with_name(self.path.name + ".sent")
        self.rejected_path = self.path.with_suffix(".rejected.jsonl")
        self.header = header
        self._lock_file = None

    def exists(self) -> bool:
        """Whether the file holds records not replayed yet."""
        return self.path.exists() and self.path.stat().st_size > self.sent_offset()

    def sent_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, ops: list[dict]) -> None:
        """Append records durably (fsync), writing the header first when the file is new."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                if self.header is None:
                    raise ValueError(f"{self.path}: a new spill file needs a header")
                f.write(json.dumps({**self.header, "created": time.time()}) + "\n")
            for op in ops:
                f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_header(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            return json.loads(f.readline())

    def read(self, limit: int = READ_OPS) -> list[tuple[dict, int]]:
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
        lock_file = self._lock_file
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


def replay_file(backend: Backend, spill: SpillFile, run_id: str) -> int:
    """Send a spill file's unsent records, then remove it; returns the points sent.

    Raises :class:`~sptrack.track.mlflow.backend.Transient` when the backend goes away (progress is kept).
    """
    points = 0
    while True:
        batch = spill.read()
        if not batch:
            break
        offsets = {id(op): off for op, off in batch}
        pending = collections.deque(op for op, _ in batch)
        while pending:
            chunk = take_chunk(pending)
            send_or_isolate(backend, run_id, chunk, spill.rejected_path)
            spill.mark_sent(offsets[id(chunk[-1])])
            points += count_points(chunk)
    spill.remove()
    return points


def replay_leftovers(spill_dir: Path, tracking_uri: str, backend: Backend) -> None:
    """Send the spill files an earlier process left in ``spill_dir`` for ``tracking_uri`` (as shown).

    Files locked by a running job, or written for another tracking URI, are left alone.
    """
    if not spill_dir.is_dir():
        return
    for path in sorted(spill_dir.glob("*.jsonl")):
        if path.name.endswith(".rejected.jsonl"):
            continue
        spill = SpillFile(path)
        try:
            header = spill.read_header()
        except (OSError, ValueError):
            continue
        if header.get("tracking_uri") != tracking_uri or not spill.exists():
            continue
        if not spill.lock():
            continue  # a running job owns it
        try:
            points = replay_file(backend, spill, header["run_id"])
        except Transient as e:
            raise TrackerUnreachableError(f"MLflow tracking server {tracking_uri} went away while replaying {path} ({e}).") from None
        finally:
            spill.unlock()
        log.warning("sptrack.track: replayed %d metric points for run %s from %s.", points, header["run_id"], path)


def replay(path: str, tracking_uri: Optional[str] = None) -> int:
    """Send the unsent records of a spill file to its run; returns the number of metric points sent.

    ``tracking_uri`` defaults to the one recorded in the file (credentials are never recorded:
    pass the URI again, or set ``MLFLOW_TRACKING_URI``, when it holds them).
    """
    load_limits()
    spill = SpillFile(Path(path))
    header = spill.read_header()
    uri = tracking_uri or header.get("tracking_uri")
    if "***" in (uri or ""):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    backend = Backend(uri)
    backend.check()
    if not spill.lock():
        raise TrackerError(f"{path} is in use by a running job; it sends the file itself when the server is back.")
    try:
        return replay_file(backend, spill, header["run_id"])
    except Transient as e:
        raise TrackerUnreachableError(f"MLflow tracking server {backend.shown_uri} went away during the replay ({e}); run it again.") from None
    finally:
        spill.unlock()
