"""Train a resolved recipe: build it, fit it, evaluate it, and print the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

from sptrack.callbacks import ExactResume
from sptrack.module.trainer import Trainer
from sptrack.run.checkpoints import checkpoint_callbacks, latest_checkpoint
from sptrack.run.config import RecipeConfig
from sptrack.run.final_eval import FinalLinearEvaluation
from sptrack.run.launch import resolve_devices
from sptrack.run.recipe import Recipe
from sptrack.run.report import print_report
from sptrack.run.run_dir import RunDirectory


def trainer_kwargs(cfg: RecipeConfig) -> dict:
    """Lightning Trainer arguments from ``cfg.trainer`` (None-valued limits left to Lightning; devices and
    num_nodes resolved against the launcher, see :mod:`sptrack.run.launch`)."""
    t = cfg.trainer
    devices, num_nodes = resolve_devices(t.devices, t.num_nodes)
    kwargs: dict[str, Any] = dict(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=t.strategy,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return kwargs


def build_trainer(recipe: Recipe, cfg: RecipeConfig, callbacks: list, logger: Any = False,
                  resume_from: Optional[str] = None) -> tuple[Trainer, RunDirectory]:
    """The Trainer with the recipe's callbacks, a run directory, checkpoints and a rich progress bar.

    A run resumed from a checkpoint inside ``<output_dir>/<recipe>/version_N/`` keeps writing there.
    """
    t = cfg.trainer
    root = Path(t.output_dir) / recipe.name
    run_dir = RunDirectory(root, resume_from=resume_from)
    trainer = Trainer(
        **trainer_kwargs(cfg),
        callbacks=[run_dir, *callbacks, *checkpoint_callbacks(t.checkpoint_every_n_steps, t.checkpoint_every_minutes,
                                                              t.keep_checkpoints), RichProgressBar(leave=True)],
        logger=logger,
        default_root_dir=str(root),
    )
    return trainer, run_dir


def train(recipe: Recipe, cfg: RecipeConfig, ckpt_path: Optional[str] = None) -> dict:
    """Fit ``recipe`` with ``cfg``; on global rank 0 evaluate and print the report. Returns the results.

    ``ckpt_path="auto"`` resumes from the newest checkpoint of ``<output_dir>/<recipe>/`` (a fresh
    run when there is none); any checkpoint resumes exactly (see :class:`ExactResume`).
    """
    from sptrack.track import build_tracker, tracker_callbacks

    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    experiment = recipe.build_experiment(cfg)
    t = cfg.tracker
    tracker = build_tracker(t.kind, uri=t.uri, experiment=t.experiment or recipe.name, run_name=t.run_name)
    tracking = tracker_callbacks(tracker, config=cfg, recipe_path=str(recipe.path))
    evaluation = FinalLinearEvaluation(experiment, cfg.eval.baseline_inits)
    if ckpt_path == "auto":
        latest = latest_checkpoint(Path(cfg.trainer.output_dir) / recipe.name)
        ckpt_path = str(latest) if latest is not None else None
    # The tracker's callbacks come after the evaluation: they close the run after it has logged to it.
    # ExactResume comes last, so it restores the generators after every other on_train_start.
    callbacks = [*experiment.callbacks, evaluation, *tracking, ExactResume(experiment.train_loader)]
    trainer, run_dir = build_trainer(recipe, cfg, callbacks, resume_from=ckpt_path)
    start = time.perf_counter()
    trainer.fit(experiment.module, experiment.train_loader, experiment.val_loader, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start - evaluation.seconds
    results: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    results["wall_time_s"] = wall
    results["global_step"] = trainer.global_step
    if not trainer.is_global_zero:
        return results
    results.update(evaluation.results)
    results["run_dir"] = str(run_dir.path)
    results["checkpoint"] = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if tracker.run_id:
        results["tracker_run"] = f"{t.kind} {tracker.run_id}"
    print_report(recipe.name, results)
    return results
