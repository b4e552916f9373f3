"""Grouping of queued MLflow records into requests, the on-disk spill file of an outage, and its replay."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from sptrack.track.base import TrackerError, TrackerUnreachableError, log
from sptrack.track.mlflow_backend import (
    _MAX_BATCH_VALUE_CHARS,
    _SPILL_READ_OPS,
    LIMITS,
    _Backend,
    _load_limits,
    _Rejected,
    _Transient,
)


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
            if n_metrics >= LIMITS.metrics_per_batch or n_metrics + n_small >= 1000:
                break
            n_metrics += 1
        else:
            size = len(op["v"]) + len(op["k"])
            if n_small >= LIMITS.params_tags_per_batch or chars + size > _MAX_BATCH_VALUE_CHARS or n_metrics + n_small >= 1000:
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


def replay_leftovers(spill_dir: Path, tracking_uri: str, backend: _Backend) -> None:
    """Send the spill files an earlier process left in ``spill_dir`` for ``tracking_uri``.

    Files locked by a running job, or written for another tracking URI, are left alone.
    """
    if not spill_dir.is_dir():
        return
    for path in sorted(spill_dir.glob("*.jsonl")):
        if path.name.endswith(".rejected.jsonl"):
            continue
        spill = _SpillFile(path)
        try:
            header = spill.header()
        except (OSError, ValueError):
            continue
        if header.get("tracking_uri") != tracking_uri or not spill.exists():
            continue
        if not spill.lock():
            continue  # a running job owns it
        try:
            points = _replay_file(backend, spill, header["run_id"])
        except _Transient as e:
            raise TrackerUnreachableError(f"MLflow tracking server {tracking_uri} went away while replaying {path} ({e}).") from None
        finally:
            spill.unlock()
        log.warning("sptrack.track: replayed %d metric points for run %s from %s.", points, header["run_id"], path)


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
