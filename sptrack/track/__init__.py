"""Experiment tracking for sptrack: MLflow and Weights & Biases adapters behind one small interface.

Public API
----------
``build_tracker(kind, **options) -> Tracker``
    ``kind`` is ``"mlflow"``, ``"wandb"`` or ``"none"`` (also ``None``/``""``). ``None``-valued
    options are dropped; ``uri`` is the MLflow tracking URI / the W&B server URL; the others go to
    :class:`MLflowTracker` (``tracking_uri``, ``experiment``, ``run_name``, ``tags``, ``run_id``,
    ``system_metrics``, ``work_dir``, ...) or :class:`WandbTracker` (``project``/``experiment``,
    ``entity``, ``run_name``, ``tags``, ``run_id``, ``dir``, ``mode``, ``settings``, ...).
``tracker_callbacks(tracker, *, config=None, recipe_path=None, artifacts=()) -> list[Callback]``
    What to append to ``Trainer(callbacks=...)``: ``[TrackerLogger(...)]``, or ``[]`` for
    :class:`NoTracker`. ``config`` is the resolved recipe (a nested mapping or dataclass: logged
    flattened and redacted as params, and as ``config/resolved.json``; the Module's ``hparams``
    when None); ``recipe_path`` the recipe file (logged redacted as ``recipe/<name>``);
    ``artifacts`` extra files.

Typical CLI wiring (``python -m sptrack.run --tracker mlflow|wandb|none``)::

    t = cfg.tracker
    tracker = build_tracker(t.kind, uri=t.uri, experiment=t.experiment, run_name=t.run_name)
    trainer = sptrack.Trainer(..., callbacks=[*callbacks, *tracker_callbacks(tracker, config=cfg, recipe_path=path)])
    trainer.fit(module, datamodule, ckpt_path=resume)   # a checkpoint's run id is resumed

From Python, the same object: ``Trainer(callbacks=[TrackerLogger(MLflowTracker(), config=cfg)])``.
Pass ``TrackerLogger`` in ``callbacks`` only (not ``logger=``); it adds itself to
``trainer.loggers`` when the run starts.

What every run gets (both trackers): flattened dotted hyper-parameters (secrets masked;
MLflow values over 6000 characters go to ``params/<key>.txt`` and the param says so),
per-optimizer params in the config's own ``optim.<name>.<field>`` scheme (the config's fields, plus
the summary's ``class``, ``num_params``, ``matched_modules``, ... where the config has none), the
``optim/summary`` table (MLflow: ``.json`` + ``.csv`` artifacts; W&B: a ``wandb.Table``), the lr
over time as ``hparams/lr_<name>``, and all Lightning metrics at
``trainer.global_step``-based steps, ``environment.json`` (packages, git commit), the recipe and the
resolved config, and status FINISHED / FAILED / KILLED. Under DDP/FSDP2 only global rank 0 talks
to the tracker; the run id is broadcast and stored in checkpoints
(``checkpoint["sptrack_tracker"]["runs"][kind]``),
so a resumed job continues the same run without duplicated steps.

Steps: the tracker keeps the step Lightning gives (``trainer.global_step`` units). A training
batch's metrics and the ``hparams/lr_<name>`` of the optimizer steps it makes share the step
``global_step`` had when the batch started; validation run after a batch is logged at that batch's
step (Lightning's convention). After a resume, points at or below the last step the run already
holds are dropped (MLflow: per metric; W&B: per run).

MLflow experiments are created tagged ``mlflow.experimentKind=custom_model_development`` (shown as
model training in MLflow 3's UI). Files: MLflow's default database ``./mlflow.db`` and artifacts ``./mlartifacts/``; outage spill
files ``<work_dir>/.sptrack/mlflow-spill/<run_id>.jsonl``; W&B runs ``<dir>/wandb/``.

Lower level: :class:`Tracker` (``check``, ``start(run_id=None)``, ``attach``, ``log_params``,
``log_metrics(metrics, step)``, ``log_table``, ``log_text``, ``log_dict``, ``log_artifact``,
``set_tags``, ``flush``, ``finish(status)``, ``run_id``), :func:`replay` (send an MLflow spill
file: also ``python -m sptrack.track replay FILE [--tracking-uri URI]``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from sptrack.lazy import lazy_exports
from sptrack.track.base import (
    FAILED,
    FINISHED,
    KILLED,
    NoTracker,
    Tracker,
    TrackerError,
    TrackerUnreachableError,
)
from sptrack.track.params import flatten, prepare_params, redact_text

TRACKER_KINDS = ("mlflow", "wandb", "none")

__all__ = [
    "FAILED",
    "FINISHED",
    "KILLED",
    "MLflowTracker",
    "NoTracker",
    "TRACKER_KINDS",
    "Tracker",
    "TrackerError",
    "TrackerLogger",
    "TrackerUnreachableError",
    "WandbTracker",
    "build_tracker",
    "flatten",
    "prepare_params",
    "redact_text",
    "replay",
    "tracker_callbacks",
]

_LAZY = {
    "MLflowTracker": "sptrack.track.mlflow",
    "replay": "sptrack.track.mlflow",
    "WandbTracker": "sptrack.track.wandb_tracker",
    "TrackerLogger": "sptrack.track.lightning",
}


__getattr__ = lazy_exports(__name__, _LAZY)


def build_tracker(kind: Optional[str], **options: Any) -> Tracker:
    """A tracker for ``--tracker kind``.

    Options whose value is ``None`` are dropped, so a recipe's tracker section can be passed as is.
    Common options: ``uri`` (MLflow: the tracking URI; W&B: the server's base URL),
    ``experiment`` (MLflow experiment / W&B project), ``run_name``, ``tags``, ``run_id``; the rest go
    to the adapter (unknown ones raise ``TypeError``). ``"none"`` ignores every option.
    """
    normalized = (kind or "none").strip().lower()
    options = {k: v for k, v in options.items() if v is not None}
    uri = options.pop("uri", None)
    if normalized == "mlflow":
        from sptrack.track.mlflow import MLflowTracker

        if uri is not None:
            options.setdefault("tracking_uri", uri)
        return MLflowTracker(**options)
    if normalized in ("wandb", "w&b"):
        from sptrack.track.wandb_tracker import WandbTracker

        if uri is not None:
            options["settings"] = {"base_url": uri, **dict(options.get("settings") or {})}
        return WandbTracker(**options)
    if normalized == "none":
        return NoTracker()
    raise ValueError(f"unknown tracker {kind!r}; choose one of {', '.join(TRACKER_KINDS)}")


def tracker_callbacks(
    tracker: Tracker,
    *,
    config: Any = None,
    recipe_path: Optional[str] = None,
    artifacts: Iterable[str] = (),
) -> list:
    """The Lightning callbacks that drive ``tracker`` (``[]`` for :class:`NoTracker`)."""
    if isinstance(tracker, NoTracker):
        return []
    from sptrack.track.lightning import TrackerLogger

    return [TrackerLogger(tracker, config=config, recipe_path=recipe_path, artifacts=artifacts)]
