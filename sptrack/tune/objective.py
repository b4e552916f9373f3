"""One trial on every rank: the recipe built with the sampled params, trained, measured.

:func:`run_trial` is called by every rank with the same ``params`` (broadcast by rank 0). It
builds the recipe with them, trains with the recipe's callbacks plus the trial's tracker (rank 0
only starts it), :class:`~sptrack.tune.pruning.TrialMonitor` and
:class:`~sptrack.tune.tracking.TrialTags`, and returns a :class:`TrialResult`: COMPLETE with the
objective, PRUNED, or FAIL (an exception, a non-finite loss, or an objective that was not logged).

No checkpoints are written (a trial of a killed worker is retried from scratch) and no progress
bar is drawn; each trial trains in ``<output_dir>/<recipe>/sweeps/<study>/trial-<number>``.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from sptrack.tune.options import heldout_name
from sptrack.tune.pruning import NonFiniteLossError, TrialMonitor, is_eval_metric
from sptrack.tune.tracking import TrialTags, trial_tags, trial_tracker


@dataclass
class TrialResult:
    """What rank 0 tells the study: ``state`` is COMPLETE, PRUNED or FAIL."""

    state: str
    value: Optional[float] = None
    run_id: Optional[str] = None
    step: int = 0
    error: Optional[str] = None
    reported: dict = field(default_factory=dict)
    wall_s: float = 0.0
    #: ``(flag, metric)`` when the objective or prune metric was never logged; ``logged`` lists what was.
    unlogged: Optional[tuple[str, str]] = None
    logged: tuple = ()
    #: The objective's metric on the held-out split after training (``test/...``), when the trial
    #: evaluated on validation images; for the report only, never told to the sampler or pruner.
    heldout: Optional[float] = None
    #: ``{step: {metric: value}}`` at each report (see :attr:`TrialMonitor.signals`).
    signals: dict = field(default_factory=dict)


@dataclass
class TrialContext:
    """What every trial of one sweep shares."""

    recipe: Any
    base_cfg: Any
    study_name: str
    objective: str
    monitor: str
    every_n_steps: int
    parent_run_id: Optional[str] = None
    distributed: bool = False
    prune_warmup: float = 0.0


def trial_dir(ctx: TrialContext, number: int) -> Path:
    """Where trial ``number`` trains (the same path on every rank)."""
    return Path(ctx.base_cfg.trainer.output_dir) / ctx.recipe.name / "sweeps" / ctx.study_name / f"trial-{number}"


def _trainer_kwargs(cfg: Any, ctx: TrialContext) -> dict:
    from sptrack.recipe.trainer_args import trainer_kwargs

    kwargs = trainer_kwargs(cfg)
    if is_eval_metric(ctx.monitor):
        # Held-out evaluation (probe / kNN / RankMe) every K optimizer steps, counted across epochs.
        kwargs["val_check_interval"] = ctx.every_n_steps * max(1, cfg.trainer.accumulate_grad_batches)
        kwargs["check_val_every_n_epoch"] = None
    kwargs.update(enable_checkpointing=False, enable_progress_bar=False)
    return kwargs


def trial_steps(recipe: Any, cfg: Any, world_size: int = 1) -> int:
    """Optimizer steps of a trial of ``cfg`` on ``world_size`` processes, counted as a fit counts them
    (:func:`sptrack.module.run_length.boundaries_for`).

    Builds the recipe's experiment once (under a forked RNG) to count its training batches; the
    search space may change the length of single trials (e.g. the batch size), not this estimate.
    """
    import torch

    from sptrack.module.run_length import boundaries_for

    with torch.random.fork_rng(devices=[]):
        batches = len(recipe.build_experiment(cfg).train_loader)
    t = cfg.trainer
    batches = max(1, batches // max(1, world_size))
    limit = t.limit_train_batches  # Lightning's rule: an int caps the batches, a float is a share of them
    if limit is not None:
        batches = min(batches, int(limit)) if isinstance(limit, int) else max(1, int(batches * limit))
    total = boundaries_for(batches, t.max_epochs, t.max_steps, t.accumulate_grad_batches)
    return int(total) if math.isfinite(total) else batches


def heldout_value(experiment: Any, cfg: Any, ctx: TrialContext) -> Optional[float]:
    """The objective's metric on the experiment's held-out split, or None when training already evaluated on it.

    A separate Trainer without tracker or pruning callbacks runs ``test`` with the recipe's
    evaluation callbacks (every rank takes part), so the number reaches neither the trial's
    tracked run nor the study's sampler.
    """
    from sptrack.module.trainer import Trainer

    loader = getattr(experiment, "heldout_loader", None)
    if loader is None or loader is experiment.val_loader:
        return None
    kwargs = _trainer_kwargs(cfg, ctx)
    for key in ("val_check_interval", "check_val_every_n_epoch"):
        kwargs.pop(key, None)
    tester = Trainer(**kwargs, callbacks=list(experiment.callbacks), logger=False)
    tester.test(experiment.module, loader, verbose=False)
    value = tester.callback_metrics.get(heldout_name(ctx.objective))
    return float(value) if value is not None else None


def run_trial(ctx: TrialContext, number: int, params: Mapping[str, Any], trial: Any = None) -> TrialResult:
    """Train trial ``number`` with ``params``; ``trial`` is the ``optuna.Trial`` on rank 0, None elsewhere."""
    import lightning.pytorch as pl

    from sptrack.module.trainer import Trainer
    from sptrack.track import tracker_callbacks
    from sptrack.tune.space import SearchSpace

    start = time.perf_counter()
    tracker = None
    monitor = TrialMonitor(trial, ctx.monitor, ctx.every_n_steps, ctx.objective, ctx.prune_warmup)
    try:
        cfg = SearchSpace.apply(ctx.base_cfg, params)
        folder = trial_dir(ctx, number)
        cfg.trainer.output_dir = str(folder)
        pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        experiment = ctx.recipe.build_experiment(cfg)
        tracker = trial_tracker(cfg, ctx.recipe.name, ctx.study_name, number, params, ctx.parent_run_id)
        tags = TrialTags(tracker, trial_tags(ctx.study_name, number, params), monitor)
        callbacks = [*experiment.callbacks, *tracker_callbacks(tracker, config=cfg, recipe_path=str(ctx.recipe.path)), monitor, tags]
        trainer = Trainer(**_trainer_kwargs(cfg, ctx), callbacks=callbacks, logger=False, default_root_dir=str(folder))
        trainer.fit(experiment.module, experiment.train_loader, experiment.val_loader)
    except NonFiniteLossError as err:
        return _result("FAIL", tracker, monitor, start, error=str(err))
    except Exception as err:  # noqa: BLE001 - a failing trial must not end the study
        if ctx.distributed:
            # Only errors every rank sees at the same point are survivable; others end the command
            # (torchrun stops the ranks) and the heartbeat fails and retries the trial.
            from sptrack.errors import ConfigError

            if not isinstance(err, ConfigError):
                raise
        return _result("FAIL", tracker, monitor, start, error=f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}")
    logged = tuple(sorted(trainer.callback_metrics))
    unlogged = None
    if ctx.objective not in logged:
        unlogged = ("--objective", ctx.objective)
    elif ctx.monitor != ctx.objective and ctx.monitor not in logged and not monitor.reported:
        unlogged = ("--prune-metric", ctx.monitor)
    if monitor.pruned_at is not None:
        return _result("PRUNED", tracker, monitor, start)
    if monitor.value is None or not math.isfinite(monitor.value):
        shown = ", ".join(logged) or "none"
        return _result("FAIL", tracker, monitor, start, unlogged=unlogged, logged=logged,
                       error=f"the objective {ctx.objective!r} was not logged as a finite number (logged: {shown}).")
    heldout = heldout_value(experiment, cfg, ctx) if is_eval_metric(ctx.objective) else None
    return _result("COMPLETE", tracker, monitor, start, value=monitor.value, unlogged=unlogged, logged=logged, heldout=heldout)


def _result(state: str, tracker: Any, monitor: TrialMonitor, start: float, value: Optional[float] = None, error: Optional[str] = None,
            **names: Any) -> TrialResult:
    return TrialResult(
        state=state, value=value, run_id=getattr(tracker, "run_id", None), step=monitor.last_step,
        error=error, reported=dict(monitor.reported), signals=dict(monitor.signals), wall_s=time.perf_counter() - start, **names,
    )
