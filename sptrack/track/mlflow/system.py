"""System metrics: CPU, memory, disk, network (and NVIDIA/AMD GPU when present), sampled on a thread.

The samples are MLflow's own monitors' (``mlflow.system_metrics``), but they go to a callback,
the tracker's queue, instead of MLflow's separate logging thread, so they survive outages too.
"""

from __future__ import annotations

import threading
from typing import Callable


class SystemMetrics:
    """Calls ``sink({"system/<name>": value, ...})`` every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(self, sink: Callable[[dict[str, float]], None], interval_s: float):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.sink = sink
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

    def sample(self) -> dict[str, float]:
        """One reading of every monitor (a failing probe leaves its metrics out)."""
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
        self.sample()  # psutil's first cpu_percent() is meaningless
        while not self._stop.wait(self.interval_s):
            self.sink(self.sample())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
