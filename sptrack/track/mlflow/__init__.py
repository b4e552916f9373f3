"""The MLflow adapter of :mod:`sptrack.track`: :class:`MLflowTracker`, :func:`replay`, :func:`resolve_tracking_uri`.

One concept per module; each imports only modules listed below it, through public names:

* :mod:`~sptrack.track.mlflow.tracker` - ``MLflowTracker``, the :class:`~sptrack.track.base.Tracker` of MLflow;
* :mod:`~sptrack.track.mlflow.runs` - the experiment (``mlflow.experimentKind``), new-run tags, a resumed run's last steps;
* :mod:`~sptrack.track.mlflow.system` - ``SystemMetrics``, CPU/memory/disk/network/GPU samples to a callback;
* :mod:`~sptrack.track.mlflow.sender` - ``Sender`` (the thread that sends, probes and spills) and its ``SendPolicy``;
* :mod:`~sptrack.track.mlflow.spill` - ``SpillFile``, the outage file, and its replay (``replay``, ``replay_leftovers``);
* :mod:`~sptrack.track.mlflow.records` - queued records grouped into requests, sent, refused ones set aside;
* :mod:`~sptrack.track.mlflow.backend` - ``Backend``, one tracking URI's client, and its ``Transient``/``Rejected`` errors;
* :mod:`~sptrack.track.mlflow.uris` - tracking-URI resolution (SQLite default, the file store refused);
* :mod:`~sptrack.track.mlflow.limits` - MLflow's validation limits and valid keys.

Importing this package does not import MLflow (each module imports it where it is used).
"""

from sptrack.track.mlflow.spill import replay
from sptrack.track.mlflow.tracker import MLflowTracker
from sptrack.track.mlflow.uris import resolve_tracking_uri

__all__ = ["MLflowTracker", "replay", "resolve_tracking_uri"]
