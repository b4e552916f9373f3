"""The TrialMonitor on real fits with a real Optuna study: the prune warm-up and the recorded signals."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

import sptrack
from conftest import loader, trainer
from sptrack.errors import ConfigError
from sptrack.tune.options import SweepOptions
from sptrack.tune.pruning import TrialMonitor
from sptrack.tune.study import make_pruner

STEPS, EVERY = 10, 2


def _module(losses: list):
    torch.manual_seed(0)

    def forward(self, batch, stage):
        loss = self.net(batch["x"]).pow(2).mean()
        if stage == "fit":
            losses.append(float(loss.detach()))
        else:
            self.log("eval/score", -1.0 + 0.0 * loss)  # always below the earlier trial's 1.0
        return {"loss": loss}

    return sptrack.Module(forward=forward, optim={"net": {"modules": "net", "optimizer": {"type": "SGD", "lr": 0.01}}}, net=nn.Linear(4, 1))


def _study_with_a_better_trial() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", EVERY, 0))
    done = study.ask()
    for step in range(EVERY, STEPS + 1, EVERY):
        done.report(1.0, step)
    study.tell(done, 1.0)
    return study


@pytest.mark.parametrize("warmup, pruned_at", [(0.0, 2), (0.5, 6), (0.95, None)])
def test_no_prune_before_the_warmup_fraction_and_every_report_keeps_its_signals(warmup, pruned_at):
    """10 steps, reports every 2: pruned at the first report at or after warmup x 10 (6 for 0.5: the report at 4 is
    before step 5), never at the last report; each report records the metric and the mean loss since the last one."""
    study = _study_with_a_better_trial()
    trial, losses = study.ask(), []
    monitor = TrialMonitor(trial, "eval/score", EVERY, "eval/score", warmup=warmup)
    t = trainer(max_steps=STEPS, max_epochs=10, callbacks=[monitor], val_check_interval=EVERY, check_val_every_n_epoch=None)
    t.fit(_module(losses), loader(n=40, batch_size=4), loader(n=8, seed=1))
    assert monitor.pruned_at == pruned_at
    last = pruned_at or STEPS
    assert sorted(monitor.reported) == list(range(EVERY, last + 1, EVERY)) == sorted(monitor.signals)
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == sorted(monitor.reported)  # noqa: SLF001
    for step, values in monitor.signals.items():
        assert values["eval/score"] == -1.0 == monitor.reported[step]
        assert values["train/loss"] == pytest.approx(sum(losses[step - EVERY:step]) / EVERY, rel=1e-6)


def test_prune_warmup_and_pruner_options_are_checked():
    assert SweepOptions(prune_warmup=0.3, pruner="halving").validate().prune_warmup == 0.3
    for bad in (-0.1, 1.0, "x", True):
        with pytest.raises(ConfigError, match="--prune-warmup"):
            SweepOptions(prune_warmup=bad).validate()
    with pytest.raises(ConfigError, match="--pruner.*Did you mean 'halving'"):
        SweepOptions(pruner="halvng").validate()
    assert isinstance(make_pruner("halving", 30, 3), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none", 30, 3), optuna.pruners.NopPruner)


def test_trial_steps_count_the_recipes_own_run_length():
    """128 synthetic images in batches of 16 (drop_last): 8 boundaries an epoch, halved by accumulation or by 2 ranks."""
    from sptrack.recipe.config import apply_overrides
    from sptrack.recipe.loading import load_recipe
    from sptrack.tune.objective import trial_steps

    recipe = load_recipe("dino")

    def steps(*overrides: str, world: int = 1) -> int:
        cfg = recipe.default_config()
        apply_overrides(cfg, ["data.dataset=synthetic", "data.subset=128", "data.batch_size=16", "trainer.max_epochs=3",
                              "model.backbone=cnn", "model.cnn_widths=(8, 16)", *overrides])
        return trial_steps(recipe, cfg, world)

    assert steps() == 24
    assert steps("trainer.max_steps=10") == 10
    assert steps("trainer.accumulate_grad_batches=2") == 12
    assert steps(world=2) == 12
    assert steps("data.validation_fraction=0.25") == 18  # 96 images left to train on: 6 batches
