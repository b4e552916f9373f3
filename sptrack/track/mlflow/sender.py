"""The sender thread: all communication with the backend once a run started, batched and outage-tolerant.

The training thread only :meth:`Sender.put` records. Every ``flush_interval_s`` (or at
``metrics_per_batch`` queued records) the thread replays the run's spill file, if any, then sends
the queue in :func:`~sptrack.track.mlflow.records.take_chunk` requests. When the backend stops
answering it keeps the records, probes every ``retry_interval_s`` and, once the outage lasts
``spill_after_s`` or more than ``max_buffered_points`` records wait, appends them to the spill file.
Each step of an outage is announced once on the ``sptrack.track`` logger.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Optional

from sptrack.track.base import log
from sptrack.track.mlflow.backend import Backend, Transient
from sptrack.track.mlflow.limits import LIMITS
from sptrack.track.mlflow.records import count_points, send_or_isolate, take_chunk
from sptrack.track.mlflow.spill import SpillFile, replay_file


@dataclass(frozen=True)
class SendPolicy:
    """When the sender sends, probes and spills (the tracker's options of the same names)."""

    flush_interval_s: float = 2.0
    retry_interval_s: float = 1.0
    max_buffered_points: int = 100_000
    spill_after_s: float = 60.0


class Sender:
    """The background thread that owns all communication with ``backend`` for run ``run_id``.

    ``spill`` is the run's spill file (locked for as long as the sender lives); ``sent_points``
    counts the metric points that reached the backend.
    """

    def __init__(self, backend: Backend, run_id: str, spill: SpillFile, policy: SendPolicy = SendPolicy()):
        self.backend = backend
        self.run_id = run_id
        self.policy = policy
        self.spill = spill
        self.spill.lock()  # other jobs starting in this folder leave our spill file alone
        self._ops: collections.deque[dict] = collections.deque()
        self._cv = threading.Condition()
        self._inflight: list[dict] = []
        self._busy = False
        self._exit = False
        self._flush_now = False
        self._down_since: Optional[float] = None
        self._spill_warned = False
        self._sent_at_down = 0
        self.sent_points = 0
        self._thread = threading.Thread(target=self._loop, name=f"sptrack-mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- producer side (training thread)
    def put(self, op: dict) -> None:
        """Queue one record (cheap: the thread sends it)."""
        with self._cv:
            self._ops.append(op)
            if len(self._ops) >= LIMITS.metrics_per_batch:
                self._cv.notify_all()

    def flush(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` s (forever: None) until nothing is queued, in flight or spilled; True then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._flush_now = True
            self._cv.notify_all()
            while True:
                if not self._ops and not self._inflight and not self._busy and not self.spill.exists():
                    return True
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._flush_now = True
                self._cv.notify_all()
                self._cv.wait(0.05 if left is None else min(0.05, left))

    def close(self, timeout: float) -> bool:
        """Flush for up to ``timeout`` s, stop the thread, and spill whatever could not be sent; True if all was sent."""
        done = self.flush(timeout)
        with self._cv:
            self._exit = True
            self._cv.notify_all()
        self._thread.join(timeout=max(1.0, self.backend.request_timeout_s + 1))
        with self._cv:
            left = list(self._inflight) + list(self._ops)
            self._ops.clear()
            self._inflight = []
        if left:
            self._spill(left)
        self.spill.unlock()
        return done and not left

    # -- thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._exit:
                    return
                if self._down_since is not None:
                    # Probe at the retry pace, whatever is logged or flushed meanwhile.
                    self._cv.wait_for(lambda: self._exit, timeout=self.policy.retry_interval_s)
                else:
                    self._cv.wait_for(
                        lambda: self._exit or self._flush_now or len(self._ops) >= LIMITS.metrics_per_batch,
                        timeout=self.policy.flush_interval_s,
                    )
                if self._exit:
                    return
                self._flush_now = False
                self._busy = True
            try:
                self._pump()
            except Exception:  # noqa: BLE001 - the sender must survive anything
                log.exception("sptrack.track: unexpected error in the MLflow sender thread")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _pump(self) -> None:
        if self._down_since is not None and not self.backend.healthy():
            self._maybe_spill()
            return
        try:
            if self.spill.exists():
                self.sent_points += replay_file(self.backend, self.spill, self.run_id)
            while True:
                with self._cv:
                    chunk = take_chunk(self._ops)
                    self._inflight = chunk
                if not chunk:
                    break
                try:
                    send_or_isolate(self.backend, self.run_id, chunk, self.spill.rejected_path)
                    self.sent_points += count_points(chunk)
                except Transient:
                    with self._cv:
                        self._ops.extendleft(reversed(chunk))
                        self._inflight = []
                    raise
                with self._cv:
                    self._inflight = []
        except Transient as e:
            self._went_down(e)
            self._maybe_spill()
            return
        if self._down_since is not None:
            log.warning(
                "sptrack.track: MLflow tracking server %s is reachable again after %.0f s; "
                "%d buffered metric points were sent.",
                self.backend.shown_uri, time.monotonic() - self._down_since, self.sent_points - self._sent_at_down,
            )
            self._down_since = None
            self._spill_warned = False

    def _went_down(self, error: Exception) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._sent_at_down = self.sent_points
        log.warning(
            "sptrack.track: MLflow tracking server %s is unreachable (%s). Training continues; "
            "points are buffered and sent when it is back.", self.backend.shown_uri, error,
        )

    def _maybe_spill(self) -> None:
        with self._cv:
            too_many = len(self._ops) > self.policy.max_buffered_points
            too_long = time.monotonic() - (self._down_since or time.monotonic()) >= self.policy.spill_after_s
            if not self._ops or not (too_many or too_long):
                return
            ops = list(self._ops)
            self._ops.clear()
        self._spill(ops)

    def _spill(self, ops: list[dict]) -> None:
        self.spill.append(ops)
        if not self._spill_warned:
            self._spill_warned = True
            log.warning(
                "sptrack.track: MLflow tracking server %s still unreachable; buffered records are written to %s "
                "and will be replayed when it is back (or with: python -m sptrack.track replay %s).",
                self.backend.shown_uri, self.spill.path, self.spill.path,
            )
