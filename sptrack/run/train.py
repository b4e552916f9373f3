"""Train a resolved recipe: build it, fit it, evaluate it, and print the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from sptrack.module.trainer import Trainer
from sptrack.run.config import RecipeConfig
from sptrack.run.evaluate import linear_probe_accuracy, random_init_baseline
from sptrack.run.recipe import Recipe
from sptrack.run.report import print_report
from sptrack.run.run_dir import RunDirectory


def trainer_kwargs(cfg: RecipeConfig) -> dict:
    """Lightning Trainer arguments from ``cfg.trainer`` (None-valued limits left to Lightning)."""
    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
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


def build_trainer(recipe: Recipe, cfg: RecipeConfig, callbacks: list, logger: Any = False) -> tuple[Trainer, RunDirectory]:
    """The Trainer with the recipe's callbacks, a run directory, checkpoints and a rich progress bar."""
    run_dir = RunDirectory(Path(cfg.trainer.output_dir) / recipe.name)
    checkpoint = ModelCheckpoint(save_last=True, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = Trainer(
        **trainer_kwargs(cfg),
        callbacks=[run_dir, *callbacks, checkpoint, RichProgressBar(leave=True)],
        logger=logger,
        default_root_dir=str(Path(cfg.trainer.output_dir) / recipe.name),
    )
    return trainer, run_dir


def plain_encoder(experiment):
    """The trained encoder as an ordinary module; under FSDP2 a gathered copy (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    from sptrack.parallel.fsdp2 import to_full_tensor

    encoder = experiment.encoder
    if not any(isinstance(p, DTensor) for p in encoder.parameters()):
        return encoder
    full = {k: to_full_tensor(v).cpu() for k, v in encoder.state_dict().items()}
    copy = experiment.encoder_factory()
    copy.load_state_dict(full)
    return copy


def final_linear_eval(experiment, encoder=None, baseline_inits: int = 5) -> dict[str, Optional[float]]:
    """Held-out linear-probe accuracy of the trained encoder (or ``encoder``) and of random-init ones.

    ``random_init_linear_probe_acc`` is the mean over ``baseline_inits`` inits (``..._std`` their
    spread) and ``linear_probe_gain`` the trained accuracy minus that mean.
    """
    train_loader = experiment.eval_train_loader or experiment.train_loader
    encoder = experiment.encoder if encoder is None else encoder
    trained = linear_probe_accuracy(encoder, experiment.embed, train_loader, experiment.val_loader)
    baseline = random_init_baseline(experiment.encoder_factory, experiment.embed, train_loader, experiment.val_loader, baseline_inits)
    return {
        "linear_probe_acc": trained, "random_init_linear_probe_acc": baseline["mean"],
        "random_init_linear_probe_std": baseline["std"], "linear_probe_gain": trained - baseline["mean"],
    }


def train(recipe: Recipe, cfg: RecipeConfig, ckpt_path: Optional[str] = None) -> dict:
    """Fit ``recipe`` with ``cfg``; on global rank 0 evaluate and print the report. Returns the results."""
    from sptrack.track import build_tracker, tracker_callbacks

    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    experiment = recipe.build(cfg)
    t = cfg.tracker
    tracker = build_tracker(t.kind, uri=t.uri, experiment=t.experiment or recipe.name, run_name=t.run_name)
    tracking = tracker_callbacks(tracker, config=cfg, recipe_path=str(recipe.path))
    trainer, run_dir = build_trainer(recipe, cfg, [*experiment.callbacks, *tracking])
    start = time.perf_counter()
    trainer.fit(experiment.module, experiment.train_loader, experiment.val_loader, ckpt_path=ckpt_path)
    wall = time.perf_counter() - start
    results: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    results["wall_time_s"] = wall
    results["global_step"] = trainer.global_step
    encoder = plain_encoder(experiment)
    if not trainer.is_global_zero:
        return results
    results.update(final_linear_eval(experiment, encoder, cfg.eval.baseline_inits))
    results["run_dir"] = str(run_dir.path)
    results["checkpoint"] = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    if tracker.run_id:
        results["tracker_run"] = f"{t.kind} {tracker.run_id}"
    print_report(recipe.name, results)
    return results
