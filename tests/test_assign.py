"""Regex assignment of parameters to named optimizers, and callback parameters kept out."""

from __future__ import annotations

import re

import pytest
from torch import nn

import sptrack
from conftest import loader, make_nets, mse_forward, trainer
from sptrack.errors import ConfigError
from sptrack.optim import OptimizerEntry


def tree():
    """backbone (0: Linear, 1: Linear), backbone_extra, classifier_head (linear), decoder."""
    return dict(
        backbone=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)),
        backbone_extra=nn.Linear(4, 4),
        classifier_head=nn.Sequential(nn.Linear(4, 2)),
        decoder=nn.Linear(4, 4),
    )


def owned(module, name):
    """Qualified parameter names the optimizer ``name`` owns after configure_optimizers."""
    module.configure_optimizers()
    return sorted(next(s for s in module._slots if s.name == name).param_names)


def test_full_match_inheritance_and_child_override():
    m = sptrack.Module(
        forward=mse_forward,
        optim={
            "enc": {"modules": "backbone", "optimizer": "SGD"},
            "last": {"modules": r"backbone\.1", "optimizer": "AdamW"},
            "head": {"modules": ".*head", "optimizer": "SGD"},
            "rest": {"modules": "backbone_extra|decoder", "optimizer": "SGD"},
        },
        **tree(),
    )
    # "backbone" does not capture backbone_extra (full match, not prefix); backbone.1 overrides its parent.
    assert owned(m, "enc") == ["backbone.0.bias", "backbone.0.weight"]
    assert owned(m, "last") == ["backbone.1.bias", "backbone.1.weight"]
    assert owned(m, "head") == ["classifier_head.0.bias", "classifier_head.0.weight"]
    assert owned(m, "rest") == ["backbone_extra.bias", "backbone_extra.weight", "decoder.bias", "decoder.weight"]
    rows = {r["name"]: r for r in m.optimizer_summary()}
    assert rows["last"]["matched_modules"] == ["backbone.1"]
    assert rows["rest"]["num_params"] == 40


def test_ambiguous_module_names_both_patterns():
    expected = "module 'backbone.1' is matched by optim.a.modules='backbone.[0-9]' and optim.b.modules='.*1'"
    with pytest.raises(ConfigError, match=re.escape(expected)) as err:
        sptrack.Module(
            forward=mse_forward,
            optim={"a": {"modules": "backbone.[0-9]", "optimizer": "SGD"}, "b": {"modules": ".*1", "optimizer": "SGD"}},
            **tree(),
        )
    assert err.value.key == "optim.a.modules"


def test_pattern_matching_nothing_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"optim\.enc\.modules.*'backbne'.*Did you mean 'backbone'") as err:
        sptrack.Module(forward=mse_forward, optim={"enc": {"modules": "backbne", "optimizer": "SGD"}}, **tree())
    assert err.value.key == "optim.enc.modules"


def test_unassigned_parameters_warn_loudly_or_raise_when_strict():
    optim = {"enc": {"modules": "backbone", "optimizer": "SGD"}, "head": {"modules": "classifier_head", "optimizer": "SGD"}}
    m = sptrack.Module(forward=mse_forward, optim=optim, **tree())
    with pytest.warns(UserWarning, match=r"4 trainable parameters belong to no optimizer.*backbone_extra\.weight.*decoder\.bias"):
        m.configure_optimizers()
    strict = sptrack.Module(forward=mse_forward, optim=optim, strict=True, **tree())
    with pytest.raises(ConfigError, match="decoder.weight"):
        strict.configure_optimizers()


def test_frozen_parameters_are_not_unassigned():
    nets = tree()
    for p in list(nets["backbone_extra"].parameters()) + list(nets["decoder"].parameters()):
        p.requires_grad_(False)
    optim = {"enc": {"modules": "backbone", "optimizer": "SGD"}, "head": {"modules": "classifier_head", "optimizer": "SGD"}}
    m = sptrack.Module(forward=mse_forward, optim=optim, strict=True, **nets)
    m.configure_optimizers()


def test_tied_weights_across_optimizers_are_an_error():
    nets = tree()
    nets["decoder"].weight = nets["backbone_extra"].weight
    optim = {"a": {"modules": "backbone_extra", "optimizer": "SGD"}, "b": {"modules": "decoder|backbone|classifier_head", "optimizer": "SGD"}}
    with pytest.raises(ConfigError, match=r"tied parameter 'backbone_extra\.weight'"):
        sptrack.Module(forward=mse_forward, optim=optim, **nets)


def test_catch_all_single_form_owns_everything_but_callbacks():
    backbone, head = make_nets()
    m = sptrack.Module(forward=mse_forward, optim={"optimizer": "SGD"}, backbone=backbone, head=head)
    m.callbacks_modules["probe"] = nn.Linear(8, 3)
    m.callbacks_metrics["acc"] = nn.Linear(1, 1)
    callback_ids = {id(p) for p in m.callbacks_modules.parameters()} | {id(p) for p in m.callbacks_metrics.parameters()}
    trainer(max_epochs=1).fit(m, loader(n=8, batch_size=4))
    opt_ids = {id(p) for group in m.trainer.optimizers[0].param_groups for p in group["params"]}
    assert opt_ids.isdisjoint(callback_ids)
    assert opt_ids == {id(p) for p in list(backbone.parameters()) + list(head.parameters())}
    # named_parameters: the filtered view, and the reference default (with callbacks).
    assert {n for n, _ in m.named_parameters(with_callbacks=False)} == {n for n, _ in m.named_parameters()} - {
        "callbacks_modules.probe.weight", "callbacks_modules.probe.bias", "callbacks_metrics.acc.weight", "callbacks_metrics.acc.bias"}
    assert len(list(m.parameters())) == 10 and len(list(m.parameters(with_callbacks=False))) == 6


def test_named_parameters_forwards_remove_duplicate():
    backbone, head = make_nets()
    m = sptrack.Module(forward=mse_forward, backbone=backbone, head=head, alias=head)
    names = [n for n, _ in m.named_parameters(remove_duplicate=False, with_callbacks=False)]
    assert "alias.weight" in names and "head.weight" in names
    assert "alias.weight" not in [n for n, _ in m.named_parameters()]
    assert [n for n, _ in m.named_parameters(recurse=False)] == []
    assert all(n.startswith("x.") for n, _ in m.named_parameters(prefix="x"))


@pytest.fixture
def assignment_calls(monkeypatch):
    """Count every call of ``assign_parameters``, wherever the package imported it."""
    import sptrack.module.build
    import sptrack.module.module
    import sptrack.optim.assign

    calls = []
    real = sptrack.optim.assign.assign_parameters

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    for mod in (sptrack.optim.assign, sptrack.module.module, sptrack.module.build):
        if hasattr(mod, "assign_parameters"):
            monkeypatch.setattr(mod, "assign_parameters", counting)
    return calls


def test_assignment_runs_once_per_fit(assignment_calls):
    optim = {"enc": {"modules": "backbone|backbone_extra", "optimizer": "SGD"},
             "head": OptimizerEntry(modules="classifier_head|decoder", type="SGD", lr=0.1)}
    nets = tree()
    m = sptrack.Module(forward=lambda self, batch, stage: {"loss": self.decoder(self.backbone(batch["x"])).sum() * 0}, optim=optim, **nets)
    m.plan_optimizers()  # what --dry-run prints reuses it too
    trainer(max_epochs=1).fit(m, loader(n=8, batch_size=4))
    assert len(assignment_calls) == 1
    assert sorted(next(s for s in m._slots if s.name == "head").param_names) == [
        "classifier_head.0.bias", "classifier_head.0.weight", "decoder.bias", "decoder.weight"]


def test_assignment_follows_parameter_objects_replaced_after_construction(assignment_calls):
    """Same names and flags (as FSDP2's sharding leaves them): the optimizers get the new objects, no new assignment."""
    backbone, head = make_nets()
    m = sptrack.Module(forward=mse_forward, optim={"a": {"modules": "backbone", "optimizer": "SGD"}, "b": {"modules": "head", "optimizer": "SGD"}},
                       backbone=backbone, head=head)
    m.head.weight = nn.Parameter(m.head.weight.detach().clone())
    m.configure_optimizers()
    opt_b = next(s for s in m._slots if s.name == "b").optimizer
    assert any(p is m.head.weight for p in opt_b.param_groups[0]["params"])
    assert len(assignment_calls) == 1


@pytest.mark.parametrize("change", ["add_module", "freeze", "tie"])
def test_assignment_is_computed_again_when_the_tree_changed(assignment_calls, change):
    optim = {"enc": {"modules": "backbone", "optimizer": "SGD"}, "rest": {"modules": "decoder|backbone_extra|classifier_head", "optimizer": "SGD"}}
    m = sptrack.Module(forward=mse_forward, optim=optim, **tree())
    if change == "add_module":
        m.backbone.append(nn.Linear(4, 4))  # a child of backbone: inherits 'enc'
        assert "backbone.2.weight" in owned(m, "enc")
    elif change == "freeze":
        m.decoder.requires_grad_(False)
        assert "decoder.weight" not in owned(m, "rest")
    else:
        m.decoder.weight = m.backbone[0].weight  # tied across optimizers: the error assignment reports
        with pytest.raises(ConfigError, match="tied parameter"):
            m.configure_optimizers()
    assert len(assignment_calls) == 2
