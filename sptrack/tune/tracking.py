"""Trackers in a sweep: a parent run per study (MLflow), one run per trial, state and params as tags.

* MLflow: the study is a parent run (``run_name="study <name>"``, tag ``sptrack.role=study``),
  created once and remembered in the study's user attribute ``mlflow_parent_run_id``; each trial is
  a child run (tag ``mlflow.parentRunId``). At the end of a sweep the parent gets the best value,
  trial number and run id.
* W&B: each trial is a run with ``group=<study name>``; its tags are stored as ``tags/<key>`` in the
  run config (W&B tags are labels), plus the labels ``study:<name>`` and ``trial:<number>``.

Every trial run carries ``sptrack.study``, ``sptrack.trial_number``, ``sptrack.trial_state``
(RUNNING, then COMPLETE / PRUNED / FAIL) and ``sptrack.param.<key>`` for each sampled parameter.
Only rank 0 builds a started tracker; the run id is stored in the trial's user attribute
``run_id`` (and ``tracker``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import lightning.pytorch as pl

TAG_STUDY = "sptrack.study"
TAG_TRIAL = "sptrack.trial_number"
TAG_STATE = "sptrack.trial_state"
TAG_PARAM = "sptrack.param."
PARENT_ATTR = "mlflow_parent_run_id"


def trial_tags(study_name: str, number: int, params: Mapping[str, Any], state: str = "RUNNING") -> dict[str, str]:
    """The tags every trial run gets."""
    tags = {TAG_STUDY: study_name, TAG_TRIAL: str(number), TAG_STATE: state}
    tags.update({TAG_PARAM + key: repr(value) if isinstance(value, str) else str(value) for key, value in params.items()})
    return tags


def trial_tracker(cfg: Any, recipe_name: str, study_name: str, number: int, params: Mapping[str, Any], parent_run_id: Optional[str]):
    """The tracker of one trial (``cfg.tracker.kind``), named ``<study>-trial-<number>``."""
    from sptrack.track import build_tracker

    t = cfg.tracker
    kind = (t.kind or "none").lower()
    name = f"{study_name}-trial-{number}"
    tags = trial_tags(study_name, number, params)
    if kind == "mlflow":
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        return build_tracker(kind, uri=t.uri, experiment=t.experiment or recipe_name, run_name=name, tags=tags, system_metrics=False)
    if kind == "wandb":
        return build_tracker(kind, uri=t.uri, experiment=t.experiment or recipe_name, run_name=name, group=study_name,
                             tags=[f"study:{study_name}", f"trial:{number}"])
    return build_tracker("none")


class TrialTags(pl.Callback):
    """Sets the trial's tags on its run (rank 0): at the start, and its final state before the run closes.

    ``outcome`` is the :class:`~sptrack.tune.pruning.TrialMonitor` of the same Trainer (listed
    before this callback, so its ``on_train_end`` has read the objective).
    """

    def __init__(self, tracker: Any, tags: Mapping[str, str], outcome: Any):
        self.tracker = tracker
        self.tags = dict(tags)
        self.outcome = outcome
        self.state: Optional[str] = None

    def _set(self, trainer: pl.Trainer, tags: Mapping[str, str]) -> None:
        if trainer.is_global_zero and getattr(self.tracker, "active", False):
            self.tracker.set_tags(tags)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The study, trial number, RUNNING state and sampled parameters."""
        self._set(trainer, self.tags)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """PRUNED, COMPLETE (objective logged and finite) or FAIL, and the objective as a metric."""
        import math

        value = self.outcome.value
        if self.outcome.pruned_at is not None:
            self.state = "PRUNED"
        elif value is not None and math.isfinite(value):
            self.state = "COMPLETE"
        else:
            self.state = "FAIL"
        if trainer.is_global_zero and getattr(self.tracker, "active", False) and value is not None and math.isfinite(value):
            self.tracker.log_metrics({"optuna/objective": value}, step=trainer.global_step)
        self._set(trainer, {TAG_STATE: self.state})

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A trial that raised (including a non-finite loss) is FAIL."""
        self.state = "FAIL"
        self._set(trainer, {TAG_STATE: "FAIL", "sptrack.error": f"{type(exception).__name__}: {exception}"[:500]})


# ---------------------------------------------------------------------------------------- parent run
def _parent_tracker(cfg: Any, recipe_name: str, study_name: str, run_id: Optional[str] = None):
    from sptrack.track import build_tracker

    t = cfg.tracker
    return build_tracker("mlflow", uri=t.uri, experiment=t.experiment or recipe_name, run_name=f"study {study_name}",
                         tags={TAG_STUDY: study_name, "sptrack.role": "study"}, run_id=run_id, system_metrics=False)


def ensure_parent_run(study: Any, cfg: Any, recipe_name: str) -> Optional[str]:
    """The MLflow parent run of ``study`` (created on first use); None for other trackers.

    Callers hold the study's admission lock (:func:`sptrack.tune.storage.admission_lock`), so commands
    starting at the same instant on a new study make one parent; on a database without a server-side
    lock (not SQLite/journal files, PostgreSQL or MySQL) two may still be made, and the last one written wins.
    """
    if (cfg.tracker.kind or "none").lower() != "mlflow":
        return None
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        return existing
    tracker = _parent_tracker(cfg, recipe_name, study.study_name)
    run_id = tracker.start()
    tracker.log_params({"sweep/study": study.study_name, "sweep/direction": study.direction.name.lower()})
    tracker.finish("FINISHED")
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def summarize_parent_run(study: Any, cfg: Any, recipe_name: str, counts: Mapping[str, int]) -> None:
    """Put the best trial (value, number, run id) and the trial counts on the study's parent run."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return
    tracker = _parent_tracker(cfg, recipe_name, study.study_name, run_id=run_id)
    tracker.start()
    try:
        metrics = {f"sweep/trials_{state.lower()}": n for state, n in counts.items()}
        tags: dict[str, str] = {}
        best = _best_trial(study)
        if best is not None:
            metrics["sweep/best_value"] = best.value
            tags = {"sptrack.best_trial": str(best.number), "sptrack.best_run_id": str(best.user_attrs.get("run_id"))}
        tracker.log_metrics(metrics, step=sum(counts.values()))
        tracker.set_tags(tags)
    finally:
        tracker.finish("FINISHED")


def _best_trial(study: Any):
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None
