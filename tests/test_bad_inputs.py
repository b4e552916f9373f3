"""Bad configurations fail early with one message naming the key, the problem and a fix."""

from __future__ import annotations

import functools

import pytest
import torch

import sptrack
from conftest import loader, make_nets, mse_forward, trainer
from sptrack.errors import ConfigError
from sptrack.optim import OptimizerEntry


def two(**b):
    return {"a": {"modules": "backbone", "optimizer": "SGD"}, "b": {"modules": "head", "optimizer": "SGD", **b}}


BAD_AT_INIT = [
    ({"optimizer": "Adamw2"}, "optim.optimizer", "Did you mean 'AdamW'"),
    ({"optimizer": {"lr": 0.1}}, "optim.optimizer", "needs a 'type' entry"),
    ({"optimizer": {"type": "SGD", "lrr": 0.1}}, "optim.optimizer.lrr", "Did you mean 'lr'"),
    ({"optimizer": {"type": "NoSuchOpt"}}, "optim.optimizer.type", "unknown optimizer"),
    ({"optimizer": functools.partial(torch.optim.SGD, None, 0.1)}, "optim.optimizer", "keyword arguments only"),
    ({"optimizer": 3}, "optim.optimizer", "cannot build a optimizer from int"),
    ({"optimizer": torch.nn.Linear}, "optim.optimizer", "not a torch.optim.optimizer.Optimizer subclass"),
    ({"optimizer": "SGD", "scheduler": "Cosine"}, "optim.scheduler", "CosineAnnealingLR"),
    ({"optimizer": "SGD", "scheduler": {"type": "StepLR", "step": 3}}, "optim.scheduler.step", "Did you mean 'step_size'"),
    ({"optimizer": "SGD", "interval": "steps"}, "optim.interval", "Did you mean 'step'"),
    ({"optimizer": "SGD", "frequency": 0}, "optim.frequency", "integer >= 1"),
    ({"optimizer": "SGD", "frequency": "2"}, "optim.frequency", "integer >= 1"),
    ({"optimizer": "SGD", "frequency": True}, "optim.frequency", "integer >= 1"),
    ({"optimizer": "SGD", "schedular": "StepLR"}, "optim.schedular", "Did you mean 'scheduler'"),
    ({"optimizer": "SGD", "gradient_clip_algorithm": "nrom"}, "optim.gradient_clip_algorithm", "Did you mean 'norm'"),
    ({"optimizer": "SGD", "gradient_clip_val": -1}, "optim.gradient_clip_val", "number >= 0"),
    ({"optimizer": "SGD", "modules": "backbone"}, "optim.modules", "named form"),
    ({"optimizer": "SGD", "scheduler": {"type": "ReduceLROnPlateau", "monitor": "a"}, "monitor": "b"}, "optim.monitor", "given twice"),
    ({"optimizer": "SGD", "monitor": 3, "scheduler": "ReduceLROnPlateau"}, "optim.monitor", "metric name"),
    ({"a": {"modules": "backbone"}}, "optim.a", "missing 'optimizer'"),
    ({"a": "SGD"}, "optim.a", "must be a dict"),
    ({"a": {"modules": "(", "optimizer": "SGD"}}, "optim.a.modules", "invalid regex"),
    ({"a": {"modules": 3, "optimizer": "SGD"}}, "optim.a.modules", "regex string"),
    ({"bad name": {"modules": "head", "optimizer": "SGD"}}, "optim.bad name", "letters, digits"),
    ({"a": {"modules": "backbone", "optimizer": "SGD"}, "b": {"optimizer": "SGD"}}, "optim.b.modules", "required when several"),
    (two(scheduler="StepLR", frequency=0), "optim.b.frequency", "integer >= 1"),
    ({"a": {"modules": "headd", "optimizer": "SGD"}}, "optim.a.modules", "Did you mean 'head'"),
    ("AdamW", "optim", "must be a dict"),
    ({}, "optim", "declares no optimizer"),
]


@pytest.mark.parametrize("optim,key,fragment", BAD_AT_INIT, ids=[case[1] + ":" + case[2][:20] for case in BAD_AT_INIT])
def test_bad_optim_is_rejected_at_construction(optim, key, fragment):
    backbone, head = make_nets()
    with pytest.raises(ConfigError) as err:
        sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head)
    assert err.value.key == key
    assert str(err.value).startswith(key + ":")
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "optim,trainer_kwargs,key,fragment",
    [
        ({"optimizer": {"type": "SGD", "lr": -1.0}}, {}, "optim.optimizer", "Invalid learning rate"),
        ({"optimizer": "SGD", "scheduler": "CosineAnnealingLR"}, {"max_epochs": -1, "max_steps": -1}, "optim.scheduler", "needs the run length"),
        ({"optimizer": "SGD", "scheduler": {"type": "LinearLR", "start_factor": 2.0}}, {}, "optim.scheduler", "building LinearLR failed"),
    ],
)
def test_bad_values_fail_before_the_first_step(optim, trainer_kwargs, key, fragment):
    backbone, head = make_nets()
    before = [p.detach().clone() for p in head.parameters()]
    module = sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head)
    with pytest.raises(ConfigError) as err:
        trainer(**trainer_kwargs).fit(module, loader(n=8))
    assert err.value.key == key and fragment in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters())), "nothing may be half-trained"


def test_reserved_attribute_names():
    with pytest.raises(ConfigError, match="callbacks_modules: is reserved"):
        sptrack.Module(forward=mse_forward, callbacks_modules=torch.nn.ModuleDict())


def test_pattern_on_module_without_trainable_parameters():
    backbone, head = make_nets()
    optim = {"a": {"modules": "backbone", "optimizer": "SGD"}, "b": {"modules": "head|act", "optimizer": "SGD"}}
    head.requires_grad_(False)
    module = sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head, act=torch.nn.ReLU())
    with pytest.raises(ConfigError, match=r"optim\.b\.modules: matches modules \['head', 'act'\] that own no trainable"):
        module.configure_optimizers()


def entries(**b):
    """Two recipe entries; ``b`` sets fields of the second (named ``b``, owning ``head``)."""
    return {"a": OptimizerEntry(modules="backbone", type="SGD", scheduler=None), "b": OptimizerEntry(**{"modules": "head", **b})}


# An OptimizerEntry's errors name the recipe's keys (optim.<name>.<field>), never the dict form's.
BAD_ENTRIES = [
    (entries(type="Adamm"), "optim.b.type", "Did you mean 'Adam'"),
    (entries(type=3), "optim.b.type", "cannot build a optimizer from int"),
    (entries(momentum=0.9), "optim.b.momentum", "AdamW has no argument 'momentum'"),
    (entries(optimizer_args={"epss": 1e-6}), "optim.b.optimizer_args.epss", "Did you mean 'eps'"),
    (entries(optimizer_args={"lr": 0.1}), "optim.b.optimizer_args.lr", "Set optim.b.lr instead"),
    (entries(optimizer_args=[1]), "optim.b.optimizer_args", "dict of keyword arguments"),
    (entries(type=lambda params: torch.optim.SGD(params, lr=0.1)), "optim.b.type", "name or class"),
    (entries(scheduler="Cosine"), "optim.b.scheduler", "Did you mean 'CosineAnnealingLR'"),
    (entries(scheduler="CosineAnnealingLR", scheduler_args={"T_maxx": 3}), "optim.b.scheduler_args.T_maxx", "Did you mean 'T_max'"),
    (entries(scheduler=None, scheduler_args={"T_max": 3}), "optim.b.scheduler_args.T_max", "none is declared"),
    (entries(warmup_fraction=0.1, scheduler_args={"warmup_fraction": 0.2}), "optim.b.warmup_fraction", "given twice"),
    (entries(scheduler="ReduceLROnPlateau", monitor=3), "optim.b.monitor", "metric name"),
    (entries(interval="steps"), "optim.b.interval", "Did you mean 'step'"),
    (entries(frequency=0), "optim.b.frequency", "integer >= 1"),
    (entries(gradient_clip_val=-1.0), "optim.b.gradient_clip_val", "number >= 0"),
    (entries(gradient_clip_algorithm="nrom"), "optim.b.gradient_clip_algorithm", "Did you mean 'norm'"),
    (entries(modules="headd"), "optim.b.modules", "Did you mean 'head'"),
    (entries(modules="("), "optim.b.modules", "invalid regex"),
    (entries(modules=None), "optim.b.modules", "required when several"),
    (OptimizerEntry(modules="head"), "optim.modules", "owns every parameter"),
    ({"a": OptimizerEntry(modules="backbone"), "b": 3}, "optim.b", "or an OptimizerEntry"),
]


@pytest.mark.parametrize("optim,key,fragment", BAD_ENTRIES, ids=[case[1] + ":" + case[2][:20] for case in BAD_ENTRIES])
def test_bad_recipe_entry_is_rejected_at_construction_naming_its_field(optim, key, fragment):
    backbone, head = make_nets()
    with pytest.raises(ConfigError) as err:
        sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head)
    assert err.value.key == key
    assert fragment in str(err.value)


def test_bad_recipe_entry_values_fail_at_fit_naming_its_fields():
    backbone, head = make_nets()
    # ReduceLROnPlateau on a validation metric in a fit without validation: before the first step.
    optim = entries(scheduler="ReduceLROnPlateau", monitor="val_accuracy")
    with pytest.raises(ConfigError, match="no validation loop") as err:
        trainer().fit(sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head), loader(n=8))
    assert err.value.key == "optim.b.monitor"
    optim = entries(scheduler="LinearLR", scheduler_args={"start_factor": 2.0})
    with pytest.raises(ConfigError, match="building LinearLR failed") as err:
        trainer().fit(sptrack.Module(forward=mse_forward, optim=optim, backbone=backbone, head=head), loader(n=8))
    assert err.value.key == "optim.b.scheduler"
