"""Queued MLflow records, grouped into requests and sent; the ones MLflow refuses are set aside.

A record is a small dict (it is also a line of a spill file):

* ``{"t": "m", "k": key, "v": value, "ts": ms, "s": step}`` a metric point;
* ``{"t": "p", "k": key, "v": text}`` a param, ``{"t": "tag", "k": key, "v": text}`` a tag;
* ``{"t": "text", "f": artifact_file, "c": text}``, ``{"t": "file", "p": path, "a": artifact_path}`` artifacts;
* ``{"t": "status", "status": FINISHED|FAILED|KILLED|RUNNING, "end": ms}`` the run's status.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable

from sptrack.track.base import log
from sptrack.track.mlflow.backend import Backend, Rejected
from sptrack.track.mlflow.limits import LIMITS

BATCHED = ("m", "p", "tag")


def take_chunk(ops: "collections.deque[dict]") -> list[dict]:
    """Pop the next request's worth of records: a log_batch group, or one artifact/status record."""
    if not ops:
        return []
    if ops[0]["t"] not in BATCHED:
        return [ops.popleft()]
    chunk: list[dict] = []
    n_metrics = n_small = chars = 0
    while ops and ops[0]["t"] in BATCHED:
        op = ops[0]
        if op["t"] == "m":
            if n_metrics >= LIMITS.metrics_per_batch or n_metrics + n_small >= LIMITS.entities_per_batch:
                break
            n_metrics += 1
        else:
            size = len(op["v"]) + len(op["k"])
            if (n_small >= LIMITS.params_tags_per_batch or chars + size > LIMITS.batch_value_chars
                    or n_metrics + n_small >= LIMITS.entities_per_batch):
                break
            if op["t"] == "p" and any(o["t"] == "p" and o["k"] == op["k"] for o in chunk):
                break  # one value per key per request
            n_small += 1
            chars += size
        chunk.append(ops.popleft())
    return chunk


def send_chunk(backend: Backend, run_id: str, chunk: list[dict]) -> None:
    """One request for a chunk of :func:`take_chunk`."""
    kind = chunk[0]["t"]
    if kind in BATCHED:
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
        raise Rejected(f"unknown record type {kind!r}")


def send_or_isolate(backend: Backend, run_id: str, chunk: list[dict], rejected_path: Path) -> None:
    """Send ``chunk``; when the backend refuses it, resend halves so only the bad records are set aside.

    :class:`~sptrack.track.mlflow.backend.Transient` passes through (nothing is lost: the caller retries).
    """
    try:
        send_chunk(backend, run_id, chunk)
    except Rejected as e:
        if len(chunk) == 1:
            write_rejected(rejected_path, chunk, e)
            return
        middle = len(chunk) // 2
        send_or_isolate(backend, run_id, chunk[:middle], rejected_path)
        send_or_isolate(backend, run_id, chunk[middle:], rejected_path)


def count_points(ops: Iterable[dict]) -> int:
    """How many metric points ``ops`` holds."""
    return sum(1 for op in ops if op["t"] == "m")


def write_rejected(path: Path, chunk: list[dict], error: Exception) -> None:
    """Keep records MLflow refused in ``path`` (one JSON line each, with the error), and say so."""
    log.error("sptrack.track: MLflow refused %d record(s) (%s); they are kept in %s.", len(chunk), error, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for op in chunk:
            f.write(json.dumps({**op, "error": str(error)}) + "\n")
