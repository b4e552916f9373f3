"""Train a resolved recipe: build it, fit it, evaluate it, and print the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

from sptrack.callbacks import ExactResume
from sptrack.module.trainer import Trainer
from sptrack.recipe.config import RecipeConfig
from sptrack.recipe.final_eval import FinalLinearEvaluation
from sptrack.recipe.loading import Recipe
from sptrack.recipe.trainer_args import trainer_kwargs
from sptrack.run.checkpoints import checkpoint_callbacks, latest_checkpoint
from sptrack.run.report import print_report
from sptrack.run.run_dir import RunDirectory
from sptrack.run.tracked_at import how_to_open


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
    # The tracker's local files (MLflow's outage spill, W&B's run folder) go under the output directory too.
    local = {"mlflow": {"work_dir": cfg.trainer.output_dir}, "wandb": {"dir": cfg.trainer.output_dir}}.get(t.kind, {})
    tracker = build_tracker(t.kind, uri=t.uri, experiment=t.experiment or recipe.name, run_name=t.run_name, **local)
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
    for line in how_to_open(tracker):
        print(line, flush=True)
    return results
