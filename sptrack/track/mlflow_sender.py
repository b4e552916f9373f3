"""The MLflow sender thread (batched, outage-tolerant) and the system-metrics sampler that feeds it."""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Optional

from sptrack.track.base import log
from sptrack.track.mlflow_backend import LIMITS, _Backend, _Transient
from sptrack.track.mlflow_spill import (
    _count_points,
    _replay_file,
    _send_or_isolate,
    _SpillFile,
    _take_chunk,
)

if TYPE_CHECKING:  # the tracker owns the sender; imported for annotations only
    from sptrack.track.mlflow_tracker import MLflowTracker


# ---------------------------------------------------------------------------------------- sender
class _Sender:
    """The background thread that owns all communication with the backend after the run started."""

    def __init__(self, tracker: "MLflowTracker", backend: _Backend, run_id: str):
        self.tracker = tracker
        self.backend = backend
        self.run_id = run_id
        self.spill = _SpillFile(tracker.spill_dir / f"{run_id}.jsonl")
        self.spill.lock()  # other jobs starting in this folder leave our spill file alone
        self._ops: collections.deque[dict] = collections.deque()
        self._cv = threading.Condition()
        self._inflight: list[dict] = []
        self._busy = False
        self._exit = False
        self._down_since: Optional[float] = None
        self._spill_warned = False
        self._sent_at_down = 0
        self.sent_points = 0
        self._thread = threading.Thread(target=self._loop, name=f"sptrack-mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- producer side (training thread)
    def put(self, op: dict) -> None:
        with self._cv:
            self._ops.append(op)
            if len(self._ops) >= LIMITS.metrics_per_batch:
                self._cv.notify_all()

    def flush(self, timeout: Optional[float]) -> bool:
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
        """Flush for up to ``timeout`` s, stop the thread, and spill whatever could not be sent."""
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
    _flush_now = False

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._exit:
                    return
                if self._down_since is not None:
                    # Probe at the retry pace, whatever is logged or flushed meanwhile.
                    self._cv.wait_for(lambda: self._exit, timeout=self.tracker.retry_interval_s)
                else:
                    self._cv.wait_for(
                        lambda: self._exit or self._flush_now or len(self._ops) >= LIMITS.metrics_per_batch,
                        timeout=self.tracker.flush_interval_s,
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
                self.sent_points += _replay_file(self.backend, self.spill, self.run_id)
            while True:
                with self._cv:
                    chunk = _take_chunk(self._ops)
                    self._inflight = chunk
                if not chunk:
                    break
                try:
                    _send_or_isolate(self.backend, self.run_id, chunk, self.spill.path.with_suffix(".rejected.jsonl"))
                    self.sent_points += _count_points(chunk)
                except _Transient:
                    with self._cv:
                        self._ops.extendleft(reversed(chunk))
                        self._inflight = []
                    raise
                with self._cv:
                    self._inflight = []
        except _Transient as e:
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
            too_many = len(self._ops) > self.tracker.max_buffered_points
            too_long = time.monotonic() - (self._down_since or time.monotonic()) >= self.tracker.spill_after_s
            if not self._ops or not (too_many or too_long):
                return
            ops = list(self._ops)
            self._ops.clear()
        self._spill(ops)

    def _spill(self, ops: list[dict]) -> None:
        self.spill.append(ops, self.tracker._spill_header(self.run_id))
        if not self._spill_warned:
            self._spill_warned = True
            log.warning(
                "sptrack.track: MLflow tracking server %s still unreachable; buffered records are written to %s "
                "and will be replayed when it is back (or with: python -m sptrack.track replay %s).",
                self.backend.shown_uri, self.spill.path, self.spill.path,
            )


# ---------------------------------------------------------------------------------------- system metrics
class _SystemMetrics:
    """Samples CPU, memory, disk, network (and NVIDIA/AMD GPU when present) like MLflow's own monitor,
    but feeds the tracker's buffered queue so the samples survive outages too."""

    def __init__(self, tracker: "MLflowTracker", interval_s: float):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.tracker = tracker
        self.interval_s = interval_s
        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        for gpu in ("gpu_monitor.GPUMonitor", "rocm_monitor.ROCMMonitor"):
            module, cls = gpu.split(".")
            try:
                mod = __import__(f"mlflow.system_metrics.metrics.{module}", fromlist=[cls])
                self.monitors.append(getattr(mod, cls)())
                break
            except Exception:  # noqa: BLE001 - no GPU / no pynvml
                continue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sptrack-system-metrics", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, float]:
        metrics = {}
        for monitor in self.monitors:
            try:
                monitor.collect_metrics()
                metrics.update(monitor.aggregate_metrics())
            except Exception:  # noqa: BLE001 - a failing probe must not stop the others
                pass
            finally:
                monitor.clear_metrics()
        return {f"system/{k}": float(v) for k, v in metrics.items()}

    def _loop(self) -> None:
        self._sample()  # psutil's first cpu_percent() is meaningless
        while not self._stop.wait(self.interval_s):
            self.tracker._log_system(self._sample())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
