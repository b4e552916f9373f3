"""Where a finished run was recorded, and the exact command that opens it (printed after the report)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from sptrack.track.params import redact_value

#: Where the printed ``mlflow ui`` command serves.
UI_HOST, UI_PORT = "127.0.0.1", 5000


#: MLflow 3's UI opens every experiment in its GenAI view (traces, latency, token usage) unless the
#: page asks for the model-training one; its experiment-kind tag is not enough while its workflow
#: selector is on (3.17). The run's page in the model-training view shows the lr charts.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """The MLflow UI's page of one run (``tab``: e.g. ``model-metrics``), in the model-training view."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/{tab}?{MODEL_TRAINING_VIEW}" if tab else f"{page}?{MODEL_TRAINING_VIEW}"


def how_to_open(tracker: Any) -> list[str]:
    """Lines naming the tracker run and how to look at it; none for ``--tracker none``."""
    run_id = getattr(tracker, "run_id", None)
    if not run_id:
        return []
    if tracker.kind == "mlflow":
        uri = tracker.tracking_uri
        shown = redact_value(uri)
        lines = [f"tracked: MLflow run {run_id} (experiment {tracker.experiment!r}) in {shown}"]
        if uri.startswith(("http://", "https://")):
            return lines + [f"open it: {mlflow_run_url(shown, tracker.experiment_id, run_id, 'model-metrics')}"]
        command = f"mlflow ui --backend-store-uri {shlex.quote(shown)} --host {UI_HOST} --port {UI_PORT}"
        base = f"http://{UI_HOST}:{UI_PORT}"
        return lines + [f"open it: {command}", f"   then: {mlflow_run_url(base, tracker.experiment_id, run_id, 'model-metrics')}"]
    if tracker.kind == "wandb":
        if getattr(tracker, "mode_used", None) == "offline":
            found = sorted(Path(tracker.dir, "wandb").glob(f"offline-run-*-{run_id}"))
            target = str(found[-1]) if found else str(Path(tracker.dir, "wandb"))
            return [f"tracked: W&B offline run {run_id} in {target}", f"upload it: wandb sync {shlex.quote(target)}"]
        url = getattr(getattr(tracker, "run", None), "url", None)
        return [f"tracked: W&B run {run_id}" + (f" at {url}" if url else "")]
    return [f"tracked: {tracker.kind} run {run_id}"]
