"""The experiment a run goes to, the tags a new run gets, and where a resumed run stopped.

Everything here uses ``MlflowClient``'s public API. Experiments the adapter creates, and existing
ones that have no kind yet, get the experiment tag ``mlflow.experimentKind=custom_model_development``:
MLflow 3's UI shows those as model training (runs, metrics, charts) rather than as GenAI
development (traces, evaluations).
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any, Optional

from sptrack.track.base import TrackerError, log
from sptrack.track.mlflow.backend import one_line
from sptrack.track.mlflow.uris import artifact_location

#: The experiment tag MLflow 3's UI reads to choose between model-training and GenAI views.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: Its value for custom model development/training (``genai_development`` is the other kind).
MODEL_TRAINING = "custom_model_development"


def ensure_experiment(client: Any, name: str, tracking_uri: str, shown_uri: Optional[str] = None) -> str:
    """The id of experiment ``name`` at ``tracking_uri``, created when missing, tagged as model training.

    A deleted experiment of that name raises :class:`~sptrack.track.base.TrackerError`; an
    experiment another process creates at the same moment is used as is. An existing
    experiment's kind, when it has one, is left alone.
    """
    from mlflow.exceptions import MlflowException

    shown_uri = shown_uri or tracking_uri
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location(tracking_uri, name), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created concurrently
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackerError(f"MLflow experiment {name!r} at {shown_uri} is deleted; restore it or choose another name.")
    if not (experiment.tags or {}).get(EXPERIMENT_KIND_TAG):
        try:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        except MlflowException as e:  # e.g. read-only permission on a shared experiment: log into it anyway
            log.warning("sptrack.track: could not tag MLflow experiment %r as model training (%s).", name, one_line(e))
    return experiment.experiment_id


def default_run_tags() -> dict[str, str]:
    """Source, user and git commit tags, as ``mlflow run``/autologging would set them."""
    from sptrack import __version__
    from sptrack.track.environment import git_info

    tags = {
        "mlflow.source.name": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
        "mlflow.source.type": "LOCAL",
        "sptrack.version": __version__,
    }
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # noqa: BLE001
        pass
    git = git_info()
    if git:
        tags["mlflow.source.git.commit"] = git["commit"]
    return tags


def last_steps(client: Any, run: Any) -> dict[str, int]:
    """The largest step of each metric ``run`` holds, so a resumed run can drop points at or below it.

    MLflow keeps each key's latest point, the one of the largest step (then timestamp), with the
    run itself; ``RunData.to_proto()`` carries their steps (``run.data.metrics`` only the values),
    so no metric history is downloaded. A key without its point there falls back to
    ``get_metric_history``.
    """
    steps: dict[str, int] = {}
    for metric in run.data.to_proto().metrics:
        steps[metric.key] = max(steps.get(metric.key, metric.step), int(metric.step))
    for key in run.data.metrics:
        if key not in steps:
            history = client.get_metric_history(run.info.run_id, key)
            if history:
                steps[key] = max(int(m.step) for m in history)
    return steps
