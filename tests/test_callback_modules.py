"""Callback modules: their own named optimizer, a joint single backward, encoder gradients untouched."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

import sptrack
from conftest import loader, make_nets, mse_forward, trainer
from sptrack.errors import ConfigError

OPTIM = {
    "backbone": {"modules": "backbone", "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9}},
    "head": {"modules": "head", "optimizer": {"type": "AdamW", "lr": 0.01}},
}


def probe_objective(module, batch, state):
    pred = module.callbacks_modules["probe"](state["embedding"].detach())
    return ((pred - batch["y"]) ** 2).mean()


class ProbeCallback(pl.Callback):
    """Registers a probe through the Module's own mechanism, as evaluation callbacks do."""

    def __init__(self, frequency=1):
        self.frequency = frequency

    def setup(self, trainer, module, stage):
        if stage == "fit" and "probe" not in module.callbacks_modules:
            torch.manual_seed(1)
            module.add_callback_module(
                "probe", nn.Linear(1, 1),
                optim={"optimizer": {"type": "SGD", "lr": 0.5}, "frequency": self.frequency},
                objective=probe_objective,
            )


def test_probe_trains_with_its_own_optimizer_and_leaves_the_encoder_alone():
    plain = sptrack.Module(forward=mse_forward, optim=OPTIM, **dict(zip(("backbone", "head"), make_nets())))
    trainer(max_epochs=2).fit(plain, loader(n=20, batch_size=4))

    probed = sptrack.Module(forward=mse_forward, optim=OPTIM, **dict(zip(("backbone", "head"), make_nets())))
    t = trainer(max_epochs=2, callbacks=[ProbeCallback(frequency=2)])
    t.fit(probed, loader(n=20, batch_size=4))

    for (name, a), (name_b, b) in zip(plain.named_parameters(with_callbacks=False), probed.named_parameters(with_callbacks=False), strict=True):
        assert name == name_b
        assert torch.equal(a, b), f"the probe changed {name}"
    torch.manual_seed(1)
    initial_probe = nn.Linear(1, 1)
    assert not torch.equal(probed.callbacks_modules["probe"].weight, initial_probe.weight)
    rows = {r["name"]: r for r in probed.optimizer_summary()}
    assert rows["probe"]["matched_modules"] == ["callbacks_modules.probe"]
    assert (rows["probe"]["index"], rows["probe"]["frequency"], rows["probe"]["num_params"]) == (2, 2, 2)
    probe_ids = {id(p) for p in probed.callbacks_modules["probe"].parameters()}
    assert all(id(p) not in probe_ids for opt in t.optimizers[:2] for g in opt.param_groups for p in g["params"])
    assert t.global_step == 10


def test_probe_resumes_exactly(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path=None, callbacks=()):
        m = sptrack.Module(forward=mse_forward, optim=OPTIM, **dict(zip(("backbone", "head"), make_nets())))
        trainer(max_epochs=2, enable_checkpointing=bool(callbacks), callbacks=[ProbeCallback(frequency=3), *callbacks]).fit(
            m, loader(n=20, batch_size=4), ckpt_path=ckpt_path
        )
        return m

    straight = run(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_on_train_epoch_end=True)])
    resumed = run(ckpt_path=sorted(tmp_path.glob("epoch=0*.ckpt"))[0])
    for (name, a), (name_b, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert name == name_b
        assert torch.equal(a, b), name


def test_callback_module_name_clash_and_late_registration():
    m = sptrack.Module(forward=mse_forward, optim=OPTIM, **dict(zip(("backbone", "head"), make_nets())))
    with pytest.raises(ConfigError, match="callbacks.head: the name 'head' is already used"):
        m.add_callback_module("head", nn.Linear(1, 1))
    with pytest.raises(ConfigError, match="callbacks.p.optim.modules"):
        m.add_callback_module("p", nn.Linear(1, 1), optim={"optimizer": "SGD", "modules": "x"})
    with pytest.raises(ConfigError, match="callbacks.p.optim.optimizer"):
        m.add_callback_module("p", nn.Linear(1, 1), optim={"optimizer": "SDG"})
    assert "p" not in m.callbacks_modules, "a rejected registration leaves nothing half-written"
