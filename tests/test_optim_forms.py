"""Every optimizer and scheduler declaration form, defaults, intervals, plateau and lr logging."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch

import sptrack
from conftest import loader, make_nets, mse_forward, trainer
from sptrack.optim import LARS, LinearWarmupCosineAnnealingLR, OptimizerEntry
from sptrack.optim.config import entry_from_dict, parse_optim


def build(optim, **kwargs):
    nets = dict(zip(("backbone", "head"), make_nets()))
    return sptrack.Module(forward=kwargs.pop("forward", mse_forward), optim=optim, **nets, **kwargs)


@pytest.mark.parametrize(
    "spec,cls,lr",
    [
        ("AdamW", torch.optim.AdamW, 1e-3),
        ("sgd", torch.optim.SGD, 1e-3),
        ({"type": "Adam", "lr": 0.02}, torch.optim.Adam, 0.02),
        ({"type": torch.optim.RMSprop, "lr": 0.03}, torch.optim.RMSprop, 0.03),
        (functools.partial(torch.optim.SGD, lr=0.04, momentum=0.9), torch.optim.SGD, 0.04),
        (torch.optim.Adagrad, torch.optim.Adagrad, 0.01),
        ("LARS", LARS, 0.1),
        (lambda params: torch.optim.SGD(params, lr=0.05), torch.optim.SGD, 0.05),
    ],
)
def test_optimizer_forms(spec, cls, lr):
    module = build({"optimizer": spec})
    trainer(max_epochs=1, limit_train_batches=2).fit(module, loader())
    (row,) = module.optimizer_summary()
    assert row["class"] == cls.__name__ and row["name"] == "default"
    assert row["lr"] == pytest.approx(lr)
    assert row["num_params"] == sum(p.numel() for p in module.parameters())


def _scheduler_of(module, name="default"):
    return next(s for s in module._slots if s.name == name).scheduler


@pytest.mark.parametrize(
    "spec",
    [
        "CosineAnnealingLR",
        {"type": "CosineAnnealingLR"},
        {"type": "CosineAnnealingLR", "eta_min": 1e-5},
        functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, eta_min=1e-5),
        torch.optim.lr_scheduler.CosineAnnealingLR,
    ],
)
def test_cosine_forms_get_run_length_default(spec):
    """5 batches x 2 epochs = 10 steps; the partial forms keep the user's eta_min."""
    module = build({"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": spec})
    trainer(max_epochs=2).fit(module, loader(n=20, batch_size=4))
    sched = _scheduler_of(module)
    assert sched.T_max == 10
    eta_min = 1e-5 if not isinstance(spec, (str, type)) and "eta_min" in str(spec) else 0.0
    assert sched.eta_min == eta_min
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(eta_min, abs=1e-12)
    assert module.optimizer_summary()[0]["lr"] == 0.1  # the summary reports the declared lr


def test_callable_scheduler_is_used_as_is():
    module = build({"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)})
    trainer(max_epochs=1).fit(module, loader(n=12, batch_size=4))
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize(
    "name,check",
    [
        ("OneCycleLR", lambda s, n: s.total_steps == n),
        ("StepLR", lambda s, n: s.step_size == n // 3 and s.gamma == 0.1),
        ("ExponentialLR", lambda s, n: math.isclose(s.gamma ** n, 0.01)),
        # sptrack fills no run-length argument of a plateau scheduler (only its monitor, tested below):
        # torch's own defaults stay, whatever the run length.
        ("ReduceLROnPlateau", lambda s, n: (s.mode, s.factor, s.patience, s.threshold, s.cooldown) == ("min", 0.1, 10, 1e-4, 0)),
        ("LinearLR", lambda s, n: s.total_iters == n and s.start_factor == 1.0 and s.end_factor == 0.0),
        ("ConstantLR", lambda s, n: s.factor == 1.0 and s.total_iters == n),
        ("LinearWarmupCosineAnnealingLR", lambda s, n: s.total_steps == n and s.warmup_steps == n // 10),
    ],
)
def test_smart_defaults(name, check):
    optim = {"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": name}
    module = build(optim, forward=mse_forward)
    if name == "ReduceLROnPlateau":
        optim["monitor"] = "train_loss"
        module = build(optim)
    trainer(max_epochs=3).fit(module, loader(n=40, batch_size=4))
    sched = _scheduler_of(module)
    assert type(sched).__name__ == name
    assert check(sched, 30)


def test_constant_lr_keeps_declared_lr(recording_logger):
    module = build({"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": "ConstantLR"})
    trainer(max_epochs=1, logger=recording_logger, log_every_n_steps=1).fit(module, loader(n=16, batch_size=4))
    assert [v for _, v in recording_logger.series("hparams/lr_default")] == pytest.approx([0.1] * 4)


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LinearWarmupCosineAnnealingLR(opt, total_steps=10, warmup_steps=4, warmup_start_factor=0.0, eta_min=0.0)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_lr_logged_per_optimizer_matches_actual_lr(recording_logger):
    """hparams/lr_<name> carries the lr each optimizer stepped with, at the steps it stepped."""
    seen = {"backbone": [], "head": []}

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            name = "backbone" if optimizer is trainer.optimizers[0] else "head"
            seen[name].append((trainer.global_step, optimizer.param_groups[0]["lr"]))

    optim = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": "CosineAnnealingLR"},
        "head": {"modules": "head", "optimizer": {"type": "SGD", "lr": 0.2}, "scheduler": {"type": "StepLR", "step_size": 1, "gamma": 0.5}, "frequency": 2},
    }
    module = build(optim)
    trainer(max_epochs=2, logger=recording_logger, log_every_n_steps=1, callbacks=[Spy()]).fit(module, loader(n=20, batch_size=4))
    backbone = recording_logger.series("hparams/lr_backbone")
    head = recording_logger.series("hparams/lr_head")
    assert backbone == [(s, pytest.approx(v)) for s, v in seen["backbone"]]
    assert head == [(s, pytest.approx(v)) for s, v in seen["head"]]
    assert [s for s, _ in head] == [1, 3, 5, 7, 9]
    assert [v for _, v in head] == pytest.approx([0.2 * 0.5**i for i in range(5)])
    expected_cos = [0.1 * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert [v for _, v in backbone] == pytest.approx(expected_cos)


def test_epoch_interval_steps_once_per_epoch(recording_logger):
    module = build({"optimizer": {"type": "SGD", "lr": 0.1}, "scheduler": {"type": "StepLR", "step_size": 1, "gamma": 0.5}, "interval": "epoch"})
    trainer(max_epochs=3, logger=recording_logger, log_every_n_steps=1).fit(module, loader(n=12, batch_size=4))
    assert [v for _, v in recording_logger.series("hparams/lr_default")] == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)


def test_epoch_interval_default_length_is_epochs():
    module = build({"optimizer": "SGD", "scheduler": "CosineAnnealingLR", "interval": "epoch"})
    trainer(max_epochs=4).fit(module, loader(n=8, batch_size=4))
    assert _scheduler_of(module).T_max == 4


def stalled_forward(self, batch, stage):
    out = self.head(self.backbone(batch["x"]))
    self.log("stalled", 1.0, batch_size=len(out))
    return {"loss": ((out - batch["y"]) ** 2).mean()}


def test_reduce_on_plateau_reduces_when_monitor_stalls(recording_logger):
    optim = {"optimizer": {"type": "SGD", "lr": 0.8}, "scheduler": {"type": "ReduceLROnPlateau", "patience": 0, "factor": 0.5, "monitor": "stalled"}}
    module = build(optim, forward=stalled_forward)
    trainer(max_epochs=1, logger=recording_logger, log_every_n_steps=1).fit(module, loader(n=20, batch_size=4))
    assert [v for _, v in recording_logger.series("hparams/lr_default")] == pytest.approx([0.8, 0.8, 0.4, 0.2, 0.1])


def val_stalled_forward(self, batch, stage):
    out = self.head(self.backbone(batch["x"]))
    if stage == "validate":
        self.log("val_loss", 1.0, batch_size=len(out))
    return {"loss": ((out - batch["y"]) ** 2).mean()}


def test_reduce_on_plateau_epoch_interval_uses_validation_metric(recording_logger):
    optim = {"optimizer": {"type": "SGD", "lr": 0.8}, "scheduler": {"type": "ReduceLROnPlateau", "patience": 0, "factor": 0.5}, "interval": "epoch"}
    module = build(optim, forward=val_stalled_forward)
    assert module._optim_configs[0].monitor == "val_loss"  # the default monitor
    t = trainer(max_epochs=3, logger=recording_logger, log_every_n_steps=1)
    t.fit(module, loader(n=8, batch_size=4), loader(n=8, batch_size=4, seed=1))
    assert [v for _, v in recording_logger.series("hparams/lr_default")] == pytest.approx([0.8] * 4 + [0.4] * 2)
    # The summary reports the declared lr for every scheduler (the current one is the hparams/lr_<name> series).
    assert module.optimizer_summary()[0]["lr"] == 0.8
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)


def test_reduce_on_plateau_on_a_validation_metric_without_validation_fails_before_the_first_step():
    optim = {"optimizer": "SGD", "scheduler": "ReduceLROnPlateau", "monitor": "val_accuracy"}
    module = build(optim)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    t = trainer(max_epochs=1)
    with pytest.raises(sptrack.ConfigError, match=r"'val_accuracy'.*no validation loop") as err:
        t.fit(module, loader(n=8, batch_size=4))
    assert err.value.key == "optim.monitor"
    assert t.global_step == 0 and all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_reduce_on_plateau_metric_never_logged_is_an_error_naming_monitor_at_its_first_step():
    optim = {"optimizer": "SGD", "scheduler": "ReduceLROnPlateau", "monitor": "val_accuracy"}
    module = build(optim)
    t = trainer(max_epochs=1)
    with pytest.raises(sptrack.ConfigError, match=r"'val_accuracy'.*Logged metrics: \['train_loss'\]") as err:
        t.fit(module, loader(n=8, batch_size=4), loader(n=8, batch_size=4, seed=1))
    assert err.value.key == "optim.monitor"


# ------------------------------------------------------------------ OptimizerEntry: the recipe form, the one schema
def test_recipe_entries_are_taken_as_they_are():
    optim = {
        "backbone": OptimizerEntry(modules="backbone", type="SGD", lr=0.1, momentum=0.9, optimizer_args={"nesterov": True},
                                   scheduler="CosineAnnealingLR", scheduler_args={"T_max": 100, "eta_min": 1e-4}),
        "head": OptimizerEntry(modules="head", lr=0.02, weight_decay=0.0, optimizer_args={"eps": 1e-6}, scheduler=None, frequency=2),
    }
    module = build(optim)
    trainer(max_epochs=1).fit(module, loader(n=16, batch_size=4))
    backbone, head = module.trainer.optimizers
    assert isinstance(backbone, torch.optim.SGD) and backbone.defaults["nesterov"] and backbone.defaults["momentum"] == 0.9
    assert isinstance(head, torch.optim.AdamW) and head.defaults["eps"] == 1e-6
    assert head.defaults["weight_decay"] == 0.0  # an explicit 0 is passed (None would be AdamW's 0.01)
    sched = _scheduler_of(module, "backbone")
    assert (sched.T_max, sched.eta_min) == (100, 1e-4)  # the recipe's arguments win over the run-length default
    assert _scheduler_of(module, "head") is None
    assert [r["frequency"] for r in module.optimizer_summary()] == [1, 2]


def test_recipe_entry_with_plateau_monitor_and_scheduler_args_trains(recording_logger):
    optim = {
        "backbone": OptimizerEntry(modules="backbone", type="SGD", lr=0.8, scheduler="ReduceLROnPlateau", monitor="val_loss",
                                   scheduler_args={"patience": 0, "factor": 0.5}, interval="epoch"),
        "head": OptimizerEntry(modules="head", type="SGD", lr=0.1, scheduler=None),
    }
    module = build(optim, forward=val_stalled_forward)
    t = trainer(max_epochs=3, logger=recording_logger, log_every_n_steps=1)
    t.fit(module, loader(n=8, batch_size=4), loader(n=8, batch_size=4, seed=1))
    sched = _scheduler_of(module, "backbone")
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.patience == 0 and sched.factor == 0.5
    assert [v for _, v in recording_logger.series("hparams/lr_backbone")] == pytest.approx([0.8] * 4 + [0.4] * 2)
    row = module.optimizer_summary()[0]
    assert (row["scheduler"], row["monitor"], row["interval"]) == ("ReduceLROnPlateau", "val_loss", "epoch")


def test_dict_and_entry_forms_resolve_to_the_same_config():
    as_dict = {
        "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True},
                     "scheduler": {"type": "ReduceLROnPlateau", "patience": 2, "monitor": "train_loss"}, "interval": "epoch"},
        "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 0.01, "betas": (0.9, 0.95)}, "frequency": 2,
                 "gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"},
    }
    as_entries = {
        "backbone": OptimizerEntry(modules="backbone", type="SGD", lr=0.1, momentum=0.9, optimizer_args={"nesterov": True},
                                   scheduler="ReduceLROnPlateau", scheduler_args={"patience": 2}, monitor="train_loss", interval="epoch"),
        "head": OptimizerEntry(modules="head", type="AdamW", lr=0.01, betas=(0.9, 0.95), scheduler=None, frequency=2,
                               gradient_clip_val=1.0, gradient_clip_algorithm="value"),
    }
    fields = ("name", "modules", "optimizer", "scheduler", "interval", "frequency", "monitor", "gradient_clip_val", "gradient_clip_algorithm")
    a, b = parse_optim(as_dict), parse_optim(as_entries)
    assert [[getattr(c, f) for f in fields] for c in a] == [[getattr(c, f) for f in fields] for c in b]
    # The dict form is parsed into the same shape; what it leaves out is left to the classes.
    entry, keys = entry_from_dict(as_dict["backbone"], "optim.backbone")
    assert entry == as_entries["backbone"]
    assert keys["lr"] == "optim.backbone.optimizer.lr" and keys["scheduler_args.patience"] == "optim.backbone.scheduler.patience"
    bare, _ = entry_from_dict({"optimizer": "LARS"}, "optim")
    assert (bare.type, bare.lr, bare.weight_decay, bare.scheduler) == ("LARS", None, None, None)


def test_a_single_entry_is_the_single_form():
    module = build(OptimizerEntry(type="SGD", lr=0.05, scheduler=None))
    trainer(max_epochs=1, limit_train_batches=2).fit(module, loader())
    (row,) = module.optimizer_summary()
    assert (row["name"], row["class"], row["lr"], row["modules"]) == ("default", "SGD", 0.05, "<all>")
    assert row["num_params"] == sum(p.numel() for p in module.parameters())


def test_warmup_fraction_is_the_warmup_schedulers_argument():
    optim = {"backbone": OptimizerEntry(modules="backbone", type="SGD", lr=0.1, warmup_fraction=0.5),
             "head": OptimizerEntry(modules="head", type="SGD", lr=0.1, warmup_fraction=0.5, scheduler="CosineAnnealingLR")}
    module = build(optim)
    trainer(max_epochs=1).fit(module, loader(n=40, batch_size=4))
    assert _scheduler_of(module, "backbone").warmup_steps == 5  # 0.5 x 10 steps
    assert _scheduler_of(module, "head").T_max == 10  # other schedulers ignore it
